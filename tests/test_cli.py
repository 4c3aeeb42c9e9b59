import json

from helpers import ctc_spec, tiny_model
from router_core.backbone import load_backbone
from router_core.mask_builder import random_mask
from router_core.mask_file import encode_mask
from service.cli import main


def test_info_and_inspect_on_real_files(tmp_path, capsys):
    tiny_model().save_pretrained(tmp_path / "bb")
    assert main(["info", str(tmp_path / "bb"), "--offline"]) == 0
    info = json.loads(capsys.readouterr().out)
    bb = load_backbone(tmp_path / "bb", local_files_only=True)
    assert info["fingerprint"] == bb.fingerprint and info["default_maskable_layers"] == 4
    mask = random_mask(bb.spec(), "fr", ctc_spec(), bb.default_layer_names(), 0.9)
    (tmp_path / "fr.s3mask").write_bytes(encode_mask(mask))
    assert main(["inspect", str(tmp_path / "fr.s3mask"), "--backbone", str(tmp_path / "bb"), "--offline"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["name"] == "fr" and summary["kind"] == "ctc" and abs(summary["mean_keep_ratio"] - 0.9) < 0.01


def test_cli_reports_errors_without_a_traceback(tmp_path, capsys):
    (tmp_path / "bad.s3mask").write_bytes(b"not a mask")
    assert main(["inspect", str(tmp_path / "bad.s3mask")]) == 1
    assert "s3router inspect:" in capsys.readouterr().err


def test_a_training_command_without_the_train_extra_says_how_to_get_it(tmp_path, capsys, monkeypatch):
    """The image installs only what serving needs: `s3router eval` there names the extra, no traceback."""
    import sys

    monkeypatch.setitem(sys.modules, "jiwer", None)  # as if not installed: importing it fails
    monkeypatch.delitem(sys.modules, "router_core.training.evaluation", raising=False)
    (tmp_path / "m.jsonl").write_text("")
    assert main(["eval", "--manifest", str(tmp_path / "m.jsonl"), "--checkpoint", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "s3router eval: needs jiwer" in err and "s3router[train]" in err
