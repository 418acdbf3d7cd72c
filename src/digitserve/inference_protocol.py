"""The Open Inference Protocol's wire format: tensors in JSON or binary, in and out.

Pure functions, no HTTP framework and no model: request bodies (JSON, the binary data extension,
the raw binary request) become named numpy tensors, and output tensors become a response body
(JSON, or a JSON header followed by binary blobs). Also the classification extension's top-k
strings and bounded gzip/deflate. Every malformed request is an `InvalidInput` naming the tensor.

Hostile sizes are checked before they are used: a JSON header's count of values before it is
parsed and a BYTES tensor's elements before they are split (413 `TooManyElements` past the bound
the caller gives), every shape against what the body could carry before any product or
allocation, gzip members as they are read. The work is linear in the body, whatever it holds.
"""

import math
import struct
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray
from pydantic import ValidationError

from digitserve.errors import (
    BodyTooLarge,
    InvalidInput,
    TooManyElements,
    UnsupportedMediaType,
    byte_limit,
)
from digitserve.schemas import InferenceRequest, InferenceRequestInput, InferenceRequestOutput

NUMERIC_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
"""Fixed-size datatypes and their binary layout: little-endian, row-major, no padding."""

BYTES = "BYTES"
"""The variable-size datatype: each binary element is a 4-byte little-endian length, then bytes."""

CONTENT_CODINGS = ("gzip", "deflate", "identity")
"""Request body encodings accepted (`Content-Encoding`), and response encodings offered."""

MAX_GZIP_MEMBERS = 64
"""Most gzip members one body may hold: clients send one; RFC 1952 allows many back to back."""

STRUCTURE_VALUES = 1024
"""JSON values a request may spend beyond its tensor elements: names, shapes, parameters."""

_INFLATE_STEP = 64 * 1024
"""Compressed bytes given to zlib at a time, so what it copies at each member's end is small."""

_SHOWN_CHARACTERS = 64
"""How much of a client's string an error message quotes."""

_LENGTH = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class Tensor:
    """A named tensor; BYTES data is an object array of `bytes` (binary) or `str` (JSON)."""

    name: str
    datatype: str
    data: NDArray[Any]


@dataclass(frozen=True, slots=True)
class DecodedRequest:
    """A parsed inference request: its decoded inputs and what the client wants back."""

    id: str | None
    parameters: dict[str, Any]
    inputs: list[Tensor]
    outputs: list[InferenceRequestOutput] | None
    raw: bool = False

    def binary_output(self, output: InferenceRequestOutput | None) -> bool:
        """Whether an output goes back as binary: its own `binary_data`, else the request's."""
        if output is not None and output.parameters and "binary_data" in output.parameters:
            return _bool_parameter(output.parameters, "binary_data", f"output {output.name!r}")
        if "binary_data_output" in self.parameters:
            return _bool_parameter(self.parameters, "binary_data_output", "the request")
        return self.raw


def decompress(
    body: bytes, encoding: str | None, *, limit: int, setting: str | None = None
) -> bytes:
    """Undo a gzip or deflate `Content-Encoding`, refusing output past `limit` bytes (bombs).

    `setting` names the environment variable that sets the limit, for the 413 to say.
    """
    coding = (encoding or "identity").strip().lower()
    if coding == "identity":
        return body
    if coding in ("gzip", "x-gzip"):
        return _inflate(body, 16 + zlib.MAX_WBITS, "gzip", byte_limit(limit, setting), limit)
    if coding == "deflate":
        # RFC 9110's deflate is the zlib format; some clients send a bare deflate stream instead.
        wrapped = len(body) >= 2 and body[0] & 0x0F == 8 and (body[0] << 8 | body[1]) % 31 == 0
        wbits = zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS
        return _inflate(body, wbits, "deflate", byte_limit(limit, setting), limit)
    raise UnsupportedMediaType(
        f"Content-Encoding {encoding!r} is not accepted; send one of: {', '.join(CONTENT_CODINGS)}",
        headers={"Accept-Encoding": "gzip, deflate"},
        accepted=list(CONTENT_CODINGS),
    )


