"""Training: recipe validation, aux losses, a real short run, exact resume, the tiny recipe."""

import json
from pathlib import Path

import pytest
import torch

from monet_edit import load_model
from monet_edit.errors import UsageError
from monet_edit.training import train as train_mod

RECIPE = """
[train]
name = "test"
seed = 1
out = "{out}"
run_dir = "{run}"
[train.model]
hidden_size = 32
num_hidden_layers = 2
num_attention_heads = 2
moe_experts = 8
moe_dim = 4
moe_heads = 2
moe_topk = 2
moe_groups = 1
moe_decompose = "vertical"
max_position_embeddings = 64
[train.tokenizer]
vocab_size = 300
train_chars = 60000
[train.data]
corpora = ["engineering", "chemistry"]
seq_len = 16
eval_tokens = 256
max_train_chars = 60000
[train.optim]
steps = 4
batch_size = 2
lr = 0.01
warmup_steps = 1
[train.checkpoint]
every = 2
settle_batches = 2
log_every = 1
"""


def write_recipe(tmp_path: Path, text: str = RECIPE, name: str = "r.toml") -> Path:
    path = tmp_path / name
    path.write_text(text.format(out=tmp_path / "out", run=tmp_path / "run"))
    return path


def test_packaged_tiny_recipe_validates():
    recipe = train_mod.load_recipe(Path(train_mod.__file__).parents[1] / "recipes" / "tiny.toml")
    assert recipe["model"]["moe_experts"] >= 64
    assert 8000 <= recipe["tokenizer"]["vocab_size"] <= 16384
    first = (Path(train_mod.__file__).parents[1] / "recipes" / "tiny.toml").read_text().splitlines()[0]
    assert first.startswith("# monet-edit train recipes/tiny.toml")


@pytest.mark.parametrize("edit,needle", [
    (lambda t: t.replace("seed = 1", "seed = 1\ncolour = 3"), "unknown key train.colour"),
    (lambda t: t.replace("steps = 4", 'steps = "four"'), "train.optim.steps must be an integer"),
    (lambda t: t.replace("vocab_size = 300\n", ""), "missing key train.tokenizer.vocab_size"),
    (lambda t: t.replace('moe_decompose = "vertical"', 'moe_decompose = "diagonal"'), "moe_decompose"),
    (lambda t: t.replace("[train.model]", "[train.model\n"), "not valid TOML"),
    (lambda t: t.replace('corpora = ["engineering", "chemistry"]', 'corpora = ["enginering"]'), "engineering"),
])
def test_bad_recipes(tmp_path, edit, needle):
    path = write_recipe(tmp_path, edit(RECIPE))
    with pytest.raises(UsageError) as exc:
        train_mod.train(path)
    assert needle in str(exc.value)
    assert not (tmp_path / "out").exists()


def test_aux_losses_match_definitions():
    uniform = torch.full((1, 4, 2, 8), 1 / 8)
    unif, amb = train_mod.aux_losses([(uniform, uniform)])
    assert abs(float(unif)) < 1e-6                      # batch mean is uniform: KL 0
    assert abs(float(amb) - (1 - 1 / 8)) < 1e-6        # max g = 1/8
    onehot = torch.zeros(1, 4, 2, 8)
    onehot[..., 0] = 1
    unif, amb = train_mod.aux_losses([(onehot, onehot)])
    assert abs(float(unif) - torch.log(torch.tensor(8.0))) < 1e-4   # collapsed: KL = log E
    assert abs(float(amb)) < 1e-6


def test_train_writes_a_loadable_model_with_card(tmp_path):
    result = train_mod.train(write_recipe(tmp_path))
    out = tmp_path / "out"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "README.md", "training.json"):
        assert (out / name).is_file()
    model = load_model(out)
    assert result["steps"] == 4 and result["tokens"] == 4 * 2 * 16
    assert model.config.moe_decompose == "vertical"
    card = (out / "README.md").read_text()
    assert "engineering" in card and "unigram baseline" in card
    metrics = json.loads((out / "training.json").read_text())["metrics"]
    assert set(metrics["per_corpus"]) == {"engineering", "chemistry"}
    spec = metrics["specialisation"]
    for g in spec["routing"]["fraction_experts_used"]:
        assert 0 < g <= 1
    assert set(spec["per_corpus"]) == {"engineering", "chemistry"} and "Specialisation" in card
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2, 3, 4]
    # BatchNorm statistics were settled: not the initial (0, 1)
    norm = model.model.routers()[0].norm1
    assert not torch.allclose(norm.running_var, torch.ones_like(norm.running_var))


def test_resume_is_exact(tmp_path, monkeypatch):
    straight = tmp_path / "a"
    straight.mkdir()
    train_mod.train(write_recipe(straight))
    interrupted = tmp_path / "b"
    interrupted.mkdir()
    path = write_recipe(interrupted)
    real_lr = train_mod.lr_at

    def crash_at_step_3(step, optim):
        if step == 3:
            raise KeyboardInterrupt
        return real_lr(step, optim)

    monkeypatch.setattr(train_mod, "lr_at", crash_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        train_mod.train(path)
    assert not (interrupted / "out").exists()
    state = json.loads((interrupted / "run" / "state" / "state.json").read_text())
    assert state["step"] == 2
    monkeypatch.setattr(train_mod, "lr_at", real_lr)
    train_mod.train(path, resume=True)
    from safetensors.torch import load_file

    a = load_file(str(straight / "run" / "state" / "model.safetensors"))
    b = load_file(str(interrupted / "run" / "state" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_existing_output_needs_force(tmp_path):
    path = write_recipe(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(UsageError, match="--force"):
        train_mod.train(path)
    assert (tmp_path / "out" / "keep.txt").read_text() == "x"
