"""lm-evaluation-harness tasks on Monet models (`monet-edit eval --lm-eval TASKS`).

lm-eval is an optional extra (`pip install 'monet-edit[lm-eval]'`), imported only here and only
when tasks are asked for. A task is an lm-eval task, group or tag name, a task YAML path, or a
task defined by a YAML under an include directory (YAMLs over local data files run offline).
lm-eval's built-in index (thousands of YAMLs, seconds to read) is read only when a name is not
found under the include directory. lm-eval's logging, warnings and progress bars are kept off our
stderr. Standard errors are not computed (bootstrap_iters=0: lm-eval's bootstrap forks a pool).
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..errors import UsageError

INSTALL = "pip install 'monet-edit[lm-eval]'"
NOISY_LOGGERS = ("lm_eval", "datasets", "huggingface_hub", "fsspec", "filelock")


def parse_tasks(text: str | None) -> tuple[str, ...]:
    """Comma-separated task names, deduplicated in order; () for None or blank."""
    return tuple(dict.fromkeys(t.strip() for t in (text or "").split(",") if t.strip()))


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """lm-eval, datasets and tqdm output swallowed (errors still propagate as exceptions)."""
    loggers = [logging.getLogger(name) for name in NOISY_LOGGERS]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR + 1)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)


def _require() -> None:
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise UsageError(f"--lm-eval needs lm-evaluation-harness, which is not installed: {INSTALL}") from None


@functools.lru_cache(maxsize=4)
def _manager(include: str | None, defaults: bool):
    from lm_eval.tasks import TaskManager

    with quiet():
        return TaskManager(include_path=include, include_defaults=defaults)


def _known(manager, name: str) -> bool:
    path = Path(name)
    return name in manager.all_tasks or (path.suffix in (".yaml", ".yml") and path.is_file())


def task_manager(tasks: Sequence[str], include: str | Path | None = None):
    """An lm-eval TaskManager that knows every name in `tasks` (cached per include directory);
    UsageError when lm-eval is missing, `include` is not a directory or a name is unknown."""
    _require()
    if not tasks:
        raise UsageError("--lm-eval: no task names given")
    folder = None
    if include is not None:
        if not Path(include).is_dir():
            raise UsageError(f"--lm-eval-include {include}: not a directory")
        folder = str(Path(include).resolve())
        manager = _manager(folder, False)
        if all(_known(manager, t) for t in tasks):
            return manager
    manager = _manager(folder, True)
    unknown = [t for t in tasks if not _known(manager, t)]
    if unknown:
        where = f" or under {include}" if include is not None else ""
        raise UsageError(f"--lm-eval: unknown task {unknown[0]!r} (not an lm-eval task, group or tag{where})")
    return manager


def _load(manager, tasks: Sequence[str], seed: int) -> dict:
    """The requested tasks and groups built (data loaded), zero-shot unless a task sets num_fewshot,
    as lm-eval's simple_evaluate sets them up; any failure is the user's config or data."""
    try:
        with quiet():
            loaded = manager.load(list(tasks))
    except Exception as exc:  # lm-eval and datasets raise anything from a bad YAML or data file
        raise UsageError(f"--lm-eval: cannot load {','.join(tasks)}: {type(exc).__name__}: {exc}"[:400]) from None
    for task in loaded["tasks"].values():
        if task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=seed)
    return loaded


def metrics(results: dict) -> dict[str, dict[str, float]]:
    """{task: {metric: value, "n": documents}} from lm-eval's evaluate results; a metric under a
    filter other than lm-eval's default ("none") keeps it as "metric,filter"."""
    out: dict[str, dict[str, float]] = {}
    for task, values in results["results"].items():
        row: dict[str, float] = {}
        for key, value in values.items():  # metrics are "metric,filter"; stderr is "N/A" here
            name, comma, filt = key.partition(",")
            if comma and isinstance(value, (int, float)) and not isinstance(value, bool):
                row[name if filt == "none" else key] = float(value)
        samples = results.get("n-samples", {}).get(task, {}).get("effective")
        if samples is not None:
            row["n"] = samples
        out[task] = row
    return out


def run_tasks(model, tokenizer, tasks: Sequence[str], *, include: str | Path | None = None,
              limit: int | None = None, batch_size: int = 8, seed: int = 0) -> dict[str, dict[str, float]]:
    """Per-task metrics of lm-eval's `tasks` on `model` as loaded (its masks applied), zero-shot
    unless a task says otherwise, at most `limit` documents per task."""
    manager = task_manager(tasks, include)
    from lm_eval.evaluator import evaluate

    from .harness_lm import MonetLM

    loaded = _load(manager, tasks, seed)
    with quiet():  # evaluate, not simple_evaluate: that one also collects pip/env info (seconds)
        results = evaluate(lm=MonetLM(model, tokenizer, batch_size=batch_size, seed=seed), task_dict=loaded,
                           limit=limit, bootstrap_iters=0, log_samples=False)
    return metrics(results)


def run(source: str | Path, tasks: Sequence[str], *, mask=None, device=None, **options) -> dict[str, dict[str, float]]:
    """`run_tasks` on a model source (directory, packaged name or Hub id) with `mask` applied on
    top of its own masks; options as for run_tasks."""
    from ..model.loading import load_model, load_tokenizer

    task_manager(tasks, options.get("include"))  # unknown names fail before the model loads
    return run_tasks(load_model(source, mask=mask, device=device), load_tokenizer(source), tasks, **options)
