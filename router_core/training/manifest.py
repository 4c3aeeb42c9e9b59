"""Training/evaluation manifests: JSONL (``{"audio": ..., "text": ...}`` or ``"label"``) or TSV with a
header row (``audio<TAB>text`` or ``audio<TAB>label``). Audio paths are relative to the manifest's folder.

Every problem is reported with the file and line it comes from, before any training starts.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from router_core.errors import InvalidInputError
from router_core.heads import MaskKind


@dataclass(frozen=True)
class Example:
    audio: Path
    target: str  # transcript (ctc) or label (classify)
    source: str  # "manifest.jsonl:12", for error messages


def _field_for(kind: MaskKind) -> str:
    if kind not in ("ctc", "classify"):
        raise InvalidInputError(f"kind must be ctc or classify, not {kind!r}")
    return "text" if kind == "ctc" else "label"


def read_manifest(path: str | Path, kind: MaskKind, check_audio: bool = True) -> list[Example]:
    """Parse and validate a manifest; raise :class:`InvalidInputError` naming the bad line."""
    path = Path(path)
    key = _field_for(kind)
    if not path.is_file():
        raise InvalidInputError(f"manifest {path} does not exist")
    rows: list[tuple[int, dict]] = []
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".tsv", ".csv") or (text and not text.lstrip().startswith("{")):
        reader = csv.DictReader(text.splitlines(), delimiter="\t" if path.suffix != ".csv" else ",")
        rows = [(i + 2, row) for i, row in enumerate(reader)]
    else:
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise InvalidInputError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
    if not rows:
        raise InvalidInputError(f"manifest {path} has no examples")
    examples = []
    for number, row in rows:
        where = f"{path}:{number}"
        if not isinstance(row, dict) or not row.get("audio"):
            raise InvalidInputError(f"{where}: missing 'audio'")
        target = row.get(key)
        if target is None or not str(target).strip():
            raise InvalidInputError(f"{where}: missing '{key}' (a {kind} manifest needs one per line)")
        audio = Path(row["audio"])
        audio = audio if audio.is_absolute() else path.parent / audio
        if check_audio and not audio.is_file():
            raise InvalidInputError(f"{where}: audio file {audio} does not exist")
        examples.append(Example(audio, " ".join(str(target).split()), where))
    return examples
