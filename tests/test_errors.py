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


def error_tree(cls: type = errors.S3RouterError, depth: int = 0) -> list[str]:
    """The hierarchy as drawn in ``service/errors.py``'s docstring: one line per class, indented by depth,
    with its status; subclasses in the order they are defined."""
    lines = [f"{'    ' * depth}{cls.__name__} {HTTP_STATUS[cls]}"]
    for sub in cls.__subclasses__():
        lines += error_tree(sub, depth + 1)
    return lines


def test_the_error_tree_in_the_docstring_is_the_real_one():
    import service.errors

    doc = service.errors.__doc__ or ""
    drawn = doc[doc.index("S3RouterError 500"):].split("\n\n")[0].rstrip().splitlines()
    assert [line.removeprefix("    ") for line in drawn] == error_tree()
