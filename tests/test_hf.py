"""Hugging Face interop: every checkpoint we write loads with AutoModelForCausalLM (trust_remote_code)
through the Python files written beside it, and computes load_model's logits, masks included."""

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from helpers import random_mask, random_model, tiny_config, write_tokenizer

from monet_edit import load_model
from monet_edit.editing import resect, verify
from monet_edit.model import modelcard, remote_code
from monet_edit.model.checkpoint import packaged_dir
from monet_edit.model.generate import sample
from monet_edit.training import train as train_mod


@pytest.fixture(scope="module", autouse=True)
def _modules_cache(tmp_path_factory):
    """transformers copies remote code into a modules cache: a temporary one, never the user's."""
    from transformers import dynamic_module_utils

    if "transformers_modules" in sys.modules:  # already imported from another cache: keep that one
        yield
        return
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dynamic_module_utils, "HF_MODULES_CACHE", str(tmp_path_factory.mktemp("hf_modules")))
        yield


@pytest.fixture(autouse=True)
def _default_kernels(monkeypatch):
    """Exact comparisons: our side on its default (pure-torch on CPU) path, like the written files."""
    monkeypatch.delenv("MONET_EDIT_KERNELS", raising=False)
    monkeypatch.delenv("MONET_EDIT_SPARSE_TOKENS", raising=False)


def hf_model(directory: Path, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(directory), trust_remote_code=True, dtype=dtype)


def tokens(vocab: int, shape=(2, 12), seed: int = 0) -> torch.Tensor:
    return torch.randint(3, vocab, shape, generator=torch.Generator().manual_seed(seed))


def assert_same_logits(directory: Path, ids: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    ours = load_model(directory, dtype=dtype)
    theirs = hf_model(directory, dtype)
    with torch.no_grad():
        expected, got = ours(ids).logits, theirs(ids).logits
    assert got.dtype == expected.dtype
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6 if dtype == torch.float32 else 0)
    return expected


def assert_same_greedy(directory: Path, prompt: list[int], new: int = 6) -> None:
    """transformers' generate (with its DynamicCache) continues a prompt as our KV-cache sampler does."""
    ours = load_model(directory)
    eos = ours.config.eos_token_id
    expected = sample(ours, prompt, max_new_tokens=new, temperature=0, eos_id=eos)[0]
    out = hf_model(directory).generate(torch.tensor([prompt]), max_new_tokens=new, do_sample=False)
    got = out[0, len(prompt):].tolist()
    assert (got[: got.index(eos)] if eos in got else got) == expected


@pytest.mark.parametrize("fixture", ["tiny_ckpt", "tiny_ckpt_vd"])
def test_resected_checkpoint_loads_in_transformers_with_its_masks(fixture, request, tmp_path):
    base = request.getfixturevalue(fixture)
    cfg = load_model(base).config
    out = resect.resect(base, random_mask(cfg, 0.3), tmp_path / "out", command="c", mask_meta={})
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"] == remote_code.AUTO_MAP and config["monet_edit"]["masked"] > 0
    manifest = json.loads((out / "manifest.json").read_text())["files"]
    assert set(remote_code.FILES) <= set(manifest)
    assert verify.check(out)["problems"] == []
    assert "AutoModelForCausalLM" in (out / "README.md").read_text()  # the model card says how
    ids = tokens(cfg.vocab_size)
    masked = assert_same_logits(out, ids)
    with torch.no_grad():
        assert (masked - load_model(base)(ids).logits).abs().max() > 1e-3  # the masks really act
    assert_same_greedy(out, ids[0, :5].tolist())


def test_scaled_checkpoint_loads_in_transformers_with_its_scales(tiny_ckpt, tmp_path):
    cfg = load_model(tiny_ckpt).config
    selected = {0: random_mask(cfg, 0.3, seed=2)[0]}  # group 0 only
    out = resect.resect(tiny_ckpt, selected, tmp_path / "out", command="c", mask_meta={}, scale=0.25)
    assert json.loads((out / "config.json").read_text())["monet_edit"]["intervention"]["kind"] == "scale"
    ids = tokens(cfg.vocab_size)
    scaled = assert_same_logits(out, ids)
    with torch.no_grad():
        assert (scaled - load_model(tiny_ckpt, dtype="float32")(ids).logits).abs().max() > 1e-3  # scales act
    routers = hf_model(out, torch.bfloat16).model.routers()
    assert routers[0].expert_scale.dtype == torch.float32  # scales multiply fp32 routing weights
    assert routers[1].expert_scale is None  # an unedited group runs as before


