"""`monet-edit train RECIPE`: train a Monet from scratch on the embedded corpora (monet-tiny).

AdamW with warmup + cosine decay, the paper's auxiliary routing losses (uniformity and
ambiguity, weight 1e-3), gradient clipping, periodic checkpoints with exact resume (the batch of
step s depends only on the seed and s), held-out loss per corpus against a unigram baseline,
routing health, and BatchNorm statistics settled on training data before the final save.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..analysis import specialisation
from ..errors import UsageError
from ..infra import atomic, locks, provenance, tomlconfig
from ..infra.console import err
from ..model import modelcard, writer
from ..model.config import MonetConfig

SCHEMA = {"train": {
    "name": str,
    "seed": (int, 0),
    "out": str,
    "run_dir": str,
    "model": {"hidden_size": int, "num_hidden_layers": int, "num_attention_heads": int,
              "moe_experts": int, "moe_dim": int, "moe_heads": int, "moe_topk": int, "moe_groups": int,
              "moe_decompose": str, "max_position_embeddings": (int, 512), "rope_theta": (float, 10000.0),
              "rms_norm_eps": (float, 1e-6), "initializer_range": (float, 0.02)},
    "tokenizer": {"vocab_size": int, "train_chars": (int, 8_000_000)},
    "data": {"corpora": (list, []), "mix_temperature": (float, 0.5), "seq_len": int,
             "eval_tokens": (int, 8192), "max_train_chars": (int, 4_000_000)},
    "optim": {"steps": int, "batch_size": int, "lr": float, "min_lr_ratio": (float, 0.1),
              "warmup_steps": int, "weight_decay": (float, 0.1), "beta1": (float, 0.9),
              "beta2": (float, 0.95), "grad_clip": (float, 1.0), "aux_weight": (float, 1e-3),
              "precision": (str, "fp32")},
    "checkpoint": {"every": (int, 100), "settle_batches": (int, 16), "log_every": (int, 10)},
}}


# Compute precision of the forward and backward: fp32, or bf16 autocast (weights, optimizer state and
# router statistics stay fp32; the routers score, normalise and threshold in fp32).
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read and validate a training recipe (top-level table [train])."""
    data = tomlconfig.read(path)
    if "train" not in data:
        raise UsageError(f"{path}: not a training recipe (no [train] table)")
    recipe = tomlconfig.validate(data, SCHEMA, str(path))["train"]
    for key in ("steps", "batch_size", "warmup_steps"):
        if recipe["optim"][key] < (0 if key == "warmup_steps" else 1):
            raise UsageError(f"{path}: optim.{key} must be positive, got {recipe['optim'][key]}")
    if recipe["optim"]["precision"] not in PRECISIONS:
        raise UsageError(f"{path}: optim.precision must be one of {', '.join(PRECISIONS)}, "
                         f"got {recipe['optim']['precision']!r}")
    if recipe["data"]["seq_len"] >= recipe["model"]["max_position_embeddings"]:
        raise UsageError(f"{path}: data.seq_len must be below model.max_position_embeddings")
    return recipe


# ---- data ----------------------------------------------------------------------------------------

@dataclass
class TrainData:
    names: list[str]
    train: list[np.ndarray]      # token ids per corpus (train split)
    eval: list[np.ndarray]       # token ids per corpus (eval split)
    weights: torch.Tensor        # sampling weight per corpus
    tokenizer_path: Path
    fingerprints: dict[str, str]


def _corpus_names(recipe: dict) -> list[str]:
    from .. import corpora

    names = recipe["data"]["corpora"] or [s.name for s in corpora.list_corpora() if s.kind != "general"]
    for name in names:
        corpora.get_spec(name)
    return names


def _docs_capped(docs: list[dict], limit: int) -> list[str]:
    out, total = [], 0
    for doc in docs:
        if total >= limit:
            break
        out.append(doc["text"])
        total += len(doc["text"])
    return out


def prepare_data(recipe: dict, run_dir: Path) -> TrainData:
    """Tokenizer and token arrays, cached in run_dir/data keyed by corpus fingerprints."""
    from .. import corpora

    names = _corpus_names(recipe)
    built = {n: corpora.build(n) for n in names}
    fingerprints = {n: b.fingerprint for n, b in built.items()}
    key = {"fingerprints": fingerprints, "vocab_size": recipe["tokenizer"]["vocab_size"],
           "train_chars": recipe["tokenizer"]["train_chars"], "max_train_chars": recipe["data"]["max_train_chars"]}
    data_dir = run_dir / "data"
    meta_path = data_dir / "meta.json"
    with locks.hold(data_dir, "preparing training data", say=err.print):
        _prepare(recipe, names, built, key, data_dir, meta_path)
    train = [np.load(data_dir / f"{n}.train.npy", allow_pickle=False) for n in names]
    evals = [np.load(data_dir / f"{n}.eval.npy", allow_pickle=False) for n in names]
    sizes = torch.tensor([float(len(t)) for t in train])
    weights = sizes.pow(recipe["data"]["mix_temperature"])
    return TrainData(names, train, evals, weights / weights.sum(), data_dir / "tokenizer.json", fingerprints)