def _inflate(body: bytes, wbits: int, name: str, limit_text: str, limit: int) -> bytes:
    """Decompress in bounded steps; gzip may hold several members back to back.

    The input goes to zlib a step at a time: at a member's end zlib copies the input it was given
    and did not use (`unused_data`), so handing it the whole rest of the body each time made many
    small members cost time quadratic in the body.
    """
    out = bytearray()
    view = memoryview(body)
    data: bytes | memoryview = view[:_INFLATE_STEP]
    position = len(data)
    members = 1
    inflater = zlib.decompressobj(wbits)
    try:
        while True:
            out += inflater.decompress(data, limit + 1 - len(out))
            if len(out) > limit:
                raise BodyTooLarge(
                    f"the {name} body inflates past the limit of {limit_text}", limit=limit
                )
            # Short of the output bound, zlib has used all the input it was given.
            if inflater.eof:
                data = inflater.unused_data
                if not data and position == len(view):
                    return bytes(out)
                if name != "gzip":
                    raise InvalidInput(f"the {name} body has data after its end")
                members += 1
                if members > MAX_GZIP_MEMBERS:
                    raise InvalidInput(
                        f"the gzip body has more than {MAX_GZIP_MEMBERS} members; send one"
                    )
                inflater = zlib.decompressobj(wbits)
                if data:
                    continue
            elif position == len(view):
                raise InvalidInput(f"the {name} body is truncated")
            data = view[position : position + _INFLATE_STEP]
            position += len(data)
    except zlib.error as exc:
        raise InvalidInput(f"the body is not valid {name} data: {exc}") from exc


def header_length(value: str | None, body_length: int) -> int | None:
    """Read `Inference-Header-Content-Length`: None for pure JSON, 0 for a raw binary request."""
    if value is None:
        return None
    text = value.strip()
    # Digits are counted before int() reads them: 5,000 of them are past Python's int limit.
    digits = text.lstrip("0")
    if (
        not (text.isascii() and text.isdigit())
        or len(digits) > len(str(body_length))
        or int(digits or "0") > body_length
    ):
        raise InvalidInput(
            f"Inference-Header-Content-Length must be an integer from 0 to the (decompressed) "
            f"body length {body_length}, got {_shown(value)}"
        )
    return int(digits or "0")


def parse_request(
    body: bytes, length: int | None, *, raw_input: str, max_elements: int | None = None
) -> DecodedRequest:
    """Split a body into its JSON header and binary tensors, and decode every input.

    `length` is the header length (None: the whole body is JSON; 0: a raw binary request, whose
    body is the single element of the BYTES input `raw_input`). `max_elements` bounds what costs
    a Python object per element: the JSON header's values, counted before it is parsed (twice
    the bound plus `STRUCTURE_VALUES`), and each binary BYTES tensor's elements (None: no bound).
    """
    if length == 0:
        return DecodedRequest(None, {}, [bytes_tensor(raw_input, [body])], None, raw=True)
    header = body if length is None else body[:length]
    if max_elements is not None:
        _check_value_count(header, max_elements, binary=length is not None)
    try:
        document = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the inference request is not valid JSON: {exc}") from exc
    request = validate_request(document)
    binary = memoryview(body)[len(header) :]
    inputs = []
    offset = 0
    for spec in request.inputs:
        where = f"input {spec.name!r}"
        checked_element_count(where, spec.shape, len(body))
        parameters = spec.parameters or {}
        if "shared_memory_region" in parameters:
            raise InvalidInput(f"{where}: shared memory is not supported; send data or binary")
        size = parameters.get("binary_data_size")
        if (size is None) == (spec.data is None):
            raise InvalidInput(
                f"{where}: give exactly one of 'data' or parameters.binary_data_size"
            )
        if size is None:
            inputs.append(tensor_from_json(spec.name, spec.datatype, spec.shape, spec.data or []))
            continue
        if type(size) is not int or size < 0:
            raise InvalidInput(f"{where}: binary_data_size must be a non-negative integer")
        if length is None:
            raise InvalidInput(
                f"{where} has binary_data_size but the request has no "
                "Inference-Header-Content-Length header saying where its JSON ends"
            )
        if offset + size > len(binary):
            raise InvalidInput(
                f"{where}: binary_data_size is {size} but only {len(binary) - offset} bytes of "
                "binary data are left after the JSON header"
            )
        check_bytes_elements(spec, max_elements)
        chunk = bytes(binary[offset : offset + size])
        offset += size
        inputs.append(tensor_from_binary(spec.name, spec.datatype, spec.shape, chunk))
    if offset != len(binary):
        raise InvalidInput(
            f"{len(binary) - offset} bytes after the JSON header belong to no input: the "
            "binary_data_size values do not add up to the body"
        )
    return DecodedRequest(request.id, dict(request.parameters or {}), inputs, request.outputs)


