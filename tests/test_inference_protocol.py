"""The Open Inference Protocol wire format, without HTTP or a model."""

import gzip
import json
import random
import struct
import zlib
from typing import Any

import numpy as np
import orjson
import pytest

from digitserve.errors import BodyTooLarge, InvalidInput, TooManyElements, UnsupportedMediaType
from digitserve.inference_protocol import (
    MAX_GZIP_MEMBERS,
    STRUCTURE_VALUES,
    DecodedRequest,
    Tensor,
    bytes_tensor,
    classification_count,
    classify,
    compress,
    decompress,
    deserialize_bytes,
    encode_response,
    flatten,
    header_length,
    parse_request,
    response_encoding,
    serialize_bytes,
    tensor_bytes,
    tensor_from_binary,
    tensor_from_json,
)
from digitserve.schemas import MAX_DIMENSIONS, MAX_TENSORS, InferenceRequestOutput


def binary_body(header: dict[str, Any], *blobs: bytes) -> tuple[bytes, int]:
    """A binary data extension body and its header length."""
    json_part = orjson.dumps(header)
    return json_part + b"".join(blobs), len(json_part)


def test_decompress_identity_passes_bytes_through() -> None:
    assert decompress(b"abc", None, limit=3) == b"abc"
    assert decompress(b"abc", " Identity ", limit=3) == b"abc"


@pytest.mark.parametrize(
    ("coding", "packed"),
    [
        ("gzip", gzip.compress(b"hello " * 100)),
        ("x-gzip", gzip.compress(b"hello " * 100)),
        ("GZIP", gzip.compress(b"hello " * 50) + gzip.compress(b"hello " * 50)),
        ("deflate", zlib.compress(b"hello " * 100)),
        ("deflate", zlib.compress(b"hello " * 100)[2:-4]),  # a bare deflate stream
    ],
)
def test_decompress_gzip_and_deflate(coding: str, packed: bytes) -> None:
    assert decompress(packed, coding, limit=600) == b"hello " * 100


def test_decompression_bomb_is_refused_at_the_limit() -> None:
    bomb = gzip.compress(bytes(50_000_000))
    assert len(bomb) < 100_000
    with pytest.raises(BodyTooLarge, match=r"inflates past the limit of 976\.6 KiB$") as caught:
        decompress(bomb, "gzip", limit=1_000_000)
    with pytest.raises(BodyTooLarge) as named:
        decompress(bomb, "gzip", limit=8 * 1024 * 1024, setting="DIGITSERVE_MAX_BODY_BYTES")
    assert named.value.detail == (
        "the gzip body inflates past the limit of 8 MiB, set by DIGITSERVE_MAX_BODY_BYTES=8388608"
    )
    assert caught.value.extra == {"limit": 1_000_000}
    with pytest.raises(BodyTooLarge):
        decompress(zlib.compress(bytes(2_000_001)), "deflate", limit=2_000_000)
    assert decompress(zlib.compress(bytes(2_000_000)), "deflate", limit=2_000_000) == bytes(
        2_000_000
    )


