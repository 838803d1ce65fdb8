"""Model cards (README.md) of the checkpoints monet-edit writes: an edited (resected) one from its
edit record, a trained one from its training record.

`eval_summary` (optional) is what `eval` reports: a flat dict whose `X_before` / `X_after` pairs
(and any `table` rows {"metric", "before", "after"}) become a before/after table with deltas;
the other scalars are listed below it.
"""

from __future__ import annotations

import json
from typing import Any


def _num(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:.4g}"


def _params(params: dict) -> str:
    shown = {k: v for k, v in params.items() if not isinstance(v, (list, dict))}
    return ", ".join(f"{k}={_num(v)}" for k, v in shown.items()) or "-"


def eval_section(summary: dict[str, Any]) -> list[str]:
    """Before/after rows from `table` entries and from every `X_before` / `X_after` pair of a flat
    summary (as `eval` writes it); the remaining scalars as a list."""
    rows = [(r.get("metric", ""), r.get("before"), r.get("after")) for r in summary.get("table") or []]
    paired = set()
    for key in sorted(summary):
        if key.endswith("_before") and (after := key[: -len("_before")] + "_after") in summary:
            rows.append((key[: -len("_before")], summary[key], summary[after]))
            paired |= {key, after}
    lines = ["## Evaluation (before / after)", ""]
    if rows:
        lines += ["| metric | before | after | delta |", "|---|---:|---:|---:|"]
        for metric, before, after in rows:
            numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (before, after))
            lines.append(
                f"| {metric} | {_num(before)} | {_num(after)} | {_num(after - before) if numbers else ''} |"
            )
        lines.append("")
    for key, value in sorted(summary.items()):
        if key != "table" and key not in paired and not isinstance(value, (list, dict)):
            lines.append(f"- {key}: {_num(value)}")
    return lines + [""]


def _verb(scale: float) -> str:
    return "masked" if scale == 0 else "attenuated" if scale < 1 else "amplified"


def intervention(record: dict[str, Any]) -> str:
    """What the edit does to the selected experts, in words (mask, or graded scale)."""
    kind = record.get("intervention") or {"kind": "mask"}
    if kind.get("kind") != "scale":
        return "mask: routing weights set to 0"
    scaled = record.get("scaled") or []
    return (f"graded: routing weights x {kind['scale']:g} ({_verb(kind['scale'])}), {sum(scaled):,} experts "
            f"({', '.join(map(str, scaled))} per group)")


def intervention_sentence(record: dict[str, Any], target: str) -> str:
    """The card's first sentence: how many experts the edit changed, and how."""
    total = record["total_experts"]
    kind = record.get("intervention") or {"kind": "mask"}
    if kind.get("kind") == "scale":
        scaled = sum(record.get("scaled") or [])
        return (f"A Monet model in which monet-edit scaled the routing weights of {scaled:,} of {total:,} experts "
                f"({scaled / total:.2%}) by {kind['scale']:g} ({_verb(kind['scale'])}) to change {target}. Every "
                "weight is the base model's, byte for byte; per-expert scales (one float32 [E, E] per routing "
                "group, 1 = unchanged) multiply the routing weights.")
    return (f"A Monet model with {record['masked']:,} of {total:,} experts ({record['fraction']:.2%}) masked by "
            f"monet-edit to remove {target}. Every weight is the base model's, byte for byte; the masks "
            "(one bool [E, E] per routing group) zero the routing weight of the masked experts.")


def edited(record: dict[str, Any], config, out_name: str) -> str:
    """Markdown for a checkpoint whose config.json carries `record` under `monet_edit`."""
    base = record["base"]
    counts = record["counts"]
    per_group = config.num_experts
    target = record.get("target") or "the target"
    lines = [
        "---",
        "library_name: monet-edit",
        f"base_model: {base['source']}",
        "tags: [monet, mixture-of-experts, knowledge-editing, expert-masking]",
        "---",
        "",
        f"# {out_name}",
        "",
        intervention_sentence(record, target),
        "",
        "## How it was made",
        "",
        "```bash",
        record["command"],
        "```",
        "",
        f"- Base model: `{base['source']}` (weights fingerprint `{base['fingerprint']}`)",
        f"- Rule: **{record['rule']}** ({_params(record.get('params', {}))})",
    ]
    for name, src in sorted((record.get("sources") or {}).items()):
        tokens = src.get("tokens") if isinstance(src, dict) else None
        lines.append(f"- Profile: {name}" + (f", {tokens:,} tokens" if tokens else ""))
    if "toxicity" in (record.get("sources") or {}):
        from ..corpora.labels import WEAK_NOTE

        lines.append(f"- Note: {WEAK_NOTE}")
    lines += [
        "",
        "## Masked experts",
        "",
        "| group | layers | masked | fraction of group |",
        "|---:|---|---:|---:|",
    ]
    for g, count in enumerate(counts):
        layers = config.group_layers(g)
        lines.append(f"| {g} | {layers.start}-{layers.stop - 1} | {count:,} | {count / per_group:.2%} |")
    lines += [f"| all | | {record['masked']:,} | {record['fraction']:.2%} |", ""]
    if record.get("eval"):
        lines += eval_section(record["eval"])
    lines += [
        "## Use",
        "",
        "```python",
        "from monet_edit import load_model",
        f'model = load_model("{out_name}")  # applies the masks',
        "```",
        "",
        "Without monet-edit, through the Python files in this directory (read them first: "
        "`trust_remote_code` runs them):",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM",
        f'model = AutoModelForCausalLM.from_pretrained("{out_name}", trust_remote_code=True, dtype="float32")',
        "```",
        "",
        "## Provenance",
        "",
        "```json",
        json.dumps(record.get("provenance", {}), indent=2, sort_keys=True),
        "```",
        "",
    ]
    return "\n".join(lines)