def validate_request(document: object) -> InferenceRequest:
    """Check a request document against the protocol's schema, whichever transport carried it.

    Each violation is named by tensor; an input given twice is refused.
    """
    try:
        request = InferenceRequest.model_validate(document)
    except ValidationError as exc:
        raise InvalidInput(f"invalid inference request: {_describe(exc, document)}") from exc
    counts = Counter(spec.name for spec in request.inputs)
    repeated = sorted(name for name, count in counts.items() if count > 1)
    if repeated:
        raise InvalidInput(f"input {repeated[0]!r} is given more than once")
    return request


def check_bytes_elements(spec: InferenceRequestInput, max_elements: int | None) -> None:
    """Refuse a BYTES input of more elements than `max_elements` before any is split or copied."""
    if spec.datatype != BYTES or max_elements is None:
        return
    count = element_count(spec.shape)
    if count > max_elements:
        raise TooManyElements(
            f"input {spec.name!r}: shape {spec.shape} holds {count} BYTES elements; a request "
            f"may carry at most {max_elements}",
            limit=max_elements,
        )


def _check_value_count(header: bytes, max_elements: int, *, binary: bool) -> None:
    """Refuse a JSON document with too many values before parsing makes an object of each.

    Every value but the outermost follows a comma or an opening bracket, so counting those
    (in C, strings included) bounds the values from above: 10 MB of `0,` is five million list
    items, some 100 MB once parsed, and is refused here in milliseconds.
    """
    budget = 2 * max_elements + STRUCTURE_VALUES
    values = header.count(b",") + header.count(b"[") + header.count(b"{")
    if values > budget:
        what = "JSON header" if binary else "JSON request"
        raise TooManyElements(
            f"the {what} holds more than {budget} values (commas and brackets counted); a "
            f"request's tensors may hold at most {max_elements} elements",
            limit=max_elements,
        )


def checked_element_count(where: str, shape: Sequence[int], body_length: int) -> int:
    """A shape's element count, each dimension checked first against what the body could carry.

    Every element takes at least a byte, so no dimension may exceed the body's length; with at
    most `MAX_DIMENSIONS` of them the product stays a small number, cheap to compute and print.
    """
    for dimension in shape:
        if dimension > body_length:
            raise InvalidInput(
                f"{where}: shape {list(shape)} has a dimension larger than a {body_length}-byte "
                "body can carry"
            )
    return math.prod(shape)


def _shown(text: str) -> str:
    """A client's string for an error message: its repr, cut short (it may be megabytes long)."""
    if len(text) <= _SHOWN_CHARACTERS:
        return repr(text)
    return f"{text[:_SHOWN_CHARACTERS]!r}... ({len(text)} characters)"


def _describe(exc: ValidationError, document: object) -> str:
    """Name each schema violation by tensor where it is inside one, without echoing data."""
    seen: dict[tuple[int | str, ...], str] = {}
    for error in exc.errors(include_url=False, include_input=False):
        location, message = tuple(error["loc"]), error["msg"]
        if len(location) > 2 and location[-3] == "parameters":
            # One error per parameter, not one per member of the value union.
            location, message = location[:-1], "must be a string, number or boolean"
        seen.setdefault(location, message)
    reasons = []
    for location, message in list(seen.items())[:5]:
        path = ".".join(str(part) for part in location) or "body"
        if len(location) >= 2 and location[0] in ("inputs", "outputs"):
            name = _tensor_name(document, str(location[0]), location[1])
            if name is not None:
                kind = str(location[0])[:-1]
                path = f"{kind} {_shown(name)} ({path})"
        reasons.append(f"{path}: {message}")
    return "; ".join(reasons)


def _tensor_name(document: Any, key: str, index: int | str) -> str | None:
    """The name of inputs[i] or outputs[i] in the raw document, if it has a string one."""
    try:
        name = document[key][index]["name"]
    except (KeyError, IndexError, TypeError):
        return None
    return name if isinstance(name, str) else None


def bytes_tensor(name: str, elements: Sequence[bytes | str]) -> Tensor:
    """A 1-D BYTES tensor of these elements."""
    data = np.empty(len(elements), dtype=object)
    data[:] = list(elements)
    return Tensor(name, BYTES, data)


def element_count(shape: Sequence[int]) -> int:
    """How many elements a tensor of this shape holds."""
    return math.prod(shape)