@pytest.mark.parametrize(
    ("coding", "packed", "message"),
    [
        ("gzip", b"not gzip at all", "not valid gzip data"),
        ("gzip", gzip.compress(b"x" * 100)[:-10], "gzip body is truncated"),
        ("gzip", b"", "gzip body is truncated"),
        ("deflate", zlib.compress(b"x") + b"junk", "deflate body has data after its end"),
        ("deflate", b"\xff\xff\xff", "not valid deflate data"),
    ],
)
def test_corrupt_compressed_bodies_are_400(coding: str, packed: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        decompress(packed, coding, limit=1000)


def test_unknown_content_encoding_is_415_listing_the_accepted_ones() -> None:
    with pytest.raises(UnsupportedMediaType, match="'br' is not accepted") as caught:
        decompress(b"x", "br", limit=10)
    assert caught.value.extra == {"accepted": ["gzip", "deflate", "identity"]}
    assert caught.value.headers == {"Accept-Encoding": "gzip, deflate"}


def test_header_length() -> None:
    assert header_length(None, 10) is None
    assert header_length("0", 10) == 0
    assert header_length(" 10 ", 10) == 10
    for bad in ("11", "-1", "x", "", "1.5", "²"):
        with pytest.raises(InvalidInput, match="from 0 to the \\(decompressed\\) body length 10"):
            header_length(bad, 10)


def test_parse_pure_json_request() -> None:
    document = {
        "id": "42",
        "parameters": {"binary_data_output": True, "other": 1.5},
        "inputs": [
            {"name": "a", "shape": [2, 2], "datatype": "UINT32", "data": [[1, 2], [3, 4]]},
            {"name": "b", "shape": [3], "datatype": "BOOL", "data": [True, False, True]},
            {"name": "c", "shape": [1], "datatype": "BYTES", "data": ["hé"]},
        ],
        "outputs": [{"name": "out", "parameters": {"binary_data": False}}],
    }
    request = parse_request(orjson.dumps(document), None, raw_input="image")
    assert request.id == "42"
    assert request.parameters == {"binary_data_output": True, "other": 1.5}
    a, b, c = request.inputs
    assert (a.name, a.datatype, a.data.dtype, a.data.tolist()) == (
        "a",
        "UINT32",
        np.dtype("<u4"),
        [[1, 2], [3, 4]],
    )
    assert b.data.tolist() == [True, False, True]
    assert (c.datatype, c.data.shape, c.data.tolist()) == ("BYTES", (1,), ["hé"])
    assert request.outputs is not None
    assert [output.name for output in request.outputs] == ["out"]
    assert not request.raw


def test_parse_binary_request_slices_tensors_in_order() -> None:
    floats = np.arange(6, dtype="<f4").reshape(2, 3)
    body, length = binary_body(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [2, 3],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 24},
                },
                {"name": "j", "shape": [1], "datatype": "INT8", "data": [-3]},
                {
                    "name": "s",
                    "shape": [2],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": 4 + 3 + 4 + 0},
                },
            ]
        },
        floats.tobytes(),
        serialize_bytes([b"abc", b""]),
    )
    request = parse_request(body, length, raw_input="image")
    x, j, s = request.inputs
    assert x.data.tolist() == floats.tolist()
    assert j.data.tolist() == [-3]
    assert s.data.tolist() == [b"abc", b""]


def test_raw_binary_request_is_one_element_of_the_raw_input() -> None:
    request = parse_request(b"\x89PNG...", 0, raw_input="image")
    assert request.raw
    [tensor] = request.inputs
    assert (tensor.name, tensor.datatype, tensor.data.shape) == ("image", "BYTES", (1,))
    assert tensor.data[0] == b"\x89PNG..."
    assert request.binary_output(None) is True


def test_binary_output_rules() -> None:
    def output(**parameters: Any) -> InferenceRequestOutput:
        return InferenceRequestOutput(name="o", parameters=parameters or None)

    plain = DecodedRequest(None, {}, [], None)
    assert plain.binary_output(None) is False
    assert plain.binary_output(output(binary_data=True)) is True
    everything = DecodedRequest(None, {"binary_data_output": True}, [], None)
    assert everything.binary_output(None) is True
    assert everything.binary_output(output()) is True
    assert everything.binary_output(output(binary_data=False)) is False
    with pytest.raises(InvalidInput, match="output 'o': parameter 'binary_data' must be true"):
        plain.binary_output(output(binary_data=1))
    with pytest.raises(InvalidInput, match="the request: parameter 'binary_data_output'"):
        DecodedRequest(None, {"binary_data_output": "yes"}, [], None).binary_output(None)