def trained(record: dict) -> str:
    """Model card (README.md) of a trained checkpoint: data, steps, tokens, held-out quality."""
    m, r = record["metrics"], record["recipe"]
    lines = [
        f"# {r['name']}: a small Monet trained by monet-edit",
        "",
        f"Trained with `monet-edit train` (recipe `{r['name']}`, seed {r['seed']}) from random initialisation on "
        "the embedded offline corpora (train splits only). It exists so every monet-edit command works offline; "
        "it is far too small to be a useful language model.",
        "",
        "## Architecture",
        "",
        "| field | value |", "|---|---|",
        *[f"| {k} | {v} |" for k, v in r["model"].items()],
        f"| vocab_size | {r['tokenizer']['vocab_size']} (byte-level BPE trained on the same data) |",
        f"| parameters | {record['parameters']:,} |",
        "",
        "## Training",
        "",
        f"- steps: {record['steps']}, batch {r['optim']['batch_size']} x {r['data']['seq_len']} tokens, "
        f"{record['tokens']:,} tokens in all",
        f"- AdamW lr {r['optim']['lr']} (warmup {r['optim']['warmup_steps']}, cosine to "
        f"{r['optim']['min_lr_ratio']}x), weight decay {r['optim']['weight_decay']}, clip {r['optim']['grad_clip']}, "
        f"auxiliary routing losses weight {r['optim']['aux_weight']}",
        f"- wall time: {record['train_seconds'] / 60:.1f} min on {record['threads']} CPU threads, compute in "
        f"{r['optim'].get('precision', 'fp32')} (weights, optimizer state and router statistics fp32; "
        "the shipped weights bf16)",
        f"- data: each corpus's train split up to {r['data']['max_train_chars']:,} characters, corpus c "
        f"sampled with probability ~ size_c ** {r['data']['mix_temperature']}",
        f"- corpora (fingerprints in training.json): {', '.join(sorted(record['corpora']))}; the out-of-source "
        "evaluation sets (NAME@oos) are never trained on",
        "- toxicity text is fortunes scored by a bag-of-words profanity classifier: weak labels",
        "",
        "## Held-out loss per corpus (eval splits, nats/token)",
        "",
        "| corpus | loss | unigram baseline | next-token accuracy |", "|---|---|---|---|",
        *[f"| {n} | {v['loss']:.3f} | {v['unigram_loss']:.3f} | {v['accuracy']:.3f} |"
          for n, v in m["per_corpus"].items()],
        "",
        "## Specialisation and routing health (eval splits)",
        "",
        *specialisation_lines(m),
        "",
        *previous_lines(record),
        f"Made by monet-edit {record['provenance']['version']} (git {record['provenance']['git_revision']}).",
        "",
    ]
    return "\n".join(lines)


def previous_lines(record: dict) -> list[str]:
    """Old vs new, side by side: the checkpoint this training run replaced, measured by the same
    code on the same held-out tokens (training.json `previous`)."""
    old = record.get("previous")
    if not old:
        return []
    rev = (old.get("provenance") or {}).get("git_revision", "?")
    lines = ["## Compared with the checkpoint it replaced", "",
             f"The previous checkpoint (git {rev}: {old.get('steps')} steps, {_num(old.get('tokens'))} tokens, "
             f"{(old.get('train_seconds') or 0) / 60:.1f} min on {old.get('threads')} threads) against this one "
             f"({record['steps']} steps, {record['tokens']:,} tokens, {record['train_seconds'] / 60:.1f} min on "
             f"{record['threads']} threads), measured now by the same code on the same held-out tokens.", ""]
    if not old.get("same_tokenizer") or "metrics" not in old:
        return lines + ["Its tokenizer differs, so per-token losses are not comparable and are not shown.", ""]
    was, now = old["metrics"], record["metrics"]
    spec_was, spec_now = was["specialisation"]["per_corpus"], now["specialisation"]["per_corpus"]
    lines += ["| corpus | loss before | loss now | change | specialised experts per group before | now |",
              "|---|---|---|---|---|---|"]
    for name, v in now["per_corpus"].items():
        if name not in was["per_corpus"]:
            continue
        before = was["per_corpus"][name]["loss"]
        lines.append(f"| {name} | {before:.3f} | {v['loss']:.3f} | {v['loss'] - before:+.3f} | "
                     f"{' / '.join(map(str, spec_was.get(name, {}).get('experts', [])))} | "
                     f"{' / '.join(map(str, spec_now[name]['experts']))} |")
    lines += [f"| mean | {was['mean_loss']:.3f} | {now['mean_loss']:.3f} | {now['mean_loss'] - was['mean_loss']:+.3f} "
              "| | |", ""]
    r_was, r_now = was["specialisation"]["routing"], now["specialisation"]["routing"]
    lines += [f"Routing health before / now: dead experts per group {r_was['dead_experts']} / {r_now['dead_experts']}, "
              f"distinct experts active per token {r_was['distinct_experts_per_token']} / "
              f"{r_now['distinct_experts_per_token']}.", ""]
    return lines


def specialisation_lines(metrics: dict) -> list[str]:
    """The specialisation table of a training record (older records: their routing summary)."""
    from ..analysis.specialisation import lines

    if "specialisation" in metrics:
        return lines(metrics["specialisation"])
    r = metrics.get("routing", {})
    return [f"- mean active experts per token (per group): {r.get('mean_active_experts_per_token')}"]