def tensor_from_json(name: str, datatype: str, shape: Sequence[int], data: list[Any]) -> Tensor:
    """Decode JSON `data` (flat or nested, row-major) into a tensor of `shape`."""
    where = f"input {name!r}"
    values = flatten(data)
    count = element_count(shape)
    if len(values) != count:
        raise InvalidInput(
            f"{where}: shape {list(shape)} holds {count} elements but data has {len(values)}"
        )
    if datatype == BYTES:
        if not all(isinstance(value, str) for value in values):
            raise InvalidInput(f"{where}: BYTES data in JSON must be strings")
        return Tensor(name, datatype, bytes_tensor(name, values).data.reshape(shape))
    dtype = NUMERIC_DTYPES[datatype]
    if dtype.kind == "b":
        ok = all(type(value) is bool for value in values)
        expected = "booleans"
    elif dtype.kind in "iu":
        ok = all(type(value) is int for value in values)
        expected = "integers"
    else:
        ok = all(type(value) in (int, float) for value in values)
        expected = "numbers"
    if not ok:
        raise InvalidInput(f"{where}: {datatype} data in JSON must be {expected}")
    try:
        with np.errstate(over="ignore"):
            array = np.array(values, dtype=dtype)
    except OverflowError as exc:
        raise InvalidInput(f"{where}: a value does not fit in {datatype}") from exc
    return Tensor(name, datatype, array.reshape(shape))


def flatten(data: list[Any]) -> list[Any]:
    """Flatten nested lists row-major, without recursion (JSON may nest deeply)."""
    if not any(isinstance(value, list) for value in data):
        return data
    flat: list[Any] = []
    stack: list[Iterable[Any]] = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            flat.append(value)
        else:
            stack.pop()
    return flat


def tensor_from_elements(
    name: str, datatype: str, shape: Sequence[int], elements: Sequence[Any]
) -> Tensor:
    """Decode typed elements (gRPC's `InferTensorContents`) into a tensor of `shape`.

    They come flat, row-major and already of the datatype's Python type, BYTES elements whole;
    numbers are checked to fit the datatype.
    """
    where = f"input {name!r}"
    count = element_count(shape)
    if len(elements) != count:
        raise InvalidInput(
            f"{where}: shape {list(shape)} holds {count} elements but the contents have "
            f"{len(elements)}"
        )
    values = list(elements)
    if datatype == BYTES:
        return Tensor(name, datatype, bytes_tensor(name, values).data.reshape(shape))
    try:
        array = np.array(values, dtype=NUMERIC_DTYPES[datatype])
    except OverflowError as exc:
        raise InvalidInput(f"{where}: a value does not fit in {datatype}") from exc
    return Tensor(name, datatype, array.reshape(shape))


def tensor_from_binary(name: str, datatype: str, shape: Sequence[int], chunk: bytes) -> Tensor:
    """Decode a tensor's binary data (the binary data extension's layout) into `shape`."""
    where = f"input {name!r}"
    count = element_count(shape)
    if datatype == BYTES:
        elements = deserialize_bytes(chunk, where, most=count)
        if len(elements) != count:
            raise InvalidInput(
                f"{where}: shape {list(shape)} holds {count} elements but the binary data "
                f"has {len(elements)}"
            )
        return Tensor(name, datatype, bytes_tensor(name, elements).data.reshape(shape))
    dtype = NUMERIC_DTYPES[datatype]
    if len(chunk) != count * dtype.itemsize:
        raise InvalidInput(
            f"{where}: shape {list(shape)} of {datatype} needs {count * dtype.itemsize} bytes, "
            f"binary_data_size is {len(chunk)}"
        )
    if dtype.kind == "b" and chunk.translate(None, b"\x00\x01"):
        raise InvalidInput(f"{where}: BOOL bytes must be 0 or 1")
    return Tensor(name, datatype, np.frombuffer(chunk, dtype=dtype).reshape(shape))


def deserialize_bytes(chunk: bytes, where: str, *, most: int | None = None) -> list[bytes]:
    """Split length-prefixed BYTES elements, refusing lengths that run past the end.

    With `most` (the count the shape declares), splitting stops at one element too many.
    """
    elements: list[bytes] = []
    offset = 0
    while offset < len(chunk):
        if most is not None and len(elements) == most:
            raise InvalidInput(f"{where}: the binary data holds more than {most} BYTES elements")
        if offset + _LENGTH.size > len(chunk):
            raise InvalidInput(f"{where}: BYTES data ends inside an element's 4-byte length")
        (size,) = _LENGTH.unpack_from(chunk, offset)
        offset += _LENGTH.size
        if offset + size > len(chunk):
            raise InvalidInput(
                f"{where}: a BYTES element claims {size} bytes but only {len(chunk) - offset} "
                "are left"
            )
        elements.append(chunk[offset : offset + size])
        offset += size
    return elements


