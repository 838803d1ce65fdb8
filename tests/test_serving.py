"""Serving without vLLM: edit tensors (masks, scales) and `monet-edit serve`'s checks and errors.

The vLLM model itself is tested against monet_edit in tests/test_vllm.py (vLLM's environment).
"""

from __future__ import annotations

import pytest
import torch
from clirun import Result, assert_clean_error, cli
from safetensors.torch import load_file, save_file

from monet_edit import kernels
from monet_edit.errors import MonetEditError, UsageError
from monet_edit.serving import edits, launch


def routing(seed: int, N: int = 12, H: int = 2, E: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    sigma = kernels.routing_threshold(3, E)
    g = [kernels.route(torch.randn(N, H, E, generator=gen) * 3, torch.zeros(H), torch.ones(H), sigma)
         for _ in range(2)]
    return g[0], g[1]


def per_expert(token, i, j, weight) -> dict:
    out: dict = {}
    for n, a, b, w in zip(token.tolist(), i.tolist(), j.tolist(), weight.tolist(), strict=True):
        out[(n, a, b)] = out.get((n, a, b), 0.0) + w
    return out


def test_routing_delta_combines_masks_and_scales():
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[0, 1] = True
    scale = torch.ones(4, 4)
    scale[2, 3], scale[0, 1] = 0.5, 3.0
    assert edits.routing_delta(None, None) is None
    assert edits.routing_delta(torch.zeros(4, 4, dtype=torch.bool), torch.ones(4, 4)) is None
    d = edits.routing_delta(mask, scale)
    expected = torch.zeros(4, 4)
    expected[0, 1], expected[2, 3] = -1.0, -0.5  # masked wins over its scale
    assert torch.equal(d, expected)
    assert torch.equal(edits.routing_delta(mask, None), -mask.float())


def test_mask_hits_are_monet_edits_masked_pairs_negated():
    g1, g2 = routing(0)
    mask = torch.rand(8, 8, generator=torch.Generator().manual_seed(1)) < 0.3
    ref = kernels.masked_pairs(g1, g2, mask)
    n, h, a, b = ref.weight.nonzero(as_tuple=True)
    want = per_expert(n, ref.idx1[n, h, a], ref.idx2[n, h, b], -ref.weight[n, h, a, b])
    hits = edits.edited_hits(g1, g2, edits.routing_delta(mask, None))
    assert want and per_expert(*hits) == want


def test_scale_hits_weigh_each_active_edited_expert_by_its_change():
    g1, g2 = routing(2)
    scale = torch.ones(8, 8)
    scale[:, 3], scale[5, :] = 2.0, 0.25
    hits = edits.edited_hits(g1, g2, edits.routing_delta(None, scale))
    G = torch.einsum("nhi,nhj->nij", g1, g2)  # every composite weight (fine at E = 8)
    want = {(n, i, j): float(G[n, i, j] * (scale[i, j] - 1))
            for n, i, j in (G * (scale - 1)).nonzero().tolist()}
    got = per_expert(*hits)
    assert got.keys() == want.keys()
    assert all(abs(got[k] - want[k]) <= 1e-6 for k in want)


def test_no_active_edited_expert_means_no_hits():
    g = torch.zeros(5, 2, 8)
    g[..., :4] = 0.25  # only sub-experts 0-3 are active
    delta = torch.zeros(8, 8)
    delta[7, :], delta[:, 7] = -1.0, 2.0
    assert edits.edited_hits(g, g, delta) is None
    delta[3, 2] = -0.5
    hits = edits.edited_hits(g, g, delta)
    assert per_expert(*hits) == {(n, 3, 2): 2 * -0.5 * 0.25 * 0.25 for n in range(5)}


@pytest.mark.parametrize("name, tensor, message", [
    ("model.layers.1.router.expert_mask", torch.zeros(8, 8, dtype=torch.bool), "not the first layer"),
    ("model.layers.4.router.expert_scale", torch.ones(8, 8), "not the first layer"),
    ("model.layers.0.router.expert_mask", torch.zeros(8, 4, dtype=torch.bool), "expected [8, 8]"),
    ("model.layers.0.router.expert_mask", torch.zeros(8, 8), "must be bool"),
    ("model.layers.2.router.expert_scale", torch.full((8, 8), -1.0), "negative or non-finite"),
    ("model.layers.2.router.expert_scale", torch.full((8, 8), float("nan")), "negative or non-finite"),
    ("model.layers.0.router.expert_scale", torch.ones(8, 8, dtype=torch.int32), "must be a float"),
])
def test_bad_edit_tensors_are_named(name, tensor, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[")) as info:
        edits.check_edit(name, tensor, layers=4, group_size=2, experts=8)
    assert name in str(info.value)


def test_good_edit_tensors_name_their_routing_layer():
    assert edits.check_edit("model.layers.2.router.expert_scale", torch.ones(8, 8), 4, 2, 8) == 2


# ---- monet-edit serve -------------------------------------------------------------------------

@pytest.fixture
def scaled_ckpt(tiny_ckpt, tmp_path):
    import shutil

    out = tmp_path / "scaled"
    shutil.copytree(tiny_ckpt, out)
    tensors = load_file(str(out / "model.safetensors"))
    scale = torch.ones(8, 8)
    scale[1, 2] = 0.5
    tensors["model.layers.2.router.expert_scale"] = scale
    tensors["model.layers.0.router.expert_mask"] = torch.eye(8, dtype=torch.bool)
    save_file(tensors, str(out / "model.safetensors"))
    return out


def test_check_checkpoint_counts_edits(scaled_ckpt, tiny_ckpt):
    assert launch.check_checkpoint(scaled_ckpt) == {"masked": 8, "scaled": 1}
    assert launch.check_checkpoint(tiny_ckpt) == {"masked": 0, "scaled": 0}


def serve(capsys, *args) -> Result:
    """`monet-edit serve ARGS` through the CLI's entry point, in this process (no vLLM is reached:
    each case fails before the server would start)."""
    from monet_edit.cli import main

    code = main(["serve", *map(str, args)])
    out = capsys.readouterr()
    return Result(code, out.out, out.err)


def test_serve_refuses_a_bad_scale_tensor_in_one_line(scaled_ckpt, capsys):
    tensors = load_file(str(scaled_ckpt / "model.safetensors"))
    tensors["model.layers.2.router.expert_scale"][0, 0] = -2.0
    save_file(tensors, str(scaled_ckpt / "model.safetensors"))
    assert_clean_error(serve(capsys, scaled_ckpt), 2, "expert_scale", "negative")


def test_serve_refuses_a_checkpoint_that_is_not_monet(tmp_path, capsys):
    (tmp_path / "config.json").write_text('{"model_type": "llama", "architectures": ["LlamaForCausalLM"]}')
    assert_clean_error(serve(capsys, tmp_path), 2, "model_type is 'llama'")
    assert_clean_error(serve(capsys, tmp_path, "-tp", "x"), 2, "--tensor-parallel-size must be a positive integer")


def test_tensor_parallel_size_must_split_experts_and_heads(tiny_ckpt):
    assert launch.tensor_parallel_size(["--dtype", "float32"]) == 1
    assert launch.tensor_parallel_size(["-tp", "2"]) == launch.tensor_parallel_size(["--tensor-parallel-size=2"]) == 2
    with pytest.raises(UsageError, match="positive integer"):
        launch.tensor_parallel_size(["-tp", "two"])
    launch.check_checkpoint(tiny_ckpt, tp=4)  # 8 experts, 4 heads
    with pytest.raises(UsageError, match="tensor parallel size 3 must divide moe_experts"):
        launch.check_checkpoint(tiny_ckpt, tp=3)


def test_serve_without_vllm_is_one_line(tiny_ckpt, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(launch, "_here", lambda: False)  # as in an environment without vLLM
    monkeypatch.setenv(launch.ENV, str(tmp_path / "no-python"))
    assert_clean_error(serve(capsys, tiny_ckpt), 1, launch.ENV, "cannot import both vllm and monet_edit")


def test_vllm_python_explains_how_to_install(monkeypatch):
    monkeypatch.setattr(launch, "_here", lambda: False)
    monkeypatch.delenv(launch.ENV, raising=False)
    monkeypatch.setattr(launch, "SIBLING_VENV", ".no-such-venv")
    with pytest.raises(MonetEditError, match="vLLM is not installed: run `make install`"):
        launch.vllm_python()


def test_server_argv_passes_extra_flags_through(tiny_ckpt):
    argv = launch.server_argv("/py", tiny_ckpt, "tiny", "127.0.0.1", 8123, ["--dtype", "float32", "-tp", "2"])
    assert argv[:3] == ["/py", "-m", launch.SERVER]
    assert argv[3:] == ["--model", str(tiny_ckpt), "--host", "127.0.0.1", "--port", "8123",
                        "--served-model-name", "tiny", "--dtype", "float32", "-tp", "2"]
    named = launch.server_argv("/py", tiny_ckpt, "tiny", "::1", 1, ["--served-model-name=law"])
    assert named.count("--served-model-name=law") == 1 and "--served-model-name" not in named
    with pytest.raises(UsageError, match="MODEL argument"):
        launch.server_argv("/py", tiny_ckpt, "tiny", "::1", 1, ["--model", "other"])


def test_serve_help_lists_pass_through():
    res = cli("serve", "--help")
    assert res.code == 0 and "--tensor-parallel-size" in res.stdout
