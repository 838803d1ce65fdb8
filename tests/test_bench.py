"""`make bench` at tiny sizes, in process: every figure module runs and reports well-formed lines,
the runner writes JSON lines only, and the baselines compute the logits our model computes (each
figure checks that before it times anything). The full run is `make bench`, not a test."""

import json

import pytest
import torch

from bench import __main__ as runner
from bench import (
    baseline,
    common,
    cost,
    fidelity,
    forward,
    generate,
    memory,
    precision,
    profile,
    ranks,
    statistic,
    training,
)
from bench import upstream as upstream_mod
from monet_edit.errors import UsageError
from monet_edit.kernels import gathered
from monet_edit.model import precision as model_precision
from monet_edit.model.config import MonetConfig
from monet_edit.model.monet import MonetForCausalLM

QUICK = {"quick": common.QUICK}


def _well_formed(lines, figure):
    assert lines and all(line["figure"] == figure and line["ratio"] > 0 for line in lines)
    json.dumps(lines)  # machine-readable
    return lines


def test_forward_and_masked_figures():
    lines = list(forward.run(QUICK, (1,), repeats=1, peaks={1: 1e10}, batch=1, seq=16))
    fwd = _well_formed([x for x in lines if x["figure"] == "forward" and "bf16" not in x["name"]], "forward")
    low = [x for x in lines if x["figure"] == "forward" and "bf16" in x["name"]]
    masked = _well_formed([x for x in lines if x["figure"] == "masked"], "masked")
    assert len(fwd) == 2 and len(masked) == 4  # HD, VD; 2% and 15% each
    # where bf16 is native (load_model's CPU default there), both sides are also timed in bf16
    assert len(low) == (2 if model_precision.native_bf16() else 0)
    for line in low:
        assert line["ratio"] > 0 and line["vs_baseline_bf16"] > 0 and line["target"] is None
        assert set(line["tokens_per_s"]) == {"baseline", "baseline bf16", "ours bf16"}
    native = gathered.available()  # then ours is also timed with the torch grouped GEMMs
    for line in fwd:
        assert set(line["tokens_per_s"]) == {"baseline", "ours", "ours dense", "masked 2%", "masked 15%",
                                             *(["ours torch kernels"] if native else [])}
        assert (line["torch_kernels_speedup"] > 0) if native else line["torch_kernels_speedup"] is None
        assert 0 < line["routed_share"] <= 1 and line["max_logit_diff"] < 1e-3
        assert line["gflops"]["ours_executed"] <= line["gflops"]["ours_dense_equivalent"]
    assert {x["target"] for x in masked} == {"<= 1.05"}


def test_forward_refuses_to_time_a_baseline_that_disagrees():
    with pytest.raises(RuntimeError, match="logits differ"):
        list(forward.run(QUICK, (1,), 1, {1: 1e10}, batch=1, seq=8,
                         baseline_for=lambda model: (lambda ids: model(ids).logits + 1.0)))


def test_profile_cost_statistic_generate_figures():
    _well_formed(list(profile.run(QUICK, (1,), repeats=1, batch=1, seq=16)), "profile")
    lines = list(cost.run(QUICK, (1,), repeats=1, tokens=64))
    dtypes = {"float32", "bfloat16"} if model_precision.native_bf16() else {"float32"}
    assert len(lines) == 4 * len(dtypes) and all(x["chosen"] in ("dense", "routed") and x["ok"] is not None
                                                 for x in lines)
    assert {x["settled"] for x in lines} == {True, False} and {x["dtype"] for x in lines} == dtypes
    (line,) = statistic.run(experts=12, heads=2, topk=2, tokens=4, repeats=1)
    assert line["target"] == ">= 20"
    _well_formed(list(generate.run(QUICK, prompt=4, new=2, repeats=1)), "generate")


def test_precision_figure_without_corpora():
    peak, wide = precision.run((), 0, common.QUICK, repeats=1)
    assert peak["default"] in ("float32", "bfloat16") and peak["gflops"]["fp32"] > 0
    assert abs(wide["loss_delta"]) < 0.01 * wide["loss_fp32"]  # bf16 barely moves the loss
    assert 0 <= wide["routing_flips"] < 0.05 and wide["argmax_agreement"] > 0.9


def test_baseline_matches_our_model_masked_and_not():
    for decompose in ("horizontal", "vertical"):
        model = common.build(common.QUICK, decompose)
        ids = common.token_ids(model, 2, 12)
        for masks in (None, common.random_masks(model, 0.3)):
            model.set_masks(masks)
            with torch.no_grad():
                torch.testing.assert_close(baseline.forward(model, ids), model(ids).logits, atol=1e-4, rtol=1e-4)


def test_build_settles_routing_to_about_topk():
    model = common.build(common.QUICK, "horizontal")
    active = common.active_per_head(model, common.token_ids(model, 2, 32))
    assert 1 <= active <= 2 * model.config.moe_topk