def serialize_bytes(elements: Iterable[bytes | str]) -> bytes:
    """Join BYTES elements as 4-byte little-endian length + bytes each (str as UTF-8)."""
    parts: list[bytes] = []
    for element in elements:
        data = element.encode() if isinstance(element, str) else element
        parts += (_LENGTH.pack(len(data)), data)
    return b"".join(parts)


def classify(scores: NDArray[Any], count: int, labels: Sequence[str]) -> NDArray[Any]:
    """The classification extension: each row's top `count` as "score:index:label" strings.

    Highest first, ties by lower index; scores print like C's %f, as Triton does.
    """
    rows = np.atleast_2d(scores)
    k = min(count, rows.shape[1])
    order = np.argsort(-rows.astype(np.float64), axis=1, kind="stable")[:, :k]
    result = np.empty((rows.shape[0], k), dtype=object)
    for row_index, row in enumerate(order):
        for rank, column in enumerate(row.tolist()):
            value = float(rows[row_index, column])
            result[row_index, rank] = f"{value:f}:{column}:{labels[column]}"
    return result


def classification_count(output: InferenceRequestOutput) -> int | None:
    """The `classification` k asked for on an output, if any."""
    if not output.parameters or "classification" not in output.parameters:
        return None
    count = output.parameters["classification"]
    if type(count) is not int or count < 1:
        raise InvalidInput(
            f"output {output.name!r}: classification must be a positive integer (the top k)"
        )
    return count


def encode_response(
    *,
    model_name: str,
    model_version: str | None,
    request_id: str | None,
    outputs: Sequence[tuple[Tensor, bool]],
    parameters: dict[str, str | int | float | bool] | None = None,
) -> tuple[bytes, int | None]:
    """Build the body: JSON, then the binary outputs' blobs in order.

    Returns the body and the JSON header's length, or None when nothing is binary (plain JSON).
    """
    document: dict[str, Any] = {"model_name": model_name}
    if model_version is not None:
        document["model_version"] = model_version
    if request_id is not None:
        document["id"] = request_id
    if parameters:
        document["parameters"] = parameters
    entries = []
    blobs = []
    for tensor, binary in outputs:
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.data.shape),
        }
        if binary:
            blob = tensor_bytes(tensor)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = tensor_json(tensor)
        entries.append(entry)
    document["outputs"] = entries
    header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not any(binary for _, binary in outputs):
        return header, None
    return header + b"".join(blobs), len(header)


def tensor_bytes(tensor: Tensor) -> bytes:
    """A tensor's binary data: native little-endian layout, or length-prefixed BYTES."""
    if tensor.datatype == BYTES:
        return serialize_bytes(tensor.data.ravel().tolist())
    dtype = NUMERIC_DTYPES[tensor.datatype]
    return np.ascontiguousarray(tensor.data, dtype=dtype).tobytes()


def tensor_json(tensor: Tensor) -> Any:
    """A tensor's data as a flat JSON list (orjson writes numeric arrays directly)."""
    if tensor.datatype == BYTES:
        return [
            value.decode("utf-8", "replace") if isinstance(value, bytes) else value
            for value in tensor.data.ravel().tolist()
        ]
    return np.ascontiguousarray(tensor.data.ravel(), dtype=NUMERIC_DTYPES[tensor.datatype])


def response_encoding(accept_encoding: str | None) -> str | None:
    """The best of gzip/deflate the client accepts (`Accept-Encoding`, with q weights), or None."""
    best: tuple[float, str] | None = None
    for item in (accept_encoding or "").split(","):
        coding, _, params = item.strip().partition(";")
        coding = coding.strip().lower()
        if coding not in ("gzip", "deflate"):
            continue
        weight = 1.0
        key, _, value = params.strip().partition("=")
        if key.strip().lower() == "q":
            try:
                weight = float(value)
            except ValueError:
                weight = 0.0
        if weight > 0 and (best is None or weight > best[0]):
            best = (weight, coding)
    return None if best is None else best[1]


def compress(body: bytes, coding: str) -> bytes:
    """Compress a response body as gzip or deflate (the zlib format HTTP calls deflate)."""
    if coding == "gzip":
        compressor = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        return compressor.compress(body) + compressor.flush()
    return zlib.compress(body)


def _bool_parameter(parameters: dict[str, Any], key: str, where: str) -> bool:
    """A parameter that must be a boolean."""
    value = parameters[key]
    if type(value) is not bool:
        raise InvalidInput(f"{where}: parameter {key!r} must be true or false")
    return value