def _prepare(recipe: dict, names: list[str], built: dict, key: dict, data_dir: Path, meta_path: Path) -> None:
    """Tokenizer and token arrays into data_dir, unless a matching preparation is there."""
    from tokenizers import Tokenizer

    from ..model.bpe import train_bpe

    if meta_path.exists() and json.loads(meta_path.read_text()) == key:
        return
    err.print(f"preparing data: {len(names)} corpora, training a {key['vocab_size']}-token BPE")
    train_texts = {n: _docs_capped(b.load("train"), recipe["data"]["max_train_chars"]) for n, b in built.items()}
    share = recipe["tokenizer"]["train_chars"] // len(names)
    sample = [t for n in names for t in _docs_capped([{"text": x} for x in train_texts[n]], share)]
    with atomic.output_dir(data_dir, force=True) as tmp:
        train_bpe(sample, recipe["tokenizer"]["vocab_size"], tmp / "tokenizer.json")
        tok = Tokenizer.from_file(str(tmp / "tokenizer.json"))
        for n, b in built.items():
            for split, texts in (("train", train_texts[n]), ("eval", [d["text"] for d in b.load("eval")])):
                ids: list[int] = []
                for enc in tok.encode_batch(texts, add_special_tokens=False):
                    ids.extend([1, *enc.ids, 2])
                np.save(tmp / f"{n}.{split}.npy", np.asarray(ids, dtype=np.int32), allow_pickle=False)
        (tmp / "meta.json").write_text(json.dumps(key, indent=1, sort_keys=True))



def batch(data: TrainData, seed: int, step: int, batch_size: int, seq_len: int) -> torch.Tensor:
    """Rows [B, seq_len + 1] for one step: a function of (seed, step) only, so resume is exact."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    which = torch.multinomial(data.weights, batch_size, replacement=True, generator=gen).tolist()
    rows = []
    for c in which:
        arr = data.train[c]
        start = int(torch.randint(0, len(arr) - seq_len - 1, (1,), generator=gen))
        rows.append(torch.from_numpy(arr[start:start + seq_len + 1].astype(np.int64)))
    return torch.stack(rows)


# ---- losses --------------------------------------------------------------------------------------

def aux_losses(routing: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Paper's L_unif (KL of batch-mean routing to uniform, per head and side) and L_amb (1 - max g)."""
    unif, amb = [], []
    for g1, g2 in routing:
        for g in (g1, g2):
            flat = g.reshape(-1, *g.shape[-2:])              # [tokens, H, E]
            p = flat.mean(0)                                 # [H, E]
            E = p.shape[-1]
            unif.append((p * torch.log(p * E + 1e-9)).sum(-1).mean())
            amb.append((1 - flat.amax(-1)).mean())
    return torch.stack(unif).mean(), torch.stack(amb).mean()


def lr_at(step: int, optim: dict) -> float:
    peak, warm, total = optim["lr"], optim["warmup_steps"], optim["steps"]
    if step < warm:
        return peak * (step + 1) / warm
    progress = min(1.0, (step - warm) / max(1, total - warm))
    low = peak * optim["min_lr_ratio"]
    return low + 0.5 * (peak - low) * (1 + math.cos(math.pi * progress))


def make_optimizer(model, optim: dict) -> torch.optim.Optimizer:
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    other = [p for n, p in model.named_parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": optim["weight_decay"]},
                              {"params": other, "weight_decay": 0.0}],
                             lr=optim["lr"], betas=(optim["beta1"], optim["beta2"]))