def _input(**fields: Any) -> dict[str, Any]:
    return {"name": "x", "shape": [1], "datatype": "INT32", "data": [1]} | fields


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([1, 2], "body: Input should be a valid dictionary"),
        ({}, "inputs: Field required"),
        ({"inputs": []}, "inputs: List should have at least 1 item"),
        ({"inputs": [_input(shape=[-1])]}, r"input 'x' \(inputs.0.shape.0\): .*greater than"),
        ({"inputs": [_input(datatype="FP8")]}, r"input 'x' \(inputs.0.datatype\): Input should be"),
        ({"inputs": [_input(shape=["1"])]}, r"input 'x' \(inputs.0.shape.0\): .*valid integer"),
        ({"inputs": [_input(name=3)]}, r"inputs.0.name: Input should be a valid string"),
        ({"inputs": [5]}, r"inputs.0: Input should be a valid dictionary"),
        ({"inputs": [{"shape": [1]}]}, r"inputs.0.name: Field required"),
        ({"inputs": [_input()], "id": 7}, "id: Input should be a valid string"),
        (
            {"inputs": [_input(parameters={"k": [1]})]},
            r"input 'x' \(inputs.0.parameters.k\): must be a string, number or boolean",
        ),
        (
            {"inputs": [_input()], "outputs": [{"name": "o", "parameters": {"k": None}}]},
            r"output 'o' \(outputs.0.parameters.k\): must be a string, number or boolean",
        ),
        ({"inputs": [_input(), _input()]}, "input 'x' is given more than once"),
        (
            {"inputs": [_input(parameters={"binary_data_size": 4})]},
            "input 'x': give exactly one of 'data' or parameters.binary_data_size",
        ),
        ({"inputs": [_input(data=None)]}, "input 'x': give exactly one of 'data'"),
        (
            {"inputs": [_input(data=None, parameters={"binary_data_size": 4})]},
            "input 'x' has binary_data_size but the request has no Inference-Header",
        ),
        (
            {"inputs": [_input(parameters={"shared_memory_region": "r"})]},
            "input 'x': shared memory is not supported",
        ),
    ],
)
def test_malformed_json_requests_are_400_naming_the_tensor(document: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_request(orjson.dumps(document), None, raw_input="image")


def test_not_json_is_400() -> None:
    with pytest.raises(InvalidInput, match="the inference request is not valid JSON"):
        parse_request(b"\xff{", None, raw_input="image")
    with pytest.raises(InvalidInput, match="not valid JSON"):
        parse_request(b'{"inputs": []}', 5, raw_input="image")


@pytest.mark.parametrize(
    ("size", "blob", "message"),
    [
        (5, b"\x00" * 4, "input 'x': binary_data_size is 5 but only 4 bytes"),
        (4, b"\x00" * 6, "2 bytes after the JSON header belong to no input"),
        (-1, b"", "input 'x': binary_data_size must be a non-negative integer"),
        (True, b"", "input 'x': binary_data_size must be a non-negative integer"),
        (4.0, b"", "input 'x': binary_data_size must be a non-negative integer"),
        (8, b"\x00" * 8, r"input 'x': shape \[1\] of INT32 needs 4 bytes, binary_data_size is 8"),
    ],
)
def test_binary_sizes_that_do_not_add_up_are_400(size: Any, blob: bytes, message: str) -> None:
    body, length = binary_body(
        {"inputs": [_input(data=None, parameters={"binary_data_size": size})]}, blob
    )
    with pytest.raises(InvalidInput, match=message):
        parse_request(body, length, raw_input="image")


def test_json_header_with_unclaimed_bytes_is_400() -> None:
    body, length = binary_body({"inputs": [_input()]}, b"extra")
    with pytest.raises(InvalidInput, match="5 bytes after the JSON header belong to no input"):
        parse_request(body, length, raw_input="image")


def test_tensor_from_json_accepts_nested_and_flat_data() -> None:
    nested = tensor_from_json("t", "FP64", [2, 2], [[1, 2.5], [3, 4]])
    flat = tensor_from_json("t", "FP64", [2, 2], [1, 2.5, 3, 4])
    assert nested.data.tolist() == flat.data.tolist() == [[1.0, 2.5], [3.0, 4.0]]
    assert tensor_from_json("t", "FP16", [1], [1e10]).data.tolist() == [float("inf")]
    assert tensor_from_json("t", "INT64", [0, 5], []).data.shape == (0, 5)


@pytest.mark.parametrize(
    ("datatype", "shape", "data", "message"),
    [
        ("INT32", [2], [1], r"input 't': shape \[2\] holds 2 elements but data has 1"),
        ("INT32", [1], [1.5], "input 't': INT32 data in JSON must be integers"),
        ("INT32", [1], [True], "INT32 data in JSON must be integers"),
        ("FP32", [1], ["1"], "input 't': FP32 data in JSON must be numbers"),
        ("FP32", [1], [None], "FP32 data in JSON must be numbers"),
        ("BOOL", [1], [1], "input 't': BOOL data in JSON must be booleans"),
        ("BYTES", [1], [1], "input 't': BYTES data in JSON must be strings"),
        ("INT8", [1], [300], "input 't': a value does not fit in INT8"),
        ("UINT64", [1], [-1], "a value does not fit in UINT64"),
        ("INT64", [1], [{"a": 1}], "INT64 data in JSON must be integers"),
    ],
)
def test_tensor_from_json_errors(datatype: str, shape: list[int], data: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        tensor_from_json("t", datatype, shape, data)


def test_flatten_survives_deep_nesting() -> None:
    deep: list[Any] = [7]
    for _ in range(5000):
        deep = [deep]
    assert flatten(deep) == [7]
    assert flatten([[1, [2, 3]], 4, [[5]]]) == [1, 2, 3, 4, 5]


def test_tensor_from_binary_is_little_endian_row_major() -> None:
    values = np.array([[1, -2], [300, 4]], dtype="<i2")
    tensor = tensor_from_binary("t", "INT16", [2, 2], values.tobytes())
    assert tensor.data.tolist() == values.tolist()
    assert tensor_from_binary("t", "INT16", [2, 2], b"\x01\x00" * 4).data.tolist() == [[1, 1]] * 2
    assert tensor_from_binary("t", "BOOL", [3], b"\x01\x00\x01").data.tolist() == [
        True,
        False,
        True,
    ]


@pytest.mark.parametrize(
    ("datatype", "shape", "chunk", "message"),
    [
        ("BOOL", [2], b"\x01\x02", "input 't': BOOL bytes must be 0 or 1"),
        ("FP64", [1], b"\x00" * 4, r"shape \[1\] of FP64 needs 8 bytes, binary_data_size is 4"),
        (
            "BYTES",
            [2],
            serialize_bytes([b"a"]),
            r"input 't': shape \[2\] holds 2 elements but the binary data has 1",
        ),
        ("BYTES", [1], b"\x01\x00", "input 't': BYTES data ends inside an element's 4-byte"),
        ("BYTES", [1], struct.pack("<I", 9) + b"abc", "claims 9 bytes but only 3 are left"),
    ],
)
def test_tensor_from_binary_errors(
    datatype: str, shape: list[int], chunk: bytes, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        tensor_from_binary("t", datatype, shape, chunk)


def test_bytes_serialization_round_trips() -> None:
    elements = [b"", b"\x00\xff", b"x" * 300]
    packed = serialize_bytes(elements)
    assert packed[:4] == b"\x00\x00\x00\x00"
    assert packed[4:8] == b"\x02\x00\x00\x00"
    assert deserialize_bytes(packed, "t") == elements
    assert serialize_bytes(["é"]) == b"\x02\x00\x00\x00\xc3\xa9"
    assert deserialize_bytes(b"", "t") == []


def test_classify_top_k_highest_first_ties_by_index() -> None:
    scores = np.array([[0.1, 0.6, 0.3], [0.25, 0.25, 0.5]], dtype=np.float32)
    result = classify(scores, 2, ["a", "b", "c"])
    assert result.shape == (2, 2)
    assert result.tolist() == [
        ["0.600000:1:b", "0.300000:2:c"],
        ["0.500000:2:c", "0.250000:0:a"],
    ]
    assert classify(scores, 10, ["a", "b", "c"]).shape == (2, 3)
    assert classify(np.array([3, 10, 2], dtype=np.uint8), 1, ["x", "y", "z"]).tolist() == [
        ["10.000000:1:y"]
    ]


def test_classification_count() -> None:
    assert classification_count(InferenceRequestOutput(name="o")) is None
    assert (
        classification_count(InferenceRequestOutput(name="o", parameters={"binary_data": True}))
        is None
    )
    assert classification_count(InferenceRequestOutput(name="o", parameters={"classification": 3}))
    for bad in (0, -1, 2.0, True, "3"):
        output = InferenceRequestOutput(name="o", parameters={"classification": bad})
        with pytest.raises(InvalidInput, match="output 'o': classification must be a positive"):
            classification_count(output)


def test_encode_json_response() -> None:
    outputs = [
        (Tensor("p", "FP32", np.array([[1 / 3, 0.5]], dtype=np.float32)), False),
        (bytes_tensor("s", [b"caf\xc3\xa9", "x"]), False),
    ]
    body, length = encode_response(
        model_name="m", model_version="1", request_id=None, outputs=outputs
    )
    assert length is None
    document = orjson.loads(body)
    assert document == {
        "model_name": "m",
        "model_version": "1",
        "outputs": [
            {"name": "p", "datatype": "FP32", "shape": [1, 2], "data": [0.33333334, 0.5]},
            {"name": "s", "datatype": "BYTES", "shape": [2], "data": ["café", "x"]},
        ],
    }
    assert np.float32(document["outputs"][0]["data"][0]) == np.float32(1 / 3)


def test_encode_binary_response_appends_blobs_in_order() -> None:
    labels = Tensor("label", "INT64", np.array([7, 1], dtype=np.int64))
    scores = Tensor("p", "FP32", np.array([[0.25, 0.75], [1.0, 0.0]], dtype=np.float32))
    words = bytes_tensor("w", ["ab", "c"])
    body, length = encode_response(
        model_name="m",
        model_version=None,
        request_id="r1",
        outputs=[(labels, True), (scores, False), (words, True)],
    )
    assert length is not None
    header = orjson.loads(body[:length])
    assert header == {
        "model_name": "m",
        "id": "r1",
        "outputs": [
            {
                "name": "label",
                "datatype": "INT64",
                "shape": [2],
                "parameters": {"binary_data_size": 16},
            },
            {"name": "p", "datatype": "FP32", "shape": [2, 2], "data": [0.25, 0.75, 1.0, 0.0]},
            {
                "name": "w",
                "datatype": "BYTES",
                "shape": [2],
                "parameters": {"binary_data_size": 11},
            },
        ],
    }
    blobs = body[length:]
    assert np.frombuffer(blobs[:16], dtype="<i8").tolist() == [7, 1]
    assert deserialize_bytes(blobs[16:], "w") == [b"ab", b"c"]
    assert tensor_bytes(scores) == scores.data.astype("<f4").tobytes()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("identity", None),
        ("gzip", "gzip"),
        ("deflate, gzip;q=0.5", "deflate"),
        ("gzip;q=0.2, deflate;q=0.8", "deflate"),
        ("GZIP ; q=1.0", "gzip"),
        ("gzip;q=0, br", None),
        ("gzip;q=abc", None),
        ("*", None),
    ],
)
def test_response_encoding_picks_the_highest_weight(header: str | None, expected: str) -> None:
    assert response_encoding(header) == expected


def test_compress_round_trips() -> None:
    body = b"outputs " * 100
    assert gzip.decompress(compress(body, "gzip")) == body
    assert zlib.decompress(compress(body, "deflate")) == body


# Hostile sizes: each is refused before it is used, in time linear in the body.

STEP = 64 * 1024
"""The compressed bytes `decompress` hands zlib at a time (members ending at its edges matter)."""


def test_gzip_members_are_read_a_step_at_a_time_across_step_boundaries() -> None:
    # Incompressible members of ~100 KB each: they end inside the 2nd, 4th and 5th steps.
    parts = [random.Random(seed).randbytes(100_000) for seed in range(3)]  # noqa: S311
    packed = b"".join(gzip.compress(part) for part in parts)
    assert decompress(packed, "gzip", limit=300_000) == b"".join(parts)
    # A member, and a deflate stream, ending exactly where a step ends.
    noise = random.Random(3).randbytes(STEP)  # noqa: S311
    size = next(n for n in range(STEP, 0, -1) if len(gzip.compress(noise[:n])) == STEP)
    body = gzip.compress(noise[:size]) + gzip.compress(b"tail")
    assert decompress(body, "gzip", limit=STEP) == noise[:size] + b"tail"
    size = next(n for n in range(STEP, 0, -1) if len(zlib.compress(noise[:n])) == STEP)
    with pytest.raises(InvalidInput, match="deflate body has data after its end"):
        decompress(zlib.compress(noise[:size]) + b"junk", "deflate", limit=STEP)
    with pytest.raises(InvalidInput, match="gzip body is truncated"):
        decompress(packed[:-5], "gzip", limit=300_000)


def test_gzip_member_count_is_capped() -> None:
    member = gzip.compress(b"a")
    assert decompress(member * MAX_GZIP_MEMBERS, "gzip", limit=100) == b"a" * MAX_GZIP_MEMBERS
    with pytest.raises(InvalidInput, match=f"more than {MAX_GZIP_MEMBERS} members; send one"):
        decompress(member * (MAX_GZIP_MEMBERS + 1), "gzip", limit=100)
    # Half a million empty members (10 MB) used to cost minutes: now the cap stops the reading.
    with pytest.raises(InvalidInput, match="more than 64 members"):
        decompress(gzip.compress(b"") * 500_000, "gzip", limit=10 * 1024 * 1024)


def test_header_length_reads_no_more_digits_than_the_body_length_has() -> None:
    assert header_length("0007", 10) == 7
    assert header_length("000", 10) == 0
    with pytest.raises(InvalidInput, match="body length 10, got '9999") as caught:
        header_length("9" * 5000, 10)
    assert "(5000 characters)" in caught.value.detail
    assert len(caught.value.detail) < 200


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ([0] * 65, r"inputs.0.shape\): List should have at most 8 items after validation, not 65"),
        ([2**64 - 1] * 300, "List should have at most 8 items after validation, not 300"),
        ([2**64 - 1] * 150_000, "List should have at most 8 items after validation, not 150000"),
        ([9223372036854775807, 0], "has a dimension larger than a [0-9]+-byte body can carry"),
        ([2**64 - 1] * 8, "has a dimension larger than a [0-9]+-byte body can carry"),
        ([1, 2**64], r"inputs.0.shape.1\): Input should be a valid integer"),
    ],
)
def test_shapes_are_bounded_before_any_product_or_allocation(
    shape: list[int], message: str
) -> None:
    # The standard library writes integers of any size, as a hostile client can.
    document = {"inputs": [_input(shape=shape, data=[])]}
    with pytest.raises(InvalidInput, match=message):
        parse_request(json.dumps(document).encode(), None, raw_input="image")
    header = json.dumps(
        {"inputs": [_input(shape=shape, data=None, parameters={"binary_data_size": 0})]}
    ).encode()
    with pytest.raises(InvalidInput, match=message):
        parse_request(header, len(header), raw_input="image")


