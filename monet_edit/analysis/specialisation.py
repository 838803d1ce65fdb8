"""How specialised a model's experts are: per corpus, the experts it uses at least RATIO times
more than any other corpus does and the share of its routing mass they carry; and routing health
(dead experts, distinct experts active per token). `monet-edit info --specialisation` and the
training report (model card) print it.

Mean usage is the mean routing weight G_ij per token of each corpus's tokens (as in profiles);
an expert no measured token activates is dead. Distinct active experts per token count the pairs
(i, j) with G_ij > 0, i.e. the union over heads of each head's k x k pairs, exactly.
"""

from __future__ import annotations

from typing import Any

RATIO = 2.0


def _distinct_pairs(g1, g2):
    """Per token, the number of distinct experts (i, j) some head activates. g: [N, H, E]."""
    import torch

    N, H, E = g1.shape
    k1 = int((g1 > 0).sum(-1).max())
    k2 = int((g2 > 0).sum(-1).max())
    v1, i1 = g1.topk(max(1, k1), dim=-1)
    v2, i2 = g2.topk(max(1, k2), dim=-1)
    ids = (i1[..., :, None] * E + i2[..., None, :]).reshape(N, -1)
    live = ((v1[..., :, None] > 0) & (v2[..., None, :] > 0)).reshape(N, -1)
    ids = torch.where(live, ids, torch.full_like(ids, -1)).sort(dim=1).values
    fresh = torch.ones_like(ids, dtype=torch.bool)
    fresh[:, 1:] = ids[:, 1:] != ids[:, :-1]
    return ((ids >= 0) & fresh).sum(1)


def measure(model, rows_by_corpus: dict[str, Any], batch_size: int = 8, ratio: float = RATIO) -> dict:
    """Specialisation and routing health of `model` over token rows [N, T] per corpus."""
    import torch

    from ..profiling.stats import group_stats, merge_all, stack_groups

    cfg = model.config
    device = next(model.parameters()).device
    usage: dict[str, torch.Tensor] = {}
    distinct, tokens = torch.zeros(cfg.num_groups, dtype=torch.float64), 0
    with torch.inference_mode():
        for name, rows in rows_by_corpus.items():
            parts = []
            for start in range(0, rows.shape[0], batch_size):
                ids = rows[start:start + batch_size].to(device)
                routing: list = []
                model.model(ids, routing=routing, routing_only=True)
                flat = [(g1.reshape(-1, *g1.shape[2:]).float(), g2.reshape(-1, *g2.shape[2:]).float())
                        for g1, g2 in routing]
                parts.append(stack_groups([group_stats(a, b, None) for a, b in flat]))
                for g, (a, b) in enumerate(flat):
                    distinct[g] += float(_distinct_pairs(a, b).sum())
                tokens += ids.numel()
            usage[name] = merge_all(parts).mean().cpu()
    groups, E2 = cfg.num_groups, cfg.moe_experts ** 2
    stacked = torch.stack(list(usage.values()))  # [corpora, groups, E, E]
    out: dict[str, Any] = {"ratio": ratio, "experts_per_group": E2, "per_corpus": {}}
    for c, name in enumerate(usage):
        others = torch.cat([stacked[:c], stacked[c + 1:]]).amax(0) if len(usage) > 1 else torch.zeros_like(stacked[c])
        special = (stacked[c] >= ratio * others) & (stacked[c] > 0)
        counts = special.reshape(groups, -1).sum(1)
        mass = (stacked[c] * special).reshape(groups, -1).sum(1) / stacked[c].reshape(groups, -1).sum(1)
        out["per_corpus"][name] = {"experts": [int(n) for n in counts],
                                   "fraction_of_group": [round(float(n) / E2, 5) for n in counts],
                                   "routing_mass": [round(float(m), 4) for m in mass]}
    used = (stacked > 0).any(0).reshape(groups, -1)
    out["routing"] = {"dead_experts": [int((~u).sum()) for u in used],
                      "fraction_experts_used": [round(float(u.float().mean()), 4) for u in used],
                      "distinct_experts_per_token": [round(float(d) / max(1, tokens), 2) for d in distinct],
                      "tokens": tokens}
    return out


def eval_rows(tokenizer, names: list[str], tokens: int, seq_len: int) -> dict[str, Any]:
    """Rows of each corpus's eval split (never seen by training or profiles)."""
    from ..corpora import open_corpus
    from ..model.scoring import rows, token_stream

    return {n: rows(token_stream(tokenizer, open_corpus(n).load("eval"), tokens), seq_len, n) for n in names}


def lines(report: dict) -> list[str]:
    """Markdown lines: a table per corpus and the routing health (for the model card)."""
    per = report["per_corpus"]
    out = [f"Experts used at least {report['ratio']:g}x more by a corpus than by any other corpus (per routing "
           f"group, of {report['experts_per_group']:,}), and the share of that corpus's routing mass they carry:",
           "", "| corpus | experts per group | % of a group | routing mass |", "|---|---|---|---|"]
    for name, v in sorted(per.items(), key=lambda kv: -sum(kv[1]["experts"])):
        out.append(f"| {name} | {' / '.join(map(str, v['experts']))} | "
                   f"{' / '.join(f'{100 * f:.2f}' for f in v['fraction_of_group'])} | "
                   f"{' / '.join(f'{m:.3f}' for m in v['routing_mass'])} |")
    r = report["routing"]
    out += ["", f"Routing health over {r['tokens']:,} eval tokens: dead experts per group {r['dead_experts']}, "
            f"fraction of experts used {r['fraction_experts_used']}, distinct experts active per token "
            f"{r['distinct_experts_per_token']}."]
    return out
