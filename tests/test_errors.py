from router_core import errors
from service.errors import HTTP_STATUS, status_for


def test_every_error_class_has_an_explicit_http_status():
    missing = [cls.__name__ for cls in errors.all_error_classes() if cls not in HTTP_STATUS]
    assert missing == []


def test_client_errors_are_4xx_and_specific():
    assert status_for(errors.MaskNotFoundError("fr", ["de"])) == 404
    assert status_for(errors.MaskKindError("x")) == 422
    assert status_for(errors.ChecksumMismatchError("x")) == 400
    assert status_for(errors.FingerprintMismatchError("x")) == 409
    assert all(400 <= status_for(cls("x")) < 500 for cls in (errors.InvalidInputError, errors.MaskFormatError))
