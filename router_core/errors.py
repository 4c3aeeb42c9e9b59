"""The one error hierarchy of s3router.

Every error the engine raises on purpose derives from :class:`S3RouterError`. The service maps each
class to an HTTP status in exactly one place (``service/errors.py``); a test checks that every class
defined here is mapped there.
"""

from __future__ import annotations


class S3RouterError(Exception):
    """Base class of every deliberate s3router error."""


# --- input -----------------------------------------------------------------------------------------
class InvalidInputError(S3RouterError):
    """The caller passed something malformed (empty audio, wrong tensor shape, bad argument)."""


class InvalidMaskNameError(InvalidInputError):
    """A mask name that is not a safe identifier (letters, digits, '.', '_', '-'; at most 128)."""


# --- masks and the registry -----------------------------------------------------------------------
LISTED_NAMES = 20  # mask names an error message lists at most


class MaskNotFoundError(S3RouterError):
    """No mask of that name exists in the registry's store."""

    def __init__(self, name: str, available: list[str] | None = None) -> None:
        self.name = name
        self.available = sorted(available or [])
        listing = ", ".join(self.available[:LISTED_NAMES]) if self.available else "none"
        if len(self.available) > LISTED_NAMES:
            listing += f" and {len(self.available) - LISTED_NAMES} more (GET /masks lists them)"
        super().__init__(f"no mask named {name!r}; available: {listing}")


class MaskKindError(S3RouterError):
    """A mask of one kind was used for the other (a classification mask to transcribe, say)."""


class MaskFormatError(S3RouterError):
    """A mask file cannot be read or does not describe a valid mask."""


class TruncatedMaskFileError(MaskFormatError):
    """The file ends early or is not a safetensors file at all."""


class ChecksumMismatchError(MaskFormatError):
    """The stored checksum does not match the file's tensors and metadata."""


class UnsupportedFormatVersionError(MaskFormatError):
    """The file was written by a format version this build cannot read."""


class MaskIncompatibleError(MaskFormatError):
    """The mask is well formed but does not fit the live backbone."""


class FingerprintMismatchError(MaskIncompatibleError):
    """The mask was learned on another backbone (its weights' fingerprint differs)."""


class LayerShapeMismatchError(MaskIncompatibleError):
    """A maskable layer is missing, unknown, or has another shape in the live backbone."""


class RegistryBudgetError(S3RouterError):
    """A mask is larger than the registry's whole resident-memory budget."""


class StoreUnavailableError(S3RouterError):
    """The mask store cannot be reached (I/O error, Redis down)."""


# --- backbone and kernels --------------------------------------------------------------------------
class BackboneError(S3RouterError):
    """The backbone checkpoint cannot be loaded or is of an unsupported architecture."""


class KernelUnavailableError(S3RouterError):
    """The requested kernel backend cannot run on this machine."""


# --- serving (raised by service/, defined here so the hierarchy stays one) -------------------------
class UnsupportedAudioError(InvalidInputError):
    """The bytes are not audio in a supported container/codec (WAV, FLAC, OGG, MP3)."""


class EmptyAudioError(InvalidInputError):
    """The upload decodes to no samples (or is shorter than one model frame)."""


class UploadTimeoutError(InvalidInputError):
    """The request body did not arrive in time (a stalled or trickling upload)."""


class PayloadTooLargeError(S3RouterError):
    """The upload exceeds the byte limit or the audio exceeds the duration limit."""


class OverloadedError(S3RouterError):
    """The request queue is full; the client should retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateLimitedError(S3RouterError):
    """An API key sent more requests than its rate; retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DeadlineExceededError(S3RouterError):
    """The request was not served before its deadline."""


class ClientClosedRequestError(S3RouterError):
    """The client went away before its answer was ready; its work is dropped (logged as 499)."""


class NotReadyError(S3RouterError):
    """The service is still starting (backbone loading or warming up)."""


class AuthenticationError(S3RouterError):
    """Missing or wrong admin bearer token."""


class MaskForbiddenError(S3RouterError):
    """The API key may not use this mask."""


class AdminDisabledError(S3RouterError):
    """Admin endpoints are off because no admin token is configured."""


class NotImplementedFeatureError(S3RouterError):
    """A part of a compatible API that this service does not provide (OpenAI translations)."""


def all_error_classes() -> list[type[S3RouterError]]:
    """Every error class of the hierarchy, the base included (used by the mapping test)."""
    found: list[type[S3RouterError]] = []
    stack: list[type[S3RouterError]] = [S3RouterError]
    while stack:
        cls = stack.pop()
        found.append(cls)
        stack.extend(cls.__subclasses__())
    return found
