"""The one place that maps errors to HTTP responses (a test checks every class is mapped).

Every error body has one shape, ``{"error": {"type", "message"}}``: the engine's own errors (the
hierarchy in ``router_core/errors.py``), and what the web framework raises itself (unknown route 404,
wrong method 405 with ``Allow``, malformed multipart 400, parameter validation 422). Every 503 carries
``Retry-After``, and so does a 429.

The hierarchy of ``router_core/errors.py``, each class with its status (a test keeps this drawing true)::

    S3RouterError 500
        InvalidInputError 400
            InvalidMaskNameError 400
            UnsupportedAudioError 415
            EmptyAudioError 400
            UploadTimeoutError 408
        MaskNotFoundError 404
        MaskKindError 422
        MaskFormatError 400
            TruncatedMaskFileError 400
            ChecksumMismatchError 400
            UnsupportedFormatVersionError 400
            MaskIncompatibleError 409
                FingerprintMismatchError 409
                LayerShapeMismatchError 409
        RegistryBudgetError 413
        StoreUnavailableError 503
        BackboneError 500
        KernelUnavailableError 500
        PayloadTooLargeError 413
        OverloadedError 503
        RateLimitedError 429
        DeadlineExceededError 504
        ClientClosedRequestError 499
        NotReadyError 503
        AuthenticationError 401
        MaskForbiddenError 403
        AdminDisabledError 403
        NotImplementedFeatureError 501
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from router_core import errors as E

HTTP_STATUS: dict[type[E.S3RouterError], int] = {
    E.S3RouterError: 500,
    E.InvalidInputError: 400,
    E.InvalidMaskNameError: 400,
    E.MaskNotFoundError: 404,
    E.MaskKindError: 422,
    E.MaskFormatError: 400,
    E.TruncatedMaskFileError: 400,
    E.ChecksumMismatchError: 400,
    E.UnsupportedFormatVersionError: 400,
    E.MaskIncompatibleError: 409,
    E.FingerprintMismatchError: 409,
    E.LayerShapeMismatchError: 409,
    E.RegistryBudgetError: 413,
    E.StoreUnavailableError: 503,
    E.BackboneError: 500,
    E.KernelUnavailableError: 500,
    E.UnsupportedAudioError: 415,
    E.EmptyAudioError: 400,
    E.UploadTimeoutError: 408,
    E.PayloadTooLargeError: 413,
    E.OverloadedError: 503,
    E.RateLimitedError: 429,
    E.DeadlineExceededError: 504,
    E.ClientClosedRequestError: 499,  # nginx's "client closed request": no one reads it, metrics do
    E.NotReadyError: 503,
    E.AuthenticationError: 401,
    E.AdminDisabledError: 403,
    E.MaskForbiddenError: 403,
    E.NotImplementedFeatureError: 501,
}


def status_for(exc: E.S3RouterError) -> int:
    """HTTP status of ``exc``: its own class's entry, else its nearest mapped ancestor's."""
    for cls in type(exc).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return 500


def error_body(kind: str, message: str) -> dict[str, dict[str, str]]:
    """The one error body: ``{"error": {"type", "message"}}``."""
    return {"error": {"type": kind, "message": message}}


def error_json(status: int, kind: str, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The error body as a response; a 503 gets ``Retry-After`` (1 s unless ``headers`` say otherwise)."""
    headers = dict(headers or {})
    if status == 503:
        headers.setdefault("Retry-After", "1")
    return JSONResponse(error_body(kind, message), status_code=status, headers=headers or None)


def error_response(exc: E.S3RouterError) -> JSONResponse:
    retry_after = getattr(exc, "retry_after", None)  # OverloadedError (503), RateLimitedError (429)
    headers = {"Retry-After": str(max(1, math.ceil(retry_after)))} if retry_after is not None else None
    return error_json(status_for(exc), type(exc).__name__, str(exc), headers)


def _http_error_type(status: int) -> str:
    """``NotFound``, ``MethodNotAllowed``, ... from the status's standard phrase."""
    try:
        return HTTPStatus(status).phrase.replace(" ", "").replace("-", "")
    except ValueError:
        return "HTTPError"


_HTTP_METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}


def _allowed_methods(request: Request) -> list[str]:
    """Every method the OpenAPI schema serves at this path: the ``Allow`` of a 405 (Starlette names only
    the methods of the first route whose path matched). The table is built once per app."""
    table = getattr(request.app.state, "allow_table", None)
    if table is None:
        table = [
            (re.compile(re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(path)) + r"\Z"),
             {method.upper() for method in operations if method in _HTTP_METHODS})
            for path, operations in request.app.openapi()["paths"].items()
        ]
        request.app.state.allow_table = table
    return sorted({m for pattern, methods in table if pattern.match(request.url.path) for m in methods})


def install_error_handlers(app: FastAPI) -> None:
    """Route every error the app can raise through :func:`error_json`."""

    @app.exception_handler(E.S3RouterError)
    async def _engine_error(request: Request, exc: E.S3RouterError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(_allowed_methods(request)) or headers.get("Allow", "")
        return error_json(exc.status_code, _http_error_type(exc.status_code), str(exc.detail), headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in problem['loc'])}: {problem['msg']}" for problem in exc.errors()
        )
        return error_json(422, "ValidationError", problems or "invalid request")
