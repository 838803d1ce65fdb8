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
    (lambda t: t.replace("warmup_steps = 1", 'warmup_steps = 1\nprecision = "fp8"'), "optim.precision must be one of"),
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


def test_bf16_autocast_step_trains_in_bf16_and_keeps_fp32_state():
    """train_step under optim.precision = "bf16": the expert matmuls run in bf16 (gradients still
    reach every weight, stored in fp32), the routers' scores and statistics stay fp32, and the
    loss falls on a repeated batch like the fp32 step's does."""
    from monet_edit.model.config import MonetConfig
    from monet_edit.model.monet import MonetForCausalLM

    cfg = MonetConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, moe_experts=8,
                      moe_dim=4, moe_heads=2, moe_topk=2, moe_groups=1, moe_decompose="horizontal",
                      max_position_embeddings=64).validate()
    rows = torch.randint(0, 64, (4, 17), generator=torch.Generator().manual_seed(0))
    optim = dict(lr=1e-2, beta1=0.9, beta2=0.95, weight_decay=0.0, grad_clip=1.0, aux_weight=0.01)
    losses = {}
    for precision in ("fp32", "bf16"):
        model = MonetForCausalLM(cfg).init_weights(0).train()
        opt = train_mod.make_optimizer(model, optim)
        seen = []
        hook = model.model.layers[0].moe.u.register_forward_hook(lambda m, i, o, seen=seen: seen.append(o.dtype))
        losses[precision] = [train_mod.train_step(model, opt, rows, dict(optim, precision=precision))[0].item()
                             for _ in range(8)]
        hook.remove()
        assert seen[0] == (torch.bfloat16 if precision == "bf16" else torch.float32)
        assert all(p.dtype == torch.float32 for p in model.parameters())
        norm = model.model.routers()[0].norm1
        assert norm.running_mean.dtype == torch.float32 and norm.running_mean.abs().sum() > 0
    for precision, curve in losses.items():
        assert curve[-1] < curve[0] - 0.1, (precision, curve)
    # the same start: the first losses differ only by bf16 rounding of the logits
    assert abs(losses["bf16"][0] - losses["fp32"][0]) < 0.05 * losses["fp32"][0]


def test_retraining_over_a_checkpoint_compares_old_and_new_on_the_same_tokens(tmp_path):
    """`train --force` over a trained checkpoint measures the one it replaces with the same code on
    the same held-out tokens and the card shows both side by side."""
    path = write_recipe(tmp_path)
    first = train_mod.train(path)
    longer = path.read_text().replace("steps = 4", "steps = 8")
    path.write_text(longer)
    second = train_mod.train(path, force=True)
    record = json.loads((tmp_path / "out" / "training.json").read_text())
    old = record["previous"]
    assert old["steps"] == 4 and old["same_tokenizer"] and record["steps"] == 8
    # the old model re-measured now reproduces what its own run measured (same tokens, same code)
    for name, v in first["metrics"]["per_corpus"].items():
        assert abs(old["metrics"]["per_corpus"][name]["loss"] - v["loss"]) < 2**-7 * v["loss"], name  # bf16 weights
        assert second["metrics"]["per_corpus"][name]["loss"] != v["loss"]
    card = (tmp_path / "out" / "README.md").read_text()
    assert "Compared with the checkpoint it replaced" in card
    mean_row = next(line for line in card.splitlines() if line.startswith("| mean |"))
    assert f"{old['metrics']['mean_loss']:.3f}" in mean_row and f"{record['metrics']['mean_loss']:.3f}" in mean_row
