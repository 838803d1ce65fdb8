"""What an evaluation will do, decided before any model is loaded: the target, its reference
corpora, the suites and their parameters. Everything here is cheap and raises UsageError, so bad
input fails before minutes of computation."""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from ..infra.params import Param, at_least, by_name
from ..model import checkpoint
from ..selection import targets
from ..selection.targets import Target
from . import suites as suites_mod

COMMON = (  # knobs every suite shares; each suite declares its own in evaluation/suites
    Param("seq_len", int, None, "Tokens per row (default min(256, model positions)).", at_least(2),
          "at least 2", optional=True),
    Param("batch_size", int, 8, "Rows per forward pass.", at_least(1), "at least 1"),
    Param("seed", int, 0, "Seed for sampling (same for base and edited)."),
)


def all_params() -> dict[str, Param]:
    """Every evaluation knob by name: the common ones, then each registered suite's."""
    return by_name([*COMMON, *suites_mod.params().values()], "evaluation")


class EvalParams:
    """Every knob of an evaluation (the common ones and every suite's, defaults filled in), read as
    attributes; recorded verbatim in the results."""

    def __init__(self, suites: tuple[str, ...], *, lm_eval: tuple[str, ...] = (), lm_eval_include: str | None = None,
                 lm_eval_limit: int | None = None, **values) -> None:
        known = all_params()
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise TypeError(f"unknown evaluation parameter(s): {', '.join(unknown)}")
        self.suites = tuple(suites)
        self.lm_eval = tuple(lm_eval)  # lm-evaluation-harness tasks (harness.py), run besides the suites
        self.lm_eval_include = lm_eval_include  # a directory of user task YAMLs
        self.lm_eval_limit = lm_eval_limit  # documents per lm-eval task (None: all)
        self.values = {name: values.get(name, p.default) for name, p in known.items()}

    def __getattr__(self, name: str):
        values = self.__dict__.get("values", {})
        if name in values:
            return values[name]
        raise AttributeError(name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EvalParams) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"EvalParams({self.to_dict()})"

    def to_dict(self) -> dict:
        return {"suites": list(self.suites), **self.values, "lm_eval": list(self.lm_eval),
                "lm_eval_include": self.lm_eval_include, "lm_eval_limit": self.lm_eval_limit}


def target_from_name(name: str, references: list[str] | None = None) -> Target:
    """The edit target named by a registered corpus (aliases accepted) or an existing corpus path;
    compared with `references` if given, else with every other corpus."""
    from ..corpora import get_spec

    try:
        spec = get_spec(name)
    except UsageError:
        if Path(name).expanduser().exists():
            return targets.resolve(corpus=name, references=references)
        raise
    if spec.kind == "general":
        raise UsageError("general cannot be an edit target (it is the mixture every evaluation reports)")
    if spec.kind == "toxicity":
        return targets.resolve(toxicity=True, references=references)
    return targets.resolve(**{spec.kind: spec.name}, references=references)


def parse_suites(text: str | None, target: Target) -> tuple[str, ...]:
    if text is None or not text.strip():
        return suites_mod.defaults(target)
    names = tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    for name in names:
        why = suites_mod.get(name).requires(target)
        if why:
            raise UsageError(why)
    return names


def check_params(params: EvalParams) -> None:
    for name, p in all_params().items():
        p.validate(params.values[name])
    if params.lm_eval_limit is not None and params.lm_eval_limit < 1:
        raise UsageError(f"--lm-eval-limit must be at least 1, got {params.lm_eval_limit}")
    if (params.lm_eval_include is not None or params.lm_eval_limit is not None) and not params.lm_eval:
        raise UsageError("--lm-eval-include and --lm-eval-limit need --lm-eval TASKS")
    if params.lm_eval:  # not cheap (lm-eval indexes its tasks, seconds), but before minutes of scoring
        from .harness import task_manager

        task_manager(params.lm_eval, params.lm_eval_include)


def record_base(record: dict, where: Path) -> str:
    base = record.get("base")
    if isinstance(base, dict):  # resect records the source as given and its resolved path
        source, path = base.get("source"), base.get("path")
        base = source if source in checkpoint.PACKAGED or not (path and Path(path).is_dir()) else path
    if not isinstance(base, str) or not base:
        raise UsageError(f"{where}: the edit record has no base model; give --base")
    return base


def record_target(record: dict, where: Path, references: list[str] | None = None) -> Target:
    target = record.get("target")
    name = target.get("name") if isinstance(target, dict) else target
    if not isinstance(name, str) or not name:
        raise UsageError(f"{where}: the edit record names no target; give --target")
    return target_from_name(name, references)
