"""The one place that maps engine errors to HTTP status codes (a test checks every class is mapped)."""

from __future__ import annotations

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
    E.DeadlineExceededError: 504,
    E.ClientClosedRequestError: 499,  # nginx's "client closed request": no one reads it, metrics do
    E.NotReadyError: 503,
    E.AuthenticationError: 401,
    E.AdminDisabledError: 403,
}


def status_for(exc: E.S3RouterError) -> int:
    """HTTP status of ``exc``: its own class's entry, else its nearest mapped ancestor's."""
    for cls in type(exc).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return 500
