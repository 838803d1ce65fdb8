"""`monet-edit verify`: an intact resected checkpoint passes; tampering is found and named."""

import json

import pytest
from clirun import assert_clean_error, cli
from helpers import random_mask, tiny_config

from monet_edit.editing import resect, verify
from monet_edit.errors import UsageError


@pytest.fixture
def edited(tmp_path, tiny_ckpt):
    masks = random_mask(tiny_config(), 0.2, seed=3)
    return resect.resect(str(tiny_ckpt), masks, tmp_path / "edited", command="test", mask_meta={"rule": "test"})


def test_intact_checkpoint_passes(edited):
    report = verify.check(edited)
    assert report["problems"] == []
    assert any("manifest.json" in line for line in report["checked"])


def test_tampered_files_are_named(edited):
    (edited / "README.md").write_text("changed")
    cfg = json.loads((edited / "config.json").read_text())
    cfg["monet_edit"]["counts"] = [0, 0]
    (edited / "config.json").write_text(json.dumps(cfg))
    problems = verify.check(edited)["problems"]
    assert any(p.startswith("README.md: sha256") for p in problems)
    assert any(p.startswith("config.json: sha256") for p in problems)
    assert any("edit record says [0, 0]" in p for p in problems)


def test_manifest_path_traversal_is_refused(edited):
    manifest = json.loads((edited / "manifest.json").read_text())
    manifest["files"]["../../etc/passwd"] = "0" * 64
    (edited / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UsageError, match="not a plain file name"):
        verify.check(edited)


def test_cli_exit_codes(edited, tmp_path):
    ok = cli("verify", edited, "--json")
    assert ok.code == 0 and json.loads(ok.stdout)["problems"] == []
    (edited / "tokenizer.json").write_text("{}")
    bad = cli("verify", edited)
    assert bad.code == 1 and "tokenizer.json" in bad.stderr and "Traceback" not in bad.stderr
    assert_clean_error(cli("verify", tmp_path / "missing"), 2, "not a directory")
