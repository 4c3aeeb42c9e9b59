"""Check that the running environment holds exactly the versions ``requirements.lock`` names.

``make test`` runs it before the suite (and ``tests/test_lock.py`` runs it inside the suite): a package
changed by hand, missing, or installed beside the lock fails the check, which names it. Markers in the
(universal) lock are evaluated for this interpreter and platform; local version labels such as
``+cu130`` are the wheel's build, not another version, so ``2.11.0+cu130`` satisfies ``torch==2.11.0``.

Usage: ``python scripts/check_lock.py [requirements.lock]``; exit status 1 on any difference.
"""

from __future__ import annotations

import re
import sys
import sysconfig
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.utils import canonicalize_name
from packaging.version import Version

# ``name==version`` at the start of a line, then optional ``; markers`` before the hash continuation.
_PIN = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;\\]+)\s*(?:;\s*(?P<marker>[^\\]+?))?\s*\\?$"
)
# Installed by the venv itself or editable from this checkout, never by the lock.
NOT_LOCKED = frozenset({"pip", "s3router"})


def locked_versions(lock_text: str) -> dict[str, str]:
    """``{canonical name: version}`` of every pin in the lock whose marker holds here."""
    pins: dict[str, str] = {}
    for line in lock_text.splitlines():
        match = _PIN.match(line.strip())
        if match is None:
            continue
        marker = match.group("marker")
        if marker and not Marker(marker).evaluate():
            continue
        pins[canonicalize_name(match.group("name"))] = match.group("version")
    return pins


def installed_versions() -> dict[str, str]:
    """``{canonical name: version}`` of every distribution installed in this environment's site-packages
    (not all of ``sys.path``: importing setuptools adds its vendored packages' metadata there)."""
    site = sorted({sysconfig.get_paths()[key] for key in ("purelib", "platlib")})
    return {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions(path=site)}


def differences(locked: Mapping[str, str], installed: Mapping[str, str]) -> list[str]:
    """One line per package that is missing, at another version, or not in the lock (sorted by name)."""
    problems = []
    for name in sorted(locked.keys() | installed.keys()):
        if name in NOT_LOCKED:
            continue
        want, have = locked.get(name), installed.get(name)
        if have is None:
            problems.append(f"{name}: the lock names {want}, but it is not installed")
        elif want is None:
            problems.append(f"{name}: {have} is installed, but the lock does not name it")
        elif Version(have).public != Version(want).public:
            problems.append(f"{name}: {have} is installed, the lock names {want}")
    return problems


def main(argv: list[str]) -> int:
    lock = Path(argv[1] if len(argv) > 1 else "requirements.lock")
    problems = differences(locked_versions(lock.read_text()), installed_versions())
    if problems:
        print(f"installed packages differ from {lock}:", file=sys.stderr)
        for line in problems:
            print(f"  {line}", file=sys.stderr)
        print("restore the locked versions with `make sync`", file=sys.stderr)
        return 1
    print(f"installed packages match {lock} ({len(locked_versions(lock.read_text()))} pinned)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
