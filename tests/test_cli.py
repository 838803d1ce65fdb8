"""The CLI end to end (subprocess): info, generate, --help speed, bad input."""

import json
import subprocess
import sys
import time

import pytest
from clirun import assert_clean_error, cli


def test_help_lists_commands_and_does_not_import_torch():
    code = ("import sys, time; t = time.perf_counter(); from monet_edit.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NOTORCH', time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"COLUMNS": "200"})
    assert "NOTORCH" in out.stdout
    start = time.perf_counter()
    res = cli("--help")
    assert res.code == 0
    assert time.perf_counter() - start < 5  # generous: a subprocess on a loaded CI machine
    for command in ("info", "generate"):
        assert command in res.stdout


def test_info_json(tiny_ckpt):
    res = cli("info", tiny_ckpt, "--json")
    assert res.code == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["decomposition"] == "horizontal"
    assert data["routing_groups"] == 2 and data["experts_per_group"] == 64
    assert data["masked_experts_per_group"] == [0, 0]
    assert len(data["weights_sha256"]) == 64 and data["parameters"] > 0


def test_info_human_on_stderr(tiny_ckpt_vd):
    res = cli("info", tiny_ckpt_vd)
    assert res.code == 0 and res.stdout == ""
    assert "vertical" in res.stderr


def test_generate_is_seeded(tiny_ckpt):
    a = cli("generate", tiny_ckpt, "--prompt", "def ", "--seed", "3", "--json", "--max-new-tokens", "8")
    b = cli("generate", tiny_ckpt, "--prompt", "def ", "--seed", "3", "--json", "--max-new-tokens", "8")
    assert a.code == 0, a.stderr
    assert json.loads(a.stdout) == json.loads(b.stdout)
    assert json.loads(a.stdout)["tokens"] >= 1
    greedy = cli("generate", tiny_ckpt, "-p", "The law", "--temperature", "0", "--max-new-tokens", "4")
    assert greedy.code == 0 and greedy.stdout.startswith("The law")


@pytest.mark.parametrize("args,needles", [
    (["info", "/nonexistent/model"], ["/nonexistent/model", "no such directory"]),
    (["generate", "/nonexistent/model", "-p", "x"], ["no such directory"]),
    (["info", "Some-Org/some-model"], ["Some-Org/some-model", "Hugging Face Hub"]),
])
def test_bad_input(args, needles):
    assert_clean_error(cli(*args), 2, *needles)


def test_bad_config_and_weights(tmp_path, tiny_ckpt):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_ckpt, bad)
    (bad / "config.json").write_text("[1, 2")
    assert_clean_error(cli("info", bad), 2, "config.json", "not valid JSON")
    shutil.copy(tiny_ckpt / "config.json", bad / "config.json")
    raw = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(raw[: len(raw) // 2])
    assert_clean_error(cli("info", bad), 2, "model.safetensors")


def test_bad_mask_and_options(tmp_path, tiny_ckpt):
    import torch
    from safetensors.torch import save_file

    save_file({"group.0": torch.zeros(3, 3, dtype=torch.bool)}, str(tmp_path / "m.safetensors"))
    assert_clean_error(cli("generate", tiny_ckpt, "-p", "x", "--mask", tmp_path / "m.safetensors"), 2,
                       "m.safetensors", "[8, 8]")
    assert_clean_error(cli("generate", tiny_ckpt, "-p", "x", "--top-p", "2"), 2, "top-p")
    res = cli("generate", tiny_ckpt)  # missing --prompt: a usage error from the parser
    assert res.code == 2 and "Traceback" not in res.stderr


def test_info_specialisation_json(tiny_ckpt):
    res = cli("info", tiny_ckpt, "--specialisation", "--tokens", "200", "--seq-len", "32", "--json")
    assert res.code == 0, res.stderr
    spec = json.loads(res.stdout)["specialisation"]
    assert {"law", "python", "de", "toxicity"} <= set(spec["per_corpus"]) and "general" not in spec["per_corpus"]
    for v in spec["per_corpus"].values():
        assert len(v["experts"]) == 2 and all(0 <= m <= 1 for m in v["routing_mass"])
    assert spec["routing"]["tokens"] > 0 and len(spec["routing"]["dead_experts"]) == 2