def train_step(model, opt: torch.optim.Optimizer, rows: torch.Tensor, optim: dict
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimiser step on rows [B, T+1] at optim["precision"]; returns (lm loss, L_unif, L_amb,
    gradient norm before clipping). The benchmarks time this same function."""
    dtype = PRECISIONS[optim["precision"]]
    with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        outp = model(rows[:, :-1], output_routing=True)
    lm = F.cross_entropy(outp.logits.float().reshape(-1, outp.logits.shape[-1]), rows[:, 1:].reshape(-1))
    unif, amb = aux_losses(outp.routing)
    loss = lm + optim["aux_weight"] * (unif + amb)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), optim["grad_clip"])
    opt.step()
    return lm, unif, amb, gnorm


# ---- state ---------------------------------------------------------------------------------------

def save_state(run_dir: Path, model, opt, step: int, extra: dict) -> None:
    """Checkpoint for exact resume (weights as safetensors, optimizer via torch.save)."""
    from safetensors.torch import save_file

    with atomic.output_dir(run_dir / "state", force=True) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
        torch.save(opt.state_dict(), tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps(dict(extra, step=step), indent=1))


def load_state(run_dir: Path, model, opt) -> dict:
    """Restore weights, optimizer and counters; optimizer loaded with weights_only (no pickle code)."""
    from safetensors.torch import load_file

    state_dir = run_dir / "state"
    model.load_state_dict(load_file(str(state_dir / "model.safetensors")))
    opt.load_state_dict(torch.load(state_dir / "optimizer.pt", weights_only=True))
    return json.loads((state_dir / "state.json").read_text())


# ---- evaluation and settling ---------------------------------------------------------------------

@torch.no_grad()
def settle_batchnorm(model, data: TrainData, seed: int, batches: int, batch_size: int, seq_len: int) -> None:
    """Recompute router BatchNorm statistics as exact averages over training batches (final weights)."""
    norms = [n for r in model.model.routers() for n in (r.norm1, r.norm2)]
    for n in norms:
        n.reset_running_stats()
        n.momentum = None  # cumulative average
    model.train()
    for i in range(batches):
        model(batch(data, seed + 7919, i, batch_size, seq_len)[:, :-1])
    for n in norms:
        n.momentum = 0.1
    model.eval()


def unigram_logprobs(train: np.ndarray, vocab: int) -> np.ndarray:
    """Log-probabilities of an add-one unigram model of the training tokens (the baseline)."""
    counts = np.bincount(train, minlength=vocab).astype(np.float64) + 1.0
    return np.log(counts / counts.sum())


@torch.no_grad()
def held_out_metrics(model, data: TrainData, seq_len: int, eval_tokens: int) -> dict[str, Any]:
    """Held-out loss per corpus vs a unigram baseline of all training tokens; specialisation and
    routing health on the same held-out tokens (analysis.specialisation)."""
    from ..model.scoring import loss_sums, rows

    model.eval()
    vocab = model.config.vocab_size
    unigram = unigram_logprobs(np.concatenate(data.train), vocab)  # once, not per corpus
    per_corpus: dict[str, dict] = {}
    held_out: dict[str, torch.Tensor] = {}
    for name, ev in zip(data.names, data.eval, strict=True):
        r = rows(ev[:eval_tokens].tolist(), seq_len, name)
        sums = loss_sums(model, r)
        per_corpus[name] = {"loss": round(sums.loss, 4), "accuracy": round(sums.accuracy, 4),
                            "unigram_loss": round(float(-unigram[ev[1:eval_tokens]].mean()), 4),
                            "tokens": sums.tokens}
        held_out[name] = r[:, :-1]
    return {
        "per_corpus": per_corpus,
        "mean_loss": round(float(np.mean([v["loss"] for v in per_corpus.values()])), 4),
        "specialisation": specialisation.measure(model, held_out),
    }


def previous_model(out_dir: Path, data: TrainData, seq_len: int, eval_tokens: int) -> dict[str, Any] | None:
    """The trained checkpoint this run replaces (at `out_dir`), measured now by the same code on the
    same held-out tokens, so that the new card shows old and new side by side. None when there is
    none; its losses are comparable only with the same tokenizer, which is recorded."""
    from tokenizers import Tokenizer

    from ..model.loading import load_model

    try:  # a missing or unreadable record is no reason to lose the run that replaces it
        old = json.loads((out_dir / "training.json").read_text())
    except (OSError, ValueError):
        return None
    same = (Tokenizer.from_file(str(out_dir / "tokenizer.json")).get_vocab()
            == Tokenizer.from_file(str(data.tokenizer_path)).get_vocab())
    summary = {k: old.get(k) for k in ("steps", "tokens", "train_seconds", "threads", "parameters")}
    summary.update(recipe=old.get("recipe"), provenance=old.get("provenance"), same_tokenizer=same)
    if same:
        err.print(f"measuring the checkpoint this run replaces ({out_dir}) on the same held-out tokens")
        summary["metrics"] = held_out_metrics(load_model(out_dir, dtype="fp32"), data, seq_len, eval_tokens)
    return summary


# ---- the run -------------------------------------------------------------------------------------

def write_model(model, data: TrainData, recipe: dict, out: Path, metrics: dict, force: bool,
                train_info: dict) -> Path:
    """Final checkpoint (model.writer): bf16 weights (router statistics in fp32), config.json,
    tokenizer.json, training.json, the model card and a manifest."""
    weights = {k: writer.raw_tensor(v.to(torch.bfloat16) if v.is_floating_point() and ".router.norm" not in k else v)
               for k, v in model.state_dict().items()}
    cfg = dict(model.config.to_dict(), torch_dtype="bfloat16")
    record = dict(train_info, metrics=metrics, recipe=recipe, corpora=data.fingerprints,
                  provenance=provenance.record(seed=recipe["seed"]))
    return writer.write_checkpoint(
        out, config=cfg, force=force, tokenizer=[data.tokenizer_path],
        weights=lambda path: writer.write_weights(path, {}, weights, {"format": "pt"}),
        files={"training.json": lambda path: path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")},
        card=lambda: modelcard.trained(record),
    )


def train(recipe_path: str | Path, *, out: str | None = None, run_dir: str | None = None, resume: bool = False,
          force: bool = False, steps: int | None = None, threads: int | None = None) -> dict[str, Any]:
    """Run a training recipe end to end; returns the final metrics."""
    from ..model.monet import MonetForCausalLM

    recipe = load_recipe(recipe_path)
    if steps is not None:
        recipe["optim"]["steps"] = steps
    out_dir = Path(out or recipe["out"])
    atomic.check_new_dir(out_dir, force)
    rdir = Path(run_dir or recipe["run_dir"])
    if threads:
        torch.set_num_threads(threads)
    data = prepare_data(recipe, rdir)
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(data.tokenizer_path)).get_vocab_size()
    cfg = MonetConfig(vocab_size=vocab, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                      **recipe["model"]).validate(str(recipe_path))
    torch.manual_seed(recipe["seed"])
    model = MonetForCausalLM(cfg).init_weights(recipe["seed"])
    opt = make_optimizer(model, recipe["optim"])
    optim, seq_len, seed = recipe["optim"], recipe["data"]["seq_len"], recipe["seed"]
    step, elapsed_before = 0, 0.0
    if resume and (rdir / "state" / "state.json").exists():
        state = load_state(rdir, model, opt)
        step, elapsed_before = state["step"], state.get("elapsed", 0.0)
        err.print(f"resuming {rdir} at step {step}")
    elif resume:
        err.print(f"nothing to resume in {rdir}: starting from step 0")
    log_path = rdir / "log.jsonl"
    rdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model.train()
    with log_path.open("a") as log:
        while step < optim["steps"]:
            lr = lr_at(step, optim)
            for group in opt.param_groups:
                group["lr"] = lr
            lm, unif, amb, gnorm = train_step(model, opt, batch(data, seed, step, optim["batch_size"], seq_len),
                                              optim)
            step += 1
            elapsed = elapsed_before + time.perf_counter() - t0
            if step % recipe["checkpoint"]["log_every"] == 0 or step == optim["steps"]:
                entry = {"step": step, "loss": round(lm.item(), 4), "unif": round(unif.item(), 4),
                         "amb": round(amb.item(), 4), "lr": lr, "grad_norm": round(float(gnorm), 3),
                         "tokens": step * optim["batch_size"] * seq_len, "elapsed": round(elapsed, 1)}
                log.write(json.dumps(entry) + "\n")
                log.flush()
                err.print(f"step {step}/{optim['steps']}  loss {entry['loss']:.3f}  lr {lr:.2e}  "
                          f"{entry['tokens'] / max(elapsed, 1e-9):.0f} tok/s")
            if step % recipe["checkpoint"]["every"] == 0 and step < optim["steps"]:
                save_state(rdir, model, opt, step, {"elapsed": elapsed})
    train_seconds = elapsed_before + time.perf_counter() - t0
    save_state(rdir, model, opt, step, {"elapsed": train_seconds})
    settle_batchnorm(model, data, seed, recipe["checkpoint"]["settle_batches"], optim["batch_size"], seq_len)
    metrics = held_out_metrics(model, data, seq_len, recipe["data"]["eval_tokens"])
    info = {"steps": step, "tokens": step * optim["batch_size"] * seq_len,
            "train_seconds": round(train_seconds, 1),
            "parameters": model.num_parameters(), "threads": torch.get_num_threads()}
    previous = previous_model(out_dir, data, seq_len, recipe["data"]["eval_tokens"]) if force else None
    if previous:
        info["previous"] = previous
    write_model(model, data, recipe, out_dir, metrics, force, info)
    err.print(f"wrote {out_dir}")
    return dict(info, metrics=metrics, out=str(out_dir))