def test_flops_count_matches_parameters():
    """Each weight counts twice per token (plus attention); embeddings excluded; experts scale."""
    cfg = MonetConfig(**common.QUICK, moe_decompose="horizontal").validate()
    model = MonetForCausalLM(cfg)
    skip = ("embed_tokens", "norm", "layernorm", ".bias", ".b", ".b1", ".b2", "running", "num_batches")
    weights = sum(p.numel() for n, p in model.state_dict().items() if not any(s in n for s in skip))
    attention = cfg.num_hidden_layers * 2 * 16 * cfg.hidden_size
    assert common.flops_per_token(cfg, seq=16) == 2 * weights + attention
    experts = cfg.num_hidden_layers * 2 * cfg.hidden_size * cfg.moe_experts * cfg.moe_dim
    assert common.flops_per_token(cfg, 16) - common.flops_per_token(cfg, 16, expert_share=0.25) == 2 * 0.75 * experts


STAND_IN = '''
"""A stand-in with the published file's interface (the real one needs transformers 4.46)."""
from types import SimpleNamespace
from monet_edit.model.config import MonetConfig as _Config
from monet_edit.model.monet import MonetForCausalLM as _Model


class MonetConfig:
    def __init__(self, use_cache=True, attn_implementation="sdpa", **fields):
        self.fields = fields


class MonetForCausalLM(_Model):
    def __init__(self, config):
        super().__init__(_Config(**config.fields).validate())

    def forward(self, input_ids, use_cache=None, output_router_probs=False):
        out = super().forward(input_ids, output_routing=output_router_probs)
        return SimpleNamespace(logits=out.logits.float(), router_probs=tuple(out.routing or ()))
'''


def test_upstream_runs_a_published_style_file_as_the_baseline(tmp_path):
    path = tmp_path / "modeling_monet.py"
    path.write_text(STAND_IN)
    module = upstream_mod.load_module(path)
    (line, *_) = fidelity.run(module, QUICK, (1,), repeats=1, batch=1, seq=8)
    assert line["max_logit_diff"] < 1e-4 and line["ratio"] > 0
    lines = list(profile.run(QUICK, (1,), 1, batch=1, seq=8,
                             baseline_for=lambda model: upstream_mod.forward_fn(module, model)))
    assert len(lines) == 2
    path.write_text("import transformers_4_46_only\n")
    with pytest.raises(UsageError, match="cannot import it here"):
        upstream_mod.load_module(path)
    with pytest.raises(UsageError, match="no such file"):
        upstream_mod.load_module(tmp_path / "missing.py")


def test_runner_writes_json_lines_only(tmp_path, capsys):
    out = tmp_path / "results.jsonl"
    assert runner.main(["--quick", "--threads", "1", "--out", str(out), "peak", "statistic", "gpu"]) == 0
    printed = capsys.readouterr().out.splitlines()
    lines = [json.loads(line) for line in printed]
    assert out.read_text().splitlines() == printed
    assert lines[0]["figure"] == "run" and lines[-1]["figure"] == "summary"
    assert [x["figure"] for x in lines[1:-1]] == ["peak", "statistic", "gpu"]
    assert lines[-1]["met"] + len(lines[-1]["missed"]) == 1  # the statistic's target


@pytest.mark.parametrize("argv, message", [(["nope"], "unknown figure"), (["fidelity"], "needs --upstream"),
                                           (["--threads", "0"], "at least 1")])
def test_runner_refuses_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        runner.parse(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_runner_upstream_error_is_one_line(tmp_path, capsys):
    assert runner.main(["--upstream", str(tmp_path / "none.py"), "--out", str(tmp_path / "r.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such file" in err[0]


@pytest.mark.slow  # two model-building subprocesses
def test_memory_figure_probes_in_subprocesses():
    (line,) = memory.run([512, 1024], quick=True)
    assert [p["tokens"] >= t for p, t in zip(line["probes"], (512, 1024), strict=True)] == [True, True]


@pytest.mark.slow  # two CLI runs, one under torchrun
def test_ranks_figure_reads_the_cli_json():
    (line,) = ranks.run(tokens=1024, seq=32, sources=("en",))
    assert line["ratio"] > 0 and set(line["wall_seconds"]) == {"1", "2"}


def test_training_figure_times_both_precisions_of_the_trainers_step():
    lines = _well_formed(list(training.run(training.QUICK_SHAPES, (1,), repeats=1, batch=2, seq=8)), "training")
    assert len(lines) == 1
    assert set(lines[0]["tokens_per_s"]) == {"fp32", "bf16"} and lines[0]["tokens_per_step"] == 16
    for fields in training.SHAPES.values():  # every shape weighed is a valid model
        MonetConfig(**fields).validate()
