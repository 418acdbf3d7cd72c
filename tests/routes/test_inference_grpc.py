"""gRPC messages to the protocol's tensors and back, with no server: each refusal names its fix."""

import numpy as np
import pytest

from digitserve.dataplane import DataPlane
from digitserve.errors import InvalidInput, TooManyElements
from digitserve.inference_protocol import DecodedRequest
from digitserve.protos import grpc_predict_v2_pb2 as pb
from digitserve.routes.inference_grpc import decode_request, metadata_message
from digitserve.routes.v2 import describe_model
from digitserve.schemas import MAX_PARAMETERS, MAX_TENSORS

MAX_ELEMENTS = 64 * 64
MESSAGE_BYTES = 1024 * 1024


def decode(request: pb.ModelInferRequest) -> DecodedRequest:
    """Decode with the default limits."""
    return decode_request(request, max_elements=MAX_ELEMENTS, message_bytes=MESSAGE_BYTES)


def refusal(request: pb.ModelInferRequest, error: type[Exception] = InvalidInput) -> str:
    """The message a request is refused with."""
    with pytest.raises(error) as caught:
        decode(request)
    return str(caught.value)


def pixels(shape: list[int] | None = None, datatype: str = "INT64") -> pb.ModelInferRequest:
    """A request with one `pixels` input and no data yet."""
    request = pb.ModelInferRequest(model_name="digits")
    request.inputs.add(name="pixels", datatype=datatype, shape=shape or [1, 64])
    return request


def test_typed_and_raw_contents_decode_alike() -> None:
    values = np.arange(128, dtype=np.int64) % 17
    typed = pixels([2, 64])
    typed.inputs[0].contents.int64_contents.extend(values.tolist())
    typed.id = "a-1"
    raw = pixels([2, 64])
    raw.raw_input_contents.append(values.tobytes())
    for request in (typed, raw):
        call = decode(request)
        [tensor] = call.inputs
        assert tensor.data.shape == (2, 64)
        assert tensor.data.tolist() == values.reshape(2, 64).tolist()
    assert decode(typed).id == "a-1"
    assert decode(raw).id is None


def test_parameters_and_outputs_read_as_rest_reads_them() -> None:
    request = pixels()
    request.inputs[0].contents.int64_contents.extend([0] * 64)
    request.parameters["priority"].uint64_param = 3
    request.parameters["note"].string_param = "x"
    output = request.outputs.add(name="probabilities")
    output.parameters["classification"].int64_param = 2
    call = decode(request)
    assert call.parameters == {"priority": 3, "note": "x"}
    assert call.outputs is not None
    [wanted] = call.outputs
    assert (wanted.name, wanted.parameters) == ("probabilities", {"classification": 2})


def test_bytes_in_typed_contents_are_whole_elements() -> None:
    request = pb.ModelInferRequest(model_name="digits")
    request.inputs.add(name="image", datatype="BYTES", shape=[2]).contents.bytes_contents.extend(
        [b"first", b"second"]
    )
    [tensor] = decode(request).inputs
    assert tensor.data.tolist() == [b"first", b"second"]


def test_raw_contents_must_match_the_inputs() -> None:
    request = pixels()
    request.raw_input_contents.extend([b"", b""])
    assert refusal(request).startswith("raw_input_contents holds 2 entries for 1 inputs")
    both = pixels()
    both.raw_input_contents.append(bytes(64 * 8))
    both.inputs[0].contents.int64_contents.extend([0] * 64)
    assert "send every input one way" in refusal(both)


def test_typed_contents_go_in_the_datatypes_field() -> None:
    request = pixels()
    request.inputs[0].contents.fp32_contents.extend([0.0] * 64)
    assert refusal(request) == (
        "input 'pixels': INT64 elements go in contents.int64_contents, not contents.fp32_contents"
    )
    half = pixels(datatype="FP16")
    assert refusal(half) == "input 'pixels': FP16 has no typed contents; send it raw"


def test_values_must_fit_the_datatype() -> None:
    request = pixels(datatype="INT8")
    request.inputs[0].contents.int_contents.extend([300] * 64)
    assert refusal(request) == "input 'pixels': a value does not fit in INT8"


def test_the_schema_names_the_tensor() -> None:
    request = pixels(datatype="INT4")
    assert refusal(request).startswith("invalid inference request: input 'pixels'")
    twice = pixels()
    twice.inputs.add(name="pixels", datatype="INT64", shape=[1, 64])
    assert refusal(twice) == "input 'pixels' is given more than once"


def test_bounds_are_checked_before_the_data() -> None:
    many = pb.ModelInferRequest()
    for index in range(MAX_TENSORS + 1):
        many.inputs.add(name=f"i{index}", datatype="INT64", shape=[1])
    assert refusal(many).startswith(f"a request may list at most {MAX_TENSORS} inputs")
    crowded = pixels()
    for index in range(MAX_PARAMETERS + 1):
        crowded.parameters[f"p{index}"].bool_param = True
    assert refusal(crowded) == f"the request: at most {MAX_PARAMETERS} parameters are accepted"
    empty = pixels()
    empty.parameters["nothing"].CopyFrom(pb.InferParameter())
    assert refusal(empty) == "the request: parameter 'nothing' has no value"
    huge = pixels([1, MESSAGE_BYTES + 1])
    assert "has a dimension larger than" in refusal(huge)
    shared = pixels()
    shared.inputs[0].parameters["shared_memory_region"].string_param = "region"
    assert "shared memory is not supported" in refusal(shared)


def test_too_many_bytes_elements_are_refused_unsplit() -> None:
    request = pb.ModelInferRequest()
    request.inputs.add(name="image", datatype="BYTES", shape=[MAX_ELEMENTS + 1])
    request.raw_input_contents.append(b"")
    message = refusal(request, TooManyElements)
    assert message.startswith(f"input 'image': shape [{MAX_ELEMENTS + 1}] holds")


def test_a_bare_image_in_raw_contents_gets_a_hint() -> None:
    request = pb.ModelInferRequest()
    request.inputs.add(name="image", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(b"\x89PNG\r\n\x1a\n" + bytes(32))
    assert "prefix the length" in refusal(request)
    other = pb.ModelInferRequest()
    other.inputs.add(name="image", datatype="BYTES", shape=[1])
    other.raw_input_contents.append(b"\x01")
    assert "4-byte length" in refusal(other)


def test_metadata_puts_tensor_parameters_in_properties(dataplane: DataPlane) -> None:
    metadata = describe_model(dataplane.default_model(), dataplane)
    message = metadata_message(metadata)
    assert [t.name for t in message.inputs] == ["image", "pixels"]
    assert list(message.inputs[1].shape) == [-1, 64]
    assert message.properties["pixels.range"] == "0..16"
    assert message.properties["version"] == "1"
    assert "image.raw_binary" not in message.properties  # REST's body formats
