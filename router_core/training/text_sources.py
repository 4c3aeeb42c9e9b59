"""Real sentences per language from Debian packages: fortune cookies, French man pages, typing lessons.

Sources (installed by ``make bundle``/CI with apt): ``fortunes`` (en), ``fortunes-de``, ``fortunes-es``,
``fortunes-it``, ``fortunes-br`` (pt, the held-out language) and ``manpages-fr`` (fr: Debian has no
French fortunes) are :func:`sentences`, from which every split is planned. :func:`everyday_sentences`
adds the prose paragraphs of the typing tutor ``klavaro`` (encyclopedic and everyday text in every
language, French included); they only ever join training, so the dev and test sets planned from the
first sources stay what they were. Sentences are filtered so that espeak-ng reads them as written:
3-14 words, letters of the language only (no digits, no symbols), no all-capitals words (abbreviations,
roman numerals).
"""

from __future__ import annotations

import gzip
import re
import subprocess
import unicodedata
from pathlib import Path

PACKAGES = {
    "en": ["fortunes", "fortunes-min"],
    "de": ["fortunes-de"],
    "es": ["fortunes-es"],
    "it": ["fortunes-it"],
    "pt": ["fortunes-br"],
    "fr": ["manpages-fr"],
}
# Everyday prose for training only: klavaro's typing-lesson paragraphs (its file per language).
EVERYDAY_FILES = {
    "en": "/usr/share/klavaro/C.paragraphs", "fr": "/usr/share/klavaro/fr.paragraphs",
    "de": "/usr/share/klavaro/de.paragraphs", "es": "/usr/share/klavaro/es.paragraphs",
    "it": "/usr/share/klavaro/it.paragraphs", "pt": "/usr/share/klavaro/pt_BR.paragraphs",
}
LETTERS = {
    "en": "abcdefghijklmnopqrstuvwxyz'",
    "de": "abcdefghijklmnopqrstuvwxyzäöüß",
    "es": "abcdefghijklmnopqrstuvwxyzáéíóúñü",
    "it": "abcdefghijklmnopqrstuvwxyzàèéìíòóùú'",
    "pt": "abcdefghijklmnopqrstuvwxyzáâãàçéêíóôõú",
    "fr": "abcdefghijklmnopqrstuvwxyzàâæçéèêëîïôœùûüÿ'",
}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_ROFF_ESCAPE = re.compile(r"\\f[BIRP]|\\f\(..|\\[-&e ]|\\\(..|\\\*.|\\[a-zA-Z]")


def package_files(package: str) -> list[Path]:
    """Text files a Debian package installed (fortune data files or man pages)."""
    try:
        listing = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    files = []
    for line in listing.splitlines():
        path = Path(line)
        if not path.is_file() or path.is_symlink() or path.suffix in (".dat", ".u8"):
            continue
        if "/games/fortunes" in line or (line.startswith("/usr/share/man/") and line.endswith(".gz")):
            files.append(path)
    return sorted(files)


def _roff_text(raw: str) -> str:
    lines = [ln for ln in raw.splitlines() if ln and not ln.startswith((".", "'", '\\"'))]
    return _ROFF_ESCAPE.sub(" ", " ".join(lines))


def raw_texts(lang: str, only_ciphered: bool = False) -> list[str]:
    """The language's texts; with ``only_ciphered``, only those of ROT13-enciphered fortune files
    (``fortunes-es`` ships its offensive fortunes that way, under ``off/``)."""
    texts = []
    for package in PACKAGES[lang]:
        for path in package_files(package):
            if only_ciphered and "/off/" not in str(path):
                continue
            try:
                if path.suffix == ".gz":
                    texts.append(_roff_text(gzip.decompress(path.read_bytes()).decode("utf-8", "replace")))
                else:
                    texts.extend(path.read_text(encoding="utf-8", errors="replace").split("\n%\n"))
            except OSError:
                continue
    return texts


def normalize(sentence: str) -> str:
    """Lower-case transcript: letters, apostrophes and single spaces (what the CTC heads learn)."""
    text = unicodedata.normalize("NFC", sentence).lower().replace("’", "'")
    text = re.sub(r"[^\w' ]+", " ", text)
    return " ".join(w.strip("'") for w in text.split() if w.strip("'"))


def good_sentence(sentence: str, lang: str) -> bool:
    words = sentence.split()
    if not 3 <= len(words) <= 14 or len(sentence) > 110:
        return False
    if re.search(r"[0-9@#$%&*/\\<>=_|~^{}\[\]+();:]", sentence) or "--" in sentence:
        return False
    if re.search(r"\b[A-ZÀ-Þ]\.", sentence):
        return False  # initials ("Richard M.") are spelled out by espeak-ng
    short = sum(len(w.strip(".,!?\"'«»")) <= 1 for w in words)
    if short > 2 or sum(len(w) >= 3 for w in words) < 0.6 * len(words):
        return False  # fragments of tables and option lists
    if any(len(w.strip(".,;:!?\"'()«»")) > 1 and w.strip(".,;:!?\"'()«»").isupper() for w in words):
        return False  # abbreviations and roman numerals are read differently from their spelling
    allowed = set(LETTERS[lang]) | {" "}
    return all(c in allowed for c in normalize(sentence))


def sentences(lang: str) -> list[str]:
    """Unique, filtered sentences (original casing and punctuation, for espeak-ng), in a stable order.
    Ciphertext is included: the corpus plan depends on this list, so dropping it would move sentences
    between splits; :func:`ciphered_sentences` names it so that the plan can leave it out afterwards."""
    return filter_sentences(raw_texts(lang), lang)


def ciphered_sentences(lang: str) -> set[str]:
    """Sentences of :func:`sentences` that are ROT13 ciphertext, not language."""
    return set(filter_sentences(raw_texts(lang, only_ciphered=True), lang))


def everyday_sentences(lang: str) -> list[str]:
    """Filtered sentences of the language's everyday prose (:data:`EVERYDAY_FILES`); none when the
    ``klavaro`` package is not installed."""
    try:
        text = Path(EVERYDAY_FILES[lang]).read_text(encoding="utf-8", errors="replace")
    except (KeyError, OSError):
        return []
    return filter_sentences(text.split("\n\n"), lang)


def filter_sentences(texts: list[str], lang: str) -> list[str]:
    """Sentences of ``texts`` (split at sentence ends) that pass :func:`good_sentence`, one per transcript,
    original spelling, in first-seen order."""
    by_transcript: dict[str, str] = {}
    for text in texts:
        flat = " ".join(text.replace("\t", " ").split())
        for sentence in _SENTENCE_END.split(flat):
            sentence = sentence.strip(" -\"'«»")
            if good_sentence(sentence, lang):
                by_transcript.setdefault(normalize(sentence), sentence)
    return list(by_transcript.values())
