"""What an evaluation will do, decided before any model is loaded: the target, its reference
corpora, the suites and their parameters. Everything here is cheap and raises UsageError, so bad
input fails before minutes of computation."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import UsageError
from ..model import checkpoint
from ..selection import targets
from ..selection.targets import Target

SUITES = ("loss", "mcq", "toxicity")
RECORD_KEY = "monet_edit"  # the edit record inside a resected checkpoint's config.json


def loss_corpora(target: Target) -> list[str]:
    """Corpora scored for loss: the target, its references (siblings of the same kind), then general."""
    return list(dict.fromkeys([*target.corpora, "general"]))


def default_suites(target: Target) -> tuple[str, ...]:
    return {"domain": ("loss", "mcq"), "toxicity": ("loss", "toxicity")}.get(target.kind, ("loss",))


@dataclass(frozen=True)
class EvalParams:
    """Every knob of an evaluation; recorded verbatim in the results."""

    suites: tuple[str, ...]
    tokens: int = 20_000  # eval tokens per corpus (loss suite)
    seq_len: int | None = None  # None: min(256, the model's positions)
    batch_size: int = 8
    mcq_items: int = 100  # questions per category (mcq suite)
    prompts: int = 25  # toxic and non-toxic prompts each (toxicity suite)
    samples: int = 5  # continuations per prompt
    max_new_tokens: int = 20
    seed: int = 0
    lm_eval: tuple[str, ...] = ()  # lm-evaluation-harness tasks (harness.py), run besides the suites
    lm_eval_include: str | None = None  # a directory of user task YAMLs
    lm_eval_limit: int | None = None  # documents per lm-eval task (None: all)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["suites"] = list(self.suites)
        out["lm_eval"] = list(self.lm_eval)
        return out


def target_from_name(name: str) -> Target:
    """The edit target named by a registered corpus (aliases accepted) or an existing corpus path."""
    from ..corpora import get_spec

    try:
        spec = get_spec(name)
    except UsageError:
        if Path(name).expanduser().exists():
            return targets.resolve(corpus=name)
        raise
    if spec.kind == "general":
        raise UsageError("general cannot be an edit target (it is the mixture every evaluation reports)")
    if spec.kind == "toxicity":
        return targets.resolve(toxicity=True)
    return targets.resolve(**{spec.kind: spec.name})


def parse_suites(text: str | None, target: Target) -> tuple[str, ...]:
    if text is None or not text.strip():
        return default_suites(target)
    suites = tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    for s in suites:
        if s not in SUITES:
            raise UsageError(f"--suite: unknown suite {s!r} (choose from {', '.join(SUITES)})")
    if "mcq" in suites and target.kind != "domain":
        raise UsageError(f"--suite mcq needs a domain target (multiple choice comes from the MMLU "
                         f"domains), not {target.kind} {target.name}")
    return suites


def check_params(params: EvalParams) -> None:
    for key in ("tokens", "batch_size", "mcq_items", "prompts", "samples", "max_new_tokens"):
        if getattr(params, key) < 1:
            raise UsageError(f"--{key.replace('_', '-')} must be at least 1, got {getattr(params, key)}")
    if params.seq_len is not None and params.seq_len < 2:
        raise UsageError(f"--seq-len must be at least 2, got {params.seq_len}")
    if params.lm_eval_limit is not None and params.lm_eval_limit < 1:
        raise UsageError(f"--lm-eval-limit must be at least 1, got {params.lm_eval_limit}")
    if (params.lm_eval_include is not None or params.lm_eval_limit is not None) and not params.lm_eval:
        raise UsageError("--lm-eval-include and --lm-eval-limit need --lm-eval TASKS")
    if params.lm_eval:  # not cheap (lm-eval indexes its tasks, seconds), but before minutes of scoring
        from .harness import task_manager

        task_manager(params.lm_eval, params.lm_eval_include)


def edit_record(directory: Path) -> dict | None:
    """The edit record of a resected checkpoint (config.json key `monet_edit`), or None."""
    try:
        data = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    record = data.get(RECORD_KEY) if isinstance(data, dict) else None
    return record if isinstance(record, dict) else None


def record_base(record: dict, where: Path) -> str:
    base = record.get("base")
    if isinstance(base, dict):  # resect records the source as given and its resolved path
        source, path = base.get("source"), base.get("path")
        base = source if source in checkpoint.PACKAGED or not (path and Path(path).is_dir()) else path
    if not isinstance(base, str) or not base:
        raise UsageError(f"{where}: the edit record has no base model; give --base")
    return base


def record_target(record: dict, where: Path) -> Target:
    target = record.get("target")
    name = target.get("name") if isinstance(target, dict) else target
    if not isinstance(name, str) or not name:
        raise UsageError(f"{where}: the edit record names no target; give --target")
    return target_from_name(name)
