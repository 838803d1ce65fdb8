"""vLLM serves Monet checkpoints as monet-edit computes them (CPU, one rank).

Runs in vLLM's own environment (`make test` runs this module with .venv-vllm's Python; the main
environment deselects the `vllm` marker). Each engine start costs tens of seconds, so every model
gets one engine (a module fixture that queries it once and shuts it down) and every test compares
those answers with monet_edit's own greedy generation and log-probabilities:
tiny, an edited tiny (masked, then graded: experts attenuated and amplified, all by `resect`)
served over HTTP by `monet-edit serve`, and random HD (grouped-query attention) and VD (masked,
sharded) checkpoints. The tensor-parallel expert
layers are checked at sizes 1, 2 and 4 with ranks simulated as threads (no engine).

Tolerances: vLLM and monet_edit compute in fp32 with different kernels (attention, norms, fused
matmuls), so log-probs agree up to reassociation error, bounded here by 1000 fp32 epsilons times
the largest logit. Greedy tokens must be equal; they may part only where our two best tokens are
that close (a tie), and the comparison stops there.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.vllm
if os.environ.get("MONET_EDIT_VLLM_TESTS") != "1":  # the main environment has no vLLM
    pytest.importorskip("vllm")

from helpers import write_tiny_checkpoint  # noqa: E402

from monet_edit import kernels  # noqa: E402
from monet_edit.model.generate import sample  # noqa: E402
from monet_edit.model.loading import load_model, load_tokenizer  # noqa: E402

# engines start in module fixtures, before conftest's per-test environment: offline from the start
os.environ.update(HF_HUB_OFFLINE="1", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1")

NEW_TOKENS = 24
PROMPTS = ["def main():\n    return", "The law of the land", "Der Hund ist"]
ENGINE = dict(dtype="float32", max_model_len=256, kv_cache_memory_bytes=64 << 20, enforce_eager=True, seed=0)
# random checkpoints: vLLM's CPU attention needs head_dim 64
RANDOM = dict(hidden_size=128, num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256)
SERVER_START_S = 600


def tolerance(logits: torch.Tensor) -> float:
    return 1000 * torch.finfo(torch.float32).eps * float(logits.abs().max())


# ---- what vLLM answers ------------------------------------------------------------------------

def run_engine(model_dir: Path, prompts: list[list[int]]) -> dict:
    """One engine on model_dir: greedy continuations (ids, log-probs) and prompt log-probs."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(str(model_dir), **ENGINE)
    try:
        inputs = [TokensPrompt(prompt_token_ids=ids) for ids in prompts]
        greedy = llm.generate(inputs, SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True,
                                                     logprobs=0), use_tqdm=False)
        scored = llm.generate(inputs, SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=0),
                              use_tqdm=False)
    finally:
        llm.llm_engine.engine_core.shutdown()
    out = {"tokens": [], "logprobs": [], "prompt_logprobs": []}
    for g, s, ids in zip(greedy, scored, prompts, strict=True):
        c = g.outputs[0]
        out["tokens"].append(list(c.token_ids))
        out["logprobs"].append([lp[t].logprob for lp, t in zip(c.logprobs, c.token_ids, strict=True)])
        out["prompt_logprobs"].append([lp[t].logprob for lp, t in zip(s.prompt_logprobs[1:], ids[1:], strict=True)])
    return out


# ---- what monet_edit computes -----------------------------------------------------------------

class Reference:
    """monet_edit's greedy continuation (its own generation: KV cache, sparse decode path) and
    log-probs for one checkpoint, with whatever masks and scales it stores (load_model applies them
    as the naive E*E expansion does: tests/test_resect.py)."""

    def __init__(self, model_dir: Path) -> None:
        self.model = load_model(model_dir)

    @torch.inference_mode()
    def logits(self, ids: list[int]) -> torch.Tensor:
        return self.model(torch.tensor([ids])).logits[0]

    def greedy(self, ids: list[int]) -> list[int]:
        return sample(self.model, ids, max_new_tokens=NEW_TOKENS, temperature=0)[0]


def assert_same_greedy(ref: Reference, prompt: list[int], tokens: list[int], logprobs: list[float]) -> None:
    ours = ref.greedy(prompt)
    assert len(tokens) == len(ours) == NEW_TOKENS
    logits = ref.logits(prompt + tokens)[len(prompt) - 1:-1]
    lp = torch.log_softmax(logits.double(), -1)
    tol = tolerance(logits)
    upto = next((t for t in range(NEW_TOKENS) if ours[t] != tokens[t]), NEW_TOKENS)
    for t in range(min(upto + 1, NEW_TOKENS)):
        assert abs(float(lp[t, tokens[t]]) - logprobs[t]) <= tol, (t, float(lp[t, tokens[t]]), logprobs[t], tol)
    if upto < NEW_TOKENS:  # parted: only a tie of our two best tokens may explain it
        gap = float(lp[upto, ours[upto]] - lp[upto, tokens[upto]])
        assert gap <= 2 * tol, f"token {upto}: vLLM {tokens[upto]}, ours {ours[upto]} (log-prob gap {gap:.2e})"


