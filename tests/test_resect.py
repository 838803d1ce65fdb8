"""Resected checkpoints: byte-identical tensors plus masks, load_model applies them, the base is
never touched, outputs are atomic and documented; the `resect` command and its bad input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from clirun import assert_clean_error, cli
from helpers import random_mask, sibling_references, write_tiny_checkpoint
from test_selection import run

from monet_edit.editing import resect, verify
from monet_edit.errors import UsageError
from monet_edit.model import checkpoint, masks, modelcard
from monet_edit.model.loading import load_model
from monet_edit.selection import select as selection


def tree_digest(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def raw_tensors(directory: Path) -> dict[str, bytes]:
    out = {}
    for name, info in checkpoint.read_headers(directory).items():
        with open(info.file, "rb") as fh:
            fh.seek(info.start)
            out[name] = (info.dtype, info.shape, fh.read(info.end - info.start))
    return out


def logits(model, seed: int = 0) -> torch.Tensor:
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        return model(ids).logits


META = {"rule": "skew", "params": {"ratio": 2.0}, "target": "law"}


@pytest.mark.parametrize("fixture", ["tiny_ckpt", "tiny_ckpt_vd"])
def test_resected_checkpoint_applies_masks_and_keeps_every_tensor(fixture, request, tmp_path):
    base = request.getfixturevalue(fixture)
    before = tree_digest(base)
    cfg = checkpoint.load_config(base)
    m = random_mask(cfg, 0.15, seed=4)
    m[1] = torch.zeros_like(m[1])  # a group without masked experts carries no mask tensor
    out = resect.resect(base, m, tmp_path / "out", command="monet-edit resect --domain law", mask_meta=META)
    assert tree_digest(base) == before
    base_raw, out_raw = raw_tensors(base), raw_tensors(out)
    mask0 = checkpoint.mask_key(cfg, 0)
    assert set(out_raw) == set(base_raw) | {mask0}
    assert all(out_raw[k] == v for k, v in base_raw.items())  # dtype, shape and bytes
    edited, reference, plain = load_model(out), load_model(base, mask=m), load_model(base)
    assert set(edited.masks()) == {0} and torch.equal(edited.masks()[0], m[0])
    assert torch.equal(logits(edited), logits(reference))
    assert not torch.allclose(logits(edited), logits(plain))
    assert checkpoint.model_fingerprint(out) == checkpoint.model_fingerprint(base)

    record = json.loads((out / "config.json").read_text())["monet_edit"]
    assert record["base"]["fingerprint"] == checkpoint.model_fingerprint(base)
    assert record["counts"] == [int(m[0].sum()), 0] and record["rule"] == "skew" and record["target"] == "law"
    assert record["fraction"] == pytest.approx(int(m[0].sum()) / (2 * 64))
    assert record["command"] == "monet-edit resect --domain law"
    loaded, meta = masks.load(out / resect.MASK_FILE, cfg)
    assert torch.equal(loaded[0], m[0]) and meta["params"] == {"ratio": 2.0}
    assert (out / "tokenizer.json").read_bytes() == (base / "tokenizer.json").read_bytes()
    card = (out / "README.md").read_text()
    assert "monet-edit resect --domain law" in card and "**skew** (ratio=2)" in card
    assert f"| 0 | 0-1 | {int(m[0].sum())} |" in card and "| 1 | 2-3 | 0 |" in card
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["base"]["weights_sha256"]["model.safetensors"] == before["model.safetensors"]
    assert manifest["mask"]["sha256"] == hashlib.sha256((out / resect.MASK_FILE).read_bytes()).hexdigest()
    assert set(manifest["files"]) == set(tree_digest(out)) - {"manifest.json"}
    assert verify.manifest_mismatches(out) == []
    (out / "README.md").write_text("tampered")
    assert verify.manifest_mismatches(out) == ["README.md"]


def test_sharded_base_and_existing_masks_are_merged(tmp_path):
    from safetensors.torch import load_file, save_file

    cfg_masks = {1: torch.eye(8, dtype=torch.bool)}
    base = write_tiny_checkpoint(tmp_path / "base", masks=cfg_masks, seed=7)
    sd = load_file(str(base / "model.safetensors"))
    names = sorted(sd)
    shards = {"a.safetensors": names[: len(names) // 2], "b.safetensors": names[len(names) // 2 :]}
    for shard, keys in shards.items():
        save_file({k: sd[k] for k in keys}, str(base / shard))
    (base / "model.safetensors").unlink()
    (base / checkpoint.INDEX).write_text(
        json.dumps({"weight_map": {k: s for s, ks in shards.items() for k in ks}})
    )
    new = {0: torch.zeros(8, 8, dtype=torch.bool), 1: torch.zeros(8, 8, dtype=torch.bool)}
    new[0][2, 3] = new[1][0, 1] = True
    out = resect.resect(base, new, tmp_path / "out", command="c", mask_meta={})
    merged = {0: new[0], 1: new[1] | cfg_masks[1]}
    edited = load_model(out)
    assert {g: m.cpu() for g, m in edited.masks().items()}.keys() == {0, 1}
    assert all(torch.equal(edited.masks()[g].cpu(), merged[g]) for g in merged)
    assert torch.equal(logits(edited), logits(load_model(base, mask=new)))
    record = json.loads((out / "config.json").read_text())["monet_edit"]
    assert record["counts"] == [1, 9] and record["rule"] == "given mask"
    assert sorted(record["base"]["weights_sha256"]) == ["a.safetensors", "b.safetensors"]


def test_refusals_leave_nothing_behind(tiny_ckpt, tmp_path):
    before = tree_digest(tiny_ckpt)
    cfg = checkpoint.load_config(tiny_ckpt)
    m = random_mask(cfg, 0.1)
    out = tmp_path / "out"
    resect.resect(tiny_ckpt, m, out, command="c", mask_meta=META)
    first = tree_digest(out)
    with pytest.raises(UsageError, match="exists"):
        resect.resect(tiny_ckpt, random_mask(cfg, 0.3), out, command="c", mask_meta=META)
    assert tree_digest(out) == first
    resect.resect(tiny_ckpt, random_mask(cfg, 0.3, seed=9), out, force=True, command="c", mask_meta=META)
    assert tree_digest(out) != first
    for bad_out in (tiny_ckpt, tiny_ckpt / "inside", tiny_ckpt.parent):
        with pytest.raises(UsageError, match="overlap the base"):
            resect.resect(tiny_ckpt, m, bad_out, force=True, command="c", mask_meta=META)
    with pytest.raises(UsageError, match="another model"):
        resect.resect(tiny_ckpt, m, tmp_path / "o2", command="c", mask_meta={"model_fingerprint": "f" * 64})
    with pytest.raises(UsageError, match=r"\[8, 8\]"):
        resect.resect(
            tiny_ckpt, {0: torch.ones(4, 4, dtype=torch.bool)}, tmp_path / "o3", command="c", mask_meta={}
        )
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary left over
    assert tree_digest(tiny_ckpt) == before


def test_model_card_renders_the_eval_summary():
    from helpers import tiny_config

    record = {
        "base": {"source": "tiny", "fingerprint": "ab"},
        "counts": [3, 1],
        "total_experts": 128,
        "masked": 4,
        "fraction": 4 / 128,
        "command": "monet-edit run law.toml",
        "rule": "skew",
        "params": {"ratio": 2.0, "trials": []},
        "target": "law",
        "sources": {"law": {"tokens": 100}},
        "eval": {
            "target_loss_before": 3.0,
            "target_loss_after": 3.5,
            "selectivity": 12.5,
            "table": [{"metric": "law mcq", "before": 0.5, "after": 0.25}],
        },
    }
    card = modelcard.edited(record, tiny_config(), "resected-law")
    assert "| target_loss | 3 | 3.5 | 0.5 |" in card
    assert "| law mcq | 0.5 | 0.25 | -0.25 |" in card
    assert "- selectivity: 12.5" in card and "target_loss_before:" not in card
    assert "trials" not in card and "law, 100 tokens" in card


def test_resect_command_end_to_end(tiny_ckpt, tmp_path):
    out = tmp_path / "resected"
    res = cli(
        "resect",
        "--domain",
        "law",
        "--model",
        tiny_ckpt,
        "--tokens",
        "1500",
        "--seq-len",
        "32",
        "--ratio",
        "1.5",
        *sibling_references("law"),
        "--out",
        out,
        "--json",
    )
    assert res.code == 0, res.stderr
    data = json.loads(res.stdout)
    record = json.loads((out / "config.json").read_text())["monet_edit"]
    assert data["counts"] == record["counts"] and data["masked"] > 0
    assert record["command"].startswith("monet-edit resect --domain law") and record["params"] == {
        "ratio": 1.5
    }
    assert len(record["sources"]) == 14 and verify.manifest_mismatches(out) == []
    edited = load_model(out)
    assert sum(int(m.sum()) for m in edited.masks().values()) == data["masked"]
    again = cli("resect", "--domain", "law", "--model", tiny_ckpt, "--out", out)
    assert_clean_error(again, 2, "exists", "--force")


def test_resect_command_bad_input(tiny_ckpt, tiny_ckpt_vd, tmp_path, capsys):
    out = tmp_path / "out"
    cfg = checkpoint.load_config(tiny_ckpt)
    foreign = selection.write_mask(
        tmp_path / "vd.safetensors",
        random_mask(cfg, 0.1),
        cfg,
        rule="skew",
        params={},
        model_fingerprint=checkpoint.model_fingerprint(tiny_ckpt_vd),
        sources={},
    )
    assert_clean_error(
        run(capsys, "resect", "--mask", foreign, "--model", tiny_ckpt, "--out", out), 2, "another model"
    )
    big = tmp_path / "big.safetensors"
    masks.save(
        big, {0: torch.ones(16, 16, dtype=torch.bool)}, type(cfg)(**{**cfg.__dict__, "moe_experts": 16}), {}
    )
    assert_clean_error(run(capsys, "resect", "--mask", big, "--model", tiny_ckpt, "--out", out), 2, "[8, 8]")
    assert_clean_error(
        run(capsys, "resect", "--domain", "pyhton", "--model", tiny_ckpt, "--out", out), 2, "did you mean"
    )
    assert_clean_error(
        run(capsys, "resect", "--mask", foreign, "--domain", "law", "--model", tiny_ckpt), 2, "not both"
    )
    assert_clean_error(
        run(capsys, "resect", "--mask", tmp_path / "none.safetensors", "--model", tiny_ckpt, "--out", out),
        2,
        "not found",
    )
    assert not out.exists()


def test_resect_scale_writes_graded_interventions_end_to_end(tiny_ckpt, tmp_path, capsys):
    """--scale S: the selected experts' routing weights times S, stored as per-expert scales (no
    masks), recorded, verified, and computed by load_model as the naive E*E expansion does."""
    from naive_monet import naive_logits

    from monet_edit.model.checkpoint import SCALE_KEY

    cfg = checkpoint.load_config(tiny_ckpt)
    selected = random_mask(cfg, 0.3, seed=4)
    mask_file = masks.save(tmp_path / "sel.safetensors", selected, cfg, {"rule": "test"})
    before = {p.name: p.read_bytes() for p in tiny_ckpt.iterdir() if p.is_file()}
    sd = load_model(tiny_ckpt, dtype="float32").state_dict()
    ids = torch.randint(0, cfg.vocab_size, (1, 5), generator=torch.Generator().manual_seed(1))
    for scale in (0.5, 1.5):
        out = tmp_path / f"scaled-{scale}"
        res = run(capsys, "resect", "--mask", mask_file, "--model", tiny_ckpt, "--scale", scale, "--out", out,
                  "--json")
        assert res.code == 0, res.stderr
        record = json.loads((out / "config.json").read_text())["monet_edit"]
        assert record["intervention"] == {"kind": "scale", "scale": scale}
        assert record["scaled"] == [int(m.sum()) for m in selected.values()] and verify.manifest_mismatches(out) == []
        ckpt = checkpoint.of(out)
        assert ckpt.stored_masks == {} and sorted(ckpt.stored_scales) == sorted(selected)
        assert any(SCALE_KEY.match(n) for n in ckpt.infos)
        # the card and the report say what was done: scaled, by how much, how many experts
        verb = "attenuated" if scale < 1 else "amplified"
        assert f"by {scale:g} ({verb})" in (out / "README.md").read_text()
        from monet_edit.reporting import runs

        shown = runs.open_run(out).facts["intervention"]
        assert shown.startswith(f"graded: routing weights x {scale:g} ({verb})")
        assert f"{sum(record['scaled']):,} experts" in shown
        expected = {g: torch.where(m, scale, 1.0) for g, m in selected.items()}
        model = load_model(out, dtype="float32")
        assert all(torch.equal(model.scales()[g], expected[g]) for g in expected)
        with torch.no_grad():
            ours = model(ids).logits[0].double()
        ref = naive_logits(sd, cfg.to_dict(), ids[0].tolist(), scales=expected)
        plain = naive_logits(sd, cfg.to_dict(), ids[0].tolist())
        # fp32 against float64: a bound from the logits' own scale, far below the edit's effect
        tol = 64 * torch.finfo(torch.float32).eps * float(ref.abs().max())
        assert (ours - ref).abs().max().item() < tol < (ref - plain).abs().max().item()
    assert {p.name: p.read_bytes() for p in tiny_ckpt.iterdir() if p.is_file()} == before  # source untouched
    for bad, why in (("1", "changes nothing"), ("-0.5", "finite number >= 0"), ("nan", "finite number >= 0")):
        res = run(capsys, "resect", "--mask", mask_file, "--model", tiny_ckpt, "--scale", bad, "--out", tmp_path / "x")
        assert_clean_error(res, 2, why)
        assert not (tmp_path / "x").exists()
