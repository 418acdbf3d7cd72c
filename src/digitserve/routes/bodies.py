"""Reading request bodies within the limits: size before content, and multipart kept in memory."""

import io
from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from digitserve.errors import BodyTooLarge, InvalidInput, TooManyImages


def media_type_of(content_type: str | None) -> tuple[str, dict[bytes, bytes]]:
    """Split a Content-Type header into its lower-case media type and its parameters."""
    if not content_type:
        return "", {}
    media_type, options = parse_options_header(content_type)
    return media_type.decode("latin-1").strip().lower(), options


async def read_body(request: Request, limit: int) -> bytes:
    """Read the whole body, refusing it as soon as it is known to exceed `limit` bytes.

    The pieces are written to one buffer as they arrive, which then becomes the body without a
    copy, rather than kept and joined: kept, the pieces of a large body (a few hundred KiB each)
    scatter over the allocator's heap, which holds on to the holes after the request, and the join
    needs the body's size twice over. The buffer is not sized from Content-Length up front: a
    client that declares 10 MB and sends nothing would hold 10 MB.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidInput("Content-Length must be a non-negative integer")
        if int(declared) > limit:
            raise BodyTooLarge(
                f"request body is {declared} bytes; the limit is {limit}", limit=limit
            )
    buffer = io.BytesIO()
    try:
        async for chunk in request.stream():
            if buffer.tell() + len(chunk) > limit:
                raise BodyTooLarge(f"request body exceeds the limit of {limit} bytes", limit=limit)
            buffer.write(chunk)
    except ClientDisconnect as exc:
        raise InvalidInput("the client closed the connection before the body was complete") from exc
    return buffer.getvalue()


@dataclass
class Part:
    """One part of a multipart/form-data body."""

    name: str = ""
    filename: str | None = None
    content_type: str = ""
    data: bytearray = field(default_factory=bytearray)


def parse_multipart(body: bytes, boundary: bytes, *, max_parts: int) -> list[Part]:
    """Split a multipart body in memory (never spooled to disk), with a bound on the part count."""
    parts: list[Part] = []
    header_field = bytearray()
    header_value = bytearray()
    current = Part()
    finished = [0]

    def on_part_begin() -> None:
        nonlocal current
        if len(parts) >= max_parts:
            raise TooManyImages(
                f"more than {max_parts} parts in one request; the limit is {max_parts}",
                limit=max_parts,
            )
        current = Part()
        parts.append(current)

    def on_part_data(data: bytes, start: int, end: int) -> None:
        current.data += data[start:end]

    def on_part_end() -> None:
        finished[0] += 1

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_field.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        name = header_field.decode("latin-1").strip().lower()
        value = header_value.decode("latin-1")
        if name == "content-disposition":
            _, options = parse_options_header(value)
            current.name = options.get(b"name", b"").decode("utf-8", "replace")
            filename = options.get(b"filename")
            current.filename = None if filename is None else filename.decode("utf-8", "replace")
        elif name == "content-type":
            current.content_type = media_type_of(value)[0]
        header_field.clear()
        header_value.clear()

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise InvalidInput(f"malformed multipart/form-data body: {exc}") from exc
    if finished[0] != len(parts):
        raise InvalidInput("malformed multipart/form-data body: it ends inside a part")
    return parts
