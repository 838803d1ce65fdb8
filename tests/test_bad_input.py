"""The bad-input suite: every command, through the CLI entry point (in process).

Each case: exit code 1 or 2, exactly one line on stderr naming the file or value and the problem,
no traceback, and nothing written to the working directory.
"""

import json
import shutil

import pytest
import torch
from helpers import random_model, tiny_config, write_checkpoint
from safetensors.torch import save_file

from monet_edit import profiling
from monet_edit.cli import main


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_ckpt):
    """Broken and mismatched inputs, made once."""
    root = tmp_path_factory.mktemp("bad")
    w = {"ckpt": tiny_ckpt, "root": root}

    def broken(name, edit):
        path = root / name
        shutil.copytree(tiny_ckpt, path)
        edit(path)
        return path

    w["notjson"] = broken("notjson", lambda p: (p / "config.json").write_text("{oops"))
    w["nofields"] = broken("nofields", lambda p: (p / "config.json").write_text('{"model_type": "monet"}'))
    w["llama"] = broken("llama", lambda p: (p / "config.json").write_text(
        (p / "config.json").read_text().replace('"monet"', '"llama"')))
    w["truncated"] = broken("truncated", lambda p: (p / "model.safetensors").write_bytes(
        (p / "model.safetensors").read_bytes()[:5000]))

    def lie(p):
        raw = bytearray((p / "model.safetensors").read_bytes())
        raw[:8] = (len(raw) * 2).to_bytes(8, "little")
        (p / "model.safetensors").write_bytes(bytes(raw))

    w["lies"] = broken("lies", lie)

    def reshape(p):
        cfg = json.loads((p / "config.json").read_text())
        cfg["moe_dim"] = 8
        (p / "config.json").write_text(json.dumps(cfg))

    w["shapes"] = broken("shapes", reshape)
    w["noconfig"] = root / "noconfig"
    w["noconfig"].mkdir()
    w["file"] = root / "afile.txt"
    w["file"].write_text("x")
    w["empty"] = root / "empty.txt"
    w["empty"].write_text("")
    save_file({"group.0": torch.zeros(3, 3, dtype=torch.bool)}, str(root / "small-mask.safetensors"))
    w["small_mask"] = root / "small-mask.safetensors"
    w["garbage"] = root / "garbage.safetensors"
    w["garbage"].write_bytes(b"\x00\x01 garbage")
    E, G = 8, 2
    other = profiling.Profile(100, torch.rand(G, E, E, dtype=torch.float64),
                              meta={"model_fingerprint": "f" * 64, "corpus": "x"})
    w["other_profile"] = profiling.save(other, root / "other.profile.safetensors")
    nan = profiling.Profile(100, torch.full((G, E, E), float("nan"), dtype=torch.float64),
                            meta={"model_fingerprint": "f" * 64, "corpus": "x"})
    w["nan_profile"] = profiling.save(nan, root / "nan.profile.safetensors")
    big = random_model(tiny_config(moe_experts=16))
    w["other_model"] = write_checkpoint(big, root / "other_model")
    w["exists"] = root / "exists"
    w["exists"].mkdir()
    from monet_edit.editing import pipeline

    law = pipeline.find("law").read_text()
    for name, text in {
        "recipe_types": law.replace('name = "law"', "name = 3"),
        "recipe_unknown": law.replace('name = "law"', 'name = "law"\ncolour = 1'),
        "recipe_missing_section": law.replace("[select]", "[selectx]"),
        "train_unknown": '[train]\nname = "x"\nwhat = 1\n',
    }.items():
        (root / f"{name}.toml").write_text(text)
        w[name] = root / f"{name}.toml"
    return w