def prompt_logprobs(ref: Reference, ids: list[int]) -> list[float]:
    lp = torch.log_softmax(ref.logits(ids).double(), -1)
    return [float(lp[t - 1, ids[t]]) for t in range(1, len(ids))]


# ---- checkpoints and engines ------------------------------------------------------------------

@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("vllm")


@pytest.fixture(scope="module")
def tiny_prompts() -> list[list[int]]:
    tok = load_tokenizer("tiny")
    return [tok.encode(p) for p in PROMPTS]


def tiny_masks() -> dict[int, torch.Tensor]:
    """5% of each group's experts, seeded: enough that the prompts route through some of them."""
    gen = torch.Generator().manual_seed(3)
    return {g: torch.rand(128, 128, generator=gen) < 0.05 for g in range(2)}


def tiny_scale_selections() -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Group 0 only: 3% of the experts to attenuate, another 3% to amplify (seeded)."""
    r = torch.rand(128, 128, generator=torch.Generator().manual_seed(4))
    return {0: r < 0.03}, {0: (r >= 0.03) & (r < 0.06)}


@pytest.fixture(scope="module")
def tiny_dir() -> Path:
    from monet_edit.model.checkpoint import resolve

    return resolve("tiny")


@pytest.fixture(scope="module")
def masked_dir(work, tiny_dir) -> Path:
    """A resected tiny, written by monet-edit's own resect."""
    from monet_edit.editing.resect import resect

    return resect(tiny_dir, tiny_masks(), work / "resected-tiny", command="test_vllm", mask_meta={})


@pytest.fixture(scope="module")
def edited_dir(work, masked_dir) -> Path:
    """Graded edits on top of the resected tiny, by resect --scale twice (x0.5 then x2): masks and
    scales in the one checkpoint the server serves."""
    from monet_edit.editing.resect import resect

    half, double = tiny_scale_selections()
    halved = resect(masked_dir, half, work / "halved-tiny", command="test_vllm", mask_meta={}, scale=0.5)
    return resect(halved, double, work / "edited-tiny", command="test_vllm", mask_meta={}, scale=2.0)


@pytest.fixture(scope="module")
def hd_dir(work) -> Path:
    return write_tiny_checkpoint(work / "hd", "horizontal", seed=5, **RANDOM)


@pytest.fixture(scope="module")
def vd_dir(work) -> Path:
    """Masked, and sharded as the published checkpoints are (model-0000N-of-00002 + index)."""
    from safetensors.torch import load_file, save_file

    gen = torch.Generator().manual_seed(6)
    masks = {g: torch.rand(8, 8, generator=gen) < 0.2 for g in range(2)}
    out = write_tiny_checkpoint(work / "vd", "vertical", seed=6, masks=masks, **RANDOM)
    tensors = load_file(str(out / "model.safetensors"))
    names = sorted(tensors)
    shards = {f"model-0000{k + 1}-of-00002.safetensors": names[k::2] for k in range(2)}
    for file, part in shards.items():
        save_file({n: tensors[n] for n in part}, str(out / file), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {n: f for f, part in shards.items() for n in part}}
    (out / "model.safetensors.index.json").write_text(json.dumps(index))
    (out / "model.safetensors").unlink()
    return out


def random_prompts(model_dir: Path) -> list[list[int]]:
    tok = load_tokenizer(model_dir)
    return [tok.encode(p) for p in PROMPTS]


@pytest.fixture(scope="module")
def tiny_vllm(tiny_dir, tiny_prompts) -> dict:
    return run_engine(tiny_dir, tiny_prompts)


# ---- parity -----------------------------------------------------------------------------------

def check_engine(ref: Reference, prompts: list[list[int]], answers: dict) -> None:
    for i, ids in enumerate(prompts):
        assert_same_greedy(ref, ids, answers["tokens"][i], answers["logprobs"][i])
        ours = prompt_logprobs(ref, ids)
        tol = tolerance(ref.logits(ids))
        assert max(abs(a - b) for a, b in zip(ours, answers["prompt_logprobs"][i], strict=True)) <= tol