def test_eight_dimensions_and_empty_tensors_are_still_read() -> None:
    request = parse_request(
        orjson.dumps(
            {
                "inputs": [
                    _input(shape=[1] * MAX_DIMENSIONS),
                    _input(name="e", shape=[3, 0], data=[]),
                ]
            }
        ),
        None,
        raw_input="image",
    )
    assert [tensor.data.shape for tensor in request.inputs] == [(1,) * 8, (3, 0)]


def test_inputs_outputs_and_parameters_are_capped_naming_the_limit() -> None:
    many = [_input(name=f"x{i}") for i in range(MAX_TENSORS + 1)]
    with pytest.raises(InvalidInput, match="inputs: List should have at most 16 items"):
        parse_request(orjson.dumps({"inputs": many}), None, raw_input="image")
    outputs = [{"name": f"o{i}"} for i in range(MAX_TENSORS + 1)]
    with pytest.raises(InvalidInput, match="outputs: List should have at most 16 items"):
        parse_request(
            orjson.dumps({"inputs": [_input()], "outputs": outputs}), None, raw_input="image"
        )
    parameters = {f"k{i}": None for i in range(100_000)}
    for document, where in (
        ({"inputs": [_input()], "parameters": parameters}, "parameters"),
        ({"inputs": [_input(parameters=parameters)]}, r"input 'x' \(inputs.0.parameters\)"),
    ):
        with pytest.raises(InvalidInput, match=f"{where}: at most 64 parameters are accepted"):
            parse_request(orjson.dumps(document), None, raw_input="image")
    request = parse_request(
        orjson.dumps({"inputs": many[:MAX_TENSORS], "outputs": outputs[:MAX_TENSORS]}),
        None,
        raw_input="image",
    )
    assert len(request.inputs) == len(request.outputs or []) == MAX_TENSORS