def test_bf16_load_keeps_router_statistics_fp32(tiny_ckpt, tmp_path):
    cfg = load_model(tiny_ckpt).config
    out = resect.resect(tiny_ckpt, random_mask(cfg, 0.2), tmp_path / "out", command="c", mask_meta={})
    model = hf_model(out, torch.bfloat16)
    norm = model.model.routers()[0].norm1
    assert model.dtype == torch.bfloat16 and norm.running_var.dtype == torch.float32
    assert norm.num_batches_tracked.dtype == torch.int64
    assert_same_logits(out, tokens(cfg.vocab_size), torch.bfloat16)


def test_trained_checkpoint_loads_in_transformers(tmp_path, monkeypatch):
    vocab = write_tokenizer(tmp_path)
    model = random_model(tiny_config("vertical", vocab_size=vocab, bos_token_id=1, eos_token_id=2), seed=3)
    data = train_mod.TrainData(names=[], train=[], eval=[], weights=torch.ones(0),
                               tokenizer_path=tmp_path / "tokenizer.json", fingerprints={})
    monkeypatch.setattr(modelcard, "trained", lambda record: "card\n")
    out = train_mod.write_model(model, data, {"seed": 0}, tmp_path / "out", {}, False, {})
    assert json.loads((out / "config.json").read_text())["auto_map"] == remote_code.AUTO_MAP
    ids = tokens(vocab, seed=1)
    assert_same_logits(out, ids)
    assert_same_greedy(out, ids[1, :4].tolist())


def test_packaged_tiny_carries_the_current_remote_code():
    """models/tiny holds the files our source generates now (regenerate them when model/monet.py changes)."""
    tiny = packaged_dir("tiny")
    for name, text in remote_code.render().items():
        assert (tiny / name).read_text(encoding="utf-8") == text, (
            f"models/tiny/{name} is stale: run monet_edit.model.remote_code.write('monet_edit/models/tiny')")
    assert json.loads((tiny / "config.json").read_text())["auto_map"] == remote_code.AUTO_MAP
    assert_same_logits(tiny, tokens(512, (1, 16)))


def test_our_loader_never_runs_checkpoint_code(tiny_ckpt, tmp_path):
    cfg = load_model(tiny_ckpt).config
    out = resect.resect(tiny_ckpt, random_mask(cfg, 0.2), tmp_path / "out", command="c", mask_meta={})
    expected = load_model(out)(tokens(cfg.vocab_size)).logits
    for name in remote_code.FILES:
        (out / name).write_text("raise SystemExit('checkpoint code was executed')\n")
    assert torch.equal(load_model(out)(tokens(cfg.vocab_size)).logits, expected)


def test_generation_fails_loudly_when_the_source_imports_change(monkeypatch):
    changed = dict(remote_code.COPIES, **{"monet_model.py": ("model/monet.py", {"from .. import kernelz": "x"})})
    monkeypatch.setattr(remote_code, "COPIES", changed)
    with pytest.raises(RuntimeError, match="kernelz"):
        remote_code.render()
    leaky = {"monet_model.py": ("model/monet.py", {"from .. import kernels": "from monet_edit import kernels"})}
    monkeypatch.setattr(remote_code, "COPIES", leaky)
    with pytest.raises(RuntimeError, match="imports monet_edit"):
        remote_code.render()


def test_padding_and_unsupported_outputs_are_refused(tiny_ckpt, tmp_path):
    out = shutil.copytree(tiny_ckpt, tmp_path / "ckpt")
    remote_code.write(out)
    (out / "config.json").write_text(json.dumps(remote_code.with_auto_map(json.loads((out / "config.json").read_text()))))
    ids = tokens(64, (2, 5))
    model = hf_model(out)
    with pytest.raises(ValueError, match="padded"):
        model(ids, attention_mask=torch.tensor([[0, 1, 1, 1, 1], [1] * 5]))
    with pytest.raises(ValueError, match="output_hidden_states"):
        model(ids, output_hidden_states=True)
