"""Reading request bodies: a raw audio or mask-file body, or a multipart form with a ``file`` part, within
a size limit and the upload timeout."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import Request

from router_core.errors import EmptyAudioError, InvalidInputError, PayloadTooLargeError, UploadTimeoutError
from service.pipeline.state import state_of


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes before reading them all, and a body not
    received within ``upload_timeout_s`` (a stalled or trickling upload holds a connection open)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"upload is {int(declared)} bytes; the limit is {limit} bytes")
    timeout = state_of(request).settings.upload_timeout_s
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    size = 0
    stream = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), max(0.0, deadline - time.monotonic()))
        except StopAsyncIteration:
            break
        except TimeoutError:
            raise UploadTimeoutError(f"the upload was not received within {timeout:g} s ({size} bytes came)") from None
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"upload exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # lets request.form() parse the bytes already read
    return body


async def read_upload(request: Request, limit: int) -> tuple[bytes, dict[str, Any]]:
    """Audio bytes from a raw body or a multipart ``file`` field, plus the other form fields."""
    body = await read_body(request, limit)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return body, {}
    form = await request.form()
    fields: dict[str, Any] = {}
    audio: bytes | None = None
    for key, value in form.multi_items():
        if key == "file":
            if audio is not None:
                raise InvalidInputError("the multipart upload has more than one 'file' part; send one")
            audio = await value.read() if not isinstance(value, str) else _part_bytes(value)
        elif isinstance(value, str):
            fields.setdefault(key, []).append(value)
    if audio is None:
        raise EmptyAudioError("multipart upload has no 'file' field")
    return audio, {k: v[0] if len(v) == 1 else v for k, v in fields.items()}


def _part_bytes(text: str) -> bytes:
    """The bytes of a multipart part sent without a filename, which Starlette hands over as text: decoded
    as UTF-8 when the bytes were valid UTF-8, else as Latin-1 (``formparsers._user_safe_decode``). Exact
    for binary audio; only bytes that are themselves UTF-8 text could be read back either way."""
    try:
        latin = text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8")  # characters past U+00FF: it was decoded as UTF-8
    try:
        # Latin-1 bytes that are valid, non-ASCII UTF-8 would have been decoded as UTF-8 instead
        return text.encode("utf-8") if latin.decode("utf-8") != text else latin
    except UnicodeDecodeError:
        return latin