CASES = [
    # info / generate: checkpoints
    ("info missing dir", lambda w: ["info", w["root"] / "nope"], 2, "no such directory"),
    ("info file not dir", lambda w: ["info", w["file"]], 2, "not a checkpoint directory"),
    ("info no config", lambda w: ["info", w["noconfig"]], 2, "no config.json"),
    ("info config not json", lambda w: ["info", w["notjson"]], 2, "not valid JSON"),
    ("info config lacks fields", lambda w: ["info", w["nofields"]], 2, "missing required field"),
    ("info unknown model_type", lambda w: ["info", w["llama"]], 2, "model_type is 'llama'"),
    ("info truncated weights", lambda w: ["info", w["truncated"]], 2, "model.safetensors"),
    ("info header lies", lambda w: ["info", w["lies"]], 2, "corrupt safetensors header"),
    ("info wrong shapes", lambda w: ["info", w["shapes"]], 2, "has shape"),
    ("info hub id offline", lambda w: ["info", "NoSuchOrg/no-such-model"], 2, "NoSuchOrg/no-such-model"),
    ("generate mask wrong shape", lambda w: ["generate", w["ckpt"], "-p", "x", "--mask", w["small_mask"]], 2,
     "[8, 8]"),
    ("generate mask garbage", lambda w: ["generate", w["ckpt"], "-p", "x", "--mask", w["garbage"]], 2,
     "not a mask file"),
    ("generate mask missing", lambda w: ["generate", w["ckpt"], "-p", "x", "--mask", w["root"] / "no.st"], 2,
     "not found"),
    ("generate top-p", lambda w: ["generate", w["ckpt"], "-p", "x", "--top-p", "1.5"], 2, "top-p"),
    ("generate temperature", lambda w: ["generate", w["ckpt"], "-p", "x", "--temperature", "-1"], 2,
     "temperature"),
    ("generate too long", lambda w: ["generate", w["ckpt"], "-p", "x", "--max-new-tokens", "500"], 2,
     "positions"),
    # corpora
    ("corpora unknown", lambda w: ["corpora", "show", "lawz"], 2, "law"),
    ("corpora empty file", lambda w: ["corpora", "build", w["empty"]], 2, "empty"),
    # profile / mask / resect
    ("profile unknown domain", lambda w: ["profile", "--domain", "astrology", "--model", w["ckpt"]], 2,
     "astrology"),
    ("profile unknown language", lambda w: ["profile", "--language", "klingon", "--model", w["ckpt"]], 2,
     "klingon"),
    ("profile empty corpus", lambda w: ["profile", "--corpus", w["empty"], "--model", w["ckpt"]], 2, "empty"),
    ("mask profile for another model", lambda w: ["mask", "--profile", w["other_profile"], "--rule", "skew",
                                                  "--model", w["ckpt"]], 2, "another model"),
    ("mask nan profile", lambda w: ["mask", "--profile", w["nan_profile"], "--model", w["ckpt"]], 2, "NaN"),
    ("mask unknown rule", lambda w: ["mask", "--domain", "law", "--rule", "vibes", "--model", w["ckpt"]], 2,
     "vibes"),
    ("resect mask for another model", lambda w: ["resect", "--mask", w["small_mask"], "--model", w["ckpt"],
                                                 "--out", "o"], 2, "[8, 8]"),
    ("resect output exists", lambda w: ["resect", "--domain", "law", "--model", w["ckpt"], "--out",
                                        w["exists"]], 2, "exists"),
    ("resect into the base", lambda w: ["resect", "--domain", "law", "--model", w["ckpt"], "--out", w["ckpt"],
                                        "--force"], 2, "base"),
    # eval / run / train / verify
    ("eval gate does not parse", lambda w: ["eval", "--model", w["ckpt"], "--base", w["ckpt"], "--target", "law",
                                            "--gate", "selectivity>>3"], 2, "gate"),
    ("eval gate unknown metric", lambda w: ["eval", "--model", w["ckpt"], "--base", w["ckpt"], "--target", "law",
                                            "--gate", "happiness>=1"], 2, "happiness"),
    ("eval no base", lambda w: ["eval", "--model", w["ckpt"]], 2, "base"),
    ("eval unknown reference", lambda w: ["eval", "--model", w["ckpt"], "--base", w["ckpt"], "--target", "law",
                                          "--reference", "astrology"], 2, "astrology"),
    ("eval reference is the target", lambda w: ["eval", "--model", w["ckpt"], "--base", w["ckpt"], "--target",
                                                "law", "--reference", "law"], 2, "the target itself"),
    ("run recipe wrong type", lambda w: ["run", w["recipe_types"]], 2, "name"),
    ("run recipe unknown key", lambda w: ["run", w["recipe_unknown"]], 2, "colour"),
    ("run recipe missing section", lambda w: ["run", w["recipe_missing_section"]], 2, "[select"),
    ("run recipe missing", lambda w: ["run", w["root"] / "missing.toml"], 2, "missing.toml"),
    ("train recipe unknown key", lambda w: ["train", w["train_unknown"]], 2, "what"),
    ("verify missing dir", lambda w: ["verify", w["root"] / "nope"], 2, "not a directory"),
    # report / experts
    ("report missing run", lambda w: ["report", w["root"] / "nope"], 2, "no such file or directory"),
    ("report not a run", lambda w: ["report", w["file"]], 2, "not a run"),
    ("report plain checkpoint", lambda w: ["report", w["ckpt"]], 2, "without an edit record"),
    ("experts group out of range", lambda w: ["experts", w["ckpt"], "--group", "5", "--expert", "1,2"], 2,
     "--group 5"),
    ("experts bad expert", lambda w: ["experts", w["ckpt"], "--group", "0", "--expert", "1"], 2, "I,J"),
    ("experts expert out of range", lambda w: ["experts", w["ckpt"], "--group", "0", "--expert", "1,99"], 2,
     "out of range"),
    # distributed and lm-eval options
    ("profile nproc zero", lambda w: ["profile", "--domain", "law", "--model", w["ckpt"], "--nproc", "0"], 2,
     "--nproc"),
    ("eval nproc zero", lambda w: ["eval", "--model", w["ckpt"], "--base", w["ckpt"], "--target", "law",
                                   "--nproc", "0"], 2, "--nproc"),
    ("eval lm-eval limit alone", lambda w: ["eval", "--model", w["ckpt"], "--base", w["ckpt"], "--target", "law",
                                            "--lm-eval-limit", "3"], 2, "--lm-eval"),
]


@pytest.mark.parametrize("name,args,code,needle", CASES, ids=[c[0] for c in CASES])
def test_bad_input(world, tmp_path, monkeypatch, capsys, name, args, code, needle):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("COLUMNS", "300")
    got = main([str(a) for a in args(world)])
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert got == code, (got, err)
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert needle in lines[0], lines[0]
    assert list(cwd.iterdir()) == []


def test_suite_size():
    assert len(CASES) >= 30