def test_tiny_greedy_and_logprobs_match_monet_edit(tiny_dir, tiny_prompts, tiny_vllm):
    check_engine(Reference(tiny_dir), tiny_prompts, tiny_vllm)


@pytest.mark.parametrize("kind", ["hd", "vd"])
def test_random_checkpoints_match_monet_edit(kind, request):
    model_dir = request.getfixturevalue(f"{kind}_dir")
    prompts = random_prompts(model_dir)
    check_engine(Reference(model_dir), prompts, run_engine(model_dir, prompts))


# ---- the OpenAI server on an edited checkpoint ------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def server(edited_dir, work):
    """`monet-edit serve` on the edited tiny, on loopback; stopped (its process group) at the end."""
    port = _free_port()
    log = open(work / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "monet_edit", "serve", str(edited_dir), "--port", str(port),
                             "--served-model-name", "resected-tiny", "--dtype", "float32", "--max-model-len", "256",
                             "--kv-cache-memory-bytes", str(64 << 20)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}: {(work / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{base}/v1/models", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not up after {SERVER_START_S} s")
            time.sleep(1)
        yield base
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def test_served_edited_checkpoint_answers_completions_like_monet_edit(server, edited_dir, tiny_prompts):
    ref, tok = Reference(edited_dir), load_tokenizer(edited_dir)
    models = json.loads(urllib.request.urlopen(f"{server}/v1/models", timeout=30).read())
    assert [m["id"] for m in models["data"]] == ["resected-tiny"]
    for text, ids in zip(PROMPTS, tiny_prompts, strict=True):
        body = _post(f"{server}/v1/completions", {
            "model": "resected-tiny", "prompt": text, "max_tokens": NEW_TOKENS, "temperature": 0,
            "ignore_eos": True, "logprobs": 0, "return_tokens_as_token_ids": True})
        choice = body["choices"][0]
        assert body["usage"]["prompt_tokens"] == len(ids)  # the server tokenizes as we do (BOS first)
        tokens = [int(t.removeprefix("token_id:")) for t in choice["logprobs"]["tokens"]]
        assert_same_greedy(ref, ids, tokens, choice["logprobs"]["token_logprobs"])
        assert choice["text"] == tok.decode(tokens)
        if tokens == ref.greedy(ids):
            assert choice["text"] == tok.decode(ref.greedy(ids))


def test_edits_move_served_logprobs_where_they_move_ours(server, edited_dir, masked_dir, tiny_dir, tiny_prompts,
                                                         tiny_vllm):
    ours_base, ours_edited = Reference(tiny_dir), Reference(edited_dir)
    masks_only = Reference(masked_dir)
    moved = graded = 0
    for i, ids in enumerate(tiny_prompts):
        body = _post(f"{server}/v1/completions", {"model": "resected-tiny", "prompt": ids, "max_tokens": 1,
                                                  "temperature": 0, "prompt_logprobs": 0})
        served = [entry[str(t)]["logprob"] for entry, t in zip(body["choices"][0]["prompt_logprobs"][1:], ids[1:],
                                                                strict=True)]
        ours = [m - b for m, b in zip(prompt_logprobs(ours_edited, ids), prompt_logprobs(ours_base, ids), strict=True)]
        theirs = [m - b for m, b in zip(served, tiny_vllm["prompt_logprobs"][i], strict=True)]
        tol = 2 * tolerance(ours_base.logits(ids))
        for t, (o, s) in enumerate(zip(ours, theirs, strict=True)):
            assert abs(o - s) <= tol, (i, t, o, s, tol)
        moved += sum(abs(o) > 10 * tol for o in ours)
        graded += sum(abs(a - b) > 10 * tol for a, b in zip(prompt_logprobs(ours_edited, ids),
                                                            prompt_logprobs(masks_only, ids), strict=True))
    # the edits change the model where these prompts route, and the scales on their own do too, so
    # matching the served log-probs checks masks and scales (the check is not vacuous)
    assert moved >= 3 and graded >= 3


# ---- tensor parallelism, simulated: ranks as threads of one process -------------------------------

class ThreadRanks:
    """`size` tensor-parallel ranks as threads: rank lookups are per thread and all-reduce sums
    every rank's tensor (in rank order) once all have arrived."""

    def __init__(self, size: int) -> None:
        import threading

        self.size, self.local, self.lock = size, threading.local(), threading.Lock()
        self.barrier, self.parts = threading.Barrier(size), {}

    def rank(self) -> int:
        return getattr(self.local, "rank", 0)

    def world(self) -> int:
        return self.size

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        with self.lock:
            self.parts[self.rank()] = x.clone()
        self.barrier.wait()
        total = sum(self.parts[r] for r in range(self.size))
        self.barrier.wait()
        return total

    def run(self, fn) -> list:
        import threading

        out: list = [None] * self.size
        errors: list = []

        def body(r: int) -> None:
            self.local.rank = r
            try:
                out[r] = fn()
            except BaseException as exc:  # reported below; a dead rank would hang the others
                errors.append(exc)
                self.barrier.abort()

        threads = [threading.Thread(target=body, args=(r,)) for r in range(self.size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return out


def install_ranks(monkeypatch, ranks: ThreadRanks) -> None:
    from monet_edit.serving import experts

    for name, mod in list(sys.modules.items()):
        if name.startswith(("vllm", "monet_edit")) and hasattr(mod, "get_tensor_model_parallel_rank"):
            monkeypatch.setattr(mod, "get_tensor_model_parallel_rank", ranks.rank, raising=False)
            monkeypatch.setattr(mod, "get_tensor_model_parallel_world_size", ranks.world, raising=False)
    monkeypatch.setattr(experts, "tensor_model_parallel_all_reduce", ranks.all_reduce)


def serving_layer(config, state: dict):
    """A serving expert layer of this thread's rank, its shard of `state` loaded as vLLM loads it."""
    from monet_edit.serving.experts import MonetHDExperts, MonetVDExperts
    from monet_edit.serving.model import STACKED

    layer = (MonetHDExperts if config.moe_decompose == "horizontal" else MonetVDExperts)(config, "moe")
    params = dict(layer.named_parameters())
    for name, tensor in state.items():
        target, shard = ".moe." + name, None  # as it is named inside a decoder layer
        for old, new, shard_id in STACKED:
            if old in target:
                target, shard = target.replace(old, new), shard_id
        param = params[target.removeprefix(".moe.")]
        param.weight_loader(param, tensor, *(() if shard is None else (shard,)))
    for module in layer.modules():
        if hasattr(module, "quant_method"):
            # plain torch matmuls instead of vLLM's packed CPU GEMMs (oneDNN handlers), which, run
            # from several threads of one process at once, intermittently returned wrong sums (real
            # ranks are processes); the sharding, edited-pair and reduction logic under test is ours
            module.cpu_linear = torch.nn.functional.linear
    return layer


@pytest.mark.parametrize("decompose", ["horizontal", "vertical"])
@pytest.mark.parametrize("tp", [1, 2, 4])
@torch.inference_mode()
def test_tensor_parallel_expert_layers_match_monet_edit(decompose, tp, monkeypatch):
    from helpers import random_model, tiny_config

    from monet_edit.serving import edits

    config = tiny_config(decompose, moe_experts=8, moe_heads=2, moe_topk=3)
    model = random_model(config, seed=7)
    layer0 = model.model.layers[0]
    state = {k.removeprefix("moe."): v for k, v in layer0.state_dict().items() if k.startswith("moe.")}
    x = torch.randn(10, config.hidden_size, generator=torch.Generator().manual_seed(8))
    g1, g2 = layer0.router(x)
    # edits whose two sub-experts sit on different ranks (0-1 | 2-3 | 4-5 | 6-7 at tp = 4)
    scale = torch.ones(8, 8)
    scale[1, 6], scale[6, 1], scale[3, 4] = 0.0, 2.5, 0.5
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[0, 7] = mask[5, 5] = True
    hits = edits.edited_hits(g1, g2, edits.routing_delta(mask, scale))
    assert hits is not None
    if tp > 1:  # the cross-rank path is exercised: some active edited pair straddles two ranks
        assert bool((hits.i // (8 // tp) != hits.j // (8 // tp)).any())
    # monet_edit: masked forward (kernels.masked_pairs) plus the scales by linearity: a layer's output is
    # linear in G_ij, so scaling the experts S_v by v adds (1 - v) * (out_masked(S_v) - out_full)
    full = layer0.moe(x, g1, g2, None)
    want = full + (layer0.moe(x, g1, g2, kernels.masked_pairs(g1, g2, mask | (scale == 0))) - full)
    for v in (2.5, 0.5):
        want = want + (1 - v) * (layer0.moe(x, g1, g2, kernels.masked_pairs(g1, g2, (scale == v) & ~mask)) - full)
    ranks = ThreadRanks(tp)
    install_ranks(monkeypatch, ranks)
    outs = ranks.run(lambda: serving_layer(config, state)(x, g1, g2, hits))
    tol = tolerance(want)
    for out in outs:
        assert (out - want).abs().max() <= tol