def test_repeated_names_are_found_among_many_inputs() -> None:
    inputs = [_input(name=f"x{i}") for i in range(MAX_TENSORS - 2)] + [_input(), _input()]
    with pytest.raises(InvalidInput, match="input 'x' is given more than once"):
        parse_request(orjson.dumps({"inputs": inputs}), None, raw_input="image")


def test_long_names_are_refused_and_cut_short_in_the_message() -> None:
    document = {"inputs": [_input(name="n" * 1_000_000)]}
    with pytest.raises(InvalidInput, match="at most 256 characters") as caught:
        parse_request(orjson.dumps(document), None, raw_input="image")
    assert "(1000000 characters) (inputs.0.name)" in caught.value.detail
    assert len(caught.value.detail) < 300


def test_json_values_are_counted_before_the_json_is_parsed() -> None:
    rows = [[[16] * 8] * 8] * 64
    grid = {"inputs": [_input(name="pixels", shape=[64, 8, 8], datatype="INT64", data=rows)]}
    assert parse_request(orjson.dumps(grid), None, raw_input="image", max_elements=64 * 64)
    flood = {"inputs": [_input(shape=[2_000_000], data=[0] * 2_000_000)]}
    with pytest.raises(
        TooManyElements, match="the JSON request holds more than 9216 values"
    ) as caught:
        parse_request(orjson.dumps(flood), None, raw_input="image", max_elements=64 * 64)
    assert caught.value.extra == {"limit": 4096}
    budget = 2 * 10 + STRUCTURE_VALUES
    body, length = binary_body(
        {"inputs": [_input(data=None, parameters={"binary_data_size": 4})], "id": "," * budget},
        b"\0" * 4,
    )
    with pytest.raises(TooManyElements, match=f"the JSON header holds more than {budget} values"):
        parse_request(body, length, raw_input="image", max_elements=10)


def test_binary_bytes_elements_are_bounded_before_they_are_split() -> None:
    chunk = serialize_bytes([b"a"] * 5000)
    body, length = binary_body(
        {
            "inputs": [
                _input(
                    shape=[5000],
                    datatype="BYTES",
                    data=None,
                    parameters={"binary_data_size": len(chunk)},
                )
            ]
        },
        chunk,
    )
    with pytest.raises(
        TooManyElements,
        match=r"input 'x': shape \[5000\] holds 5000 BYTES elements; a request may carry at most",
    ):
        parse_request(body, length, raw_input="image", max_elements=4096)
    assert parse_request(body, length, raw_input="image", max_elements=5000).inputs[
        0
    ].data.shape == (5000,)
    with pytest.raises(InvalidInput, match="the binary data holds more than 2 BYTES elements"):
        deserialize_bytes(chunk, "input 'x'", most=2)
