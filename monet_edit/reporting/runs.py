"""What `monet-edit report RUN` can read, and the parts each kind of run provides.

A run is one of:
- a profile file (`profile`): routing statistics of one corpus; its reference corpora's profiles
  are picked up from the same directory when they exist (same model, tokens and row length);
- a mask file (`mask`): the selected experts, the rule, its parameters and the profiles it used;
- a resected checkpoint directory (`checkpoint`, also what `run RECIPE` writes): the edit record
  in config.json, edit-mask.safetensors and, when evaluated, eval/results.json;
- eval results (`eval`): a directory holding results.json, or the file itself; the edited
  checkpoint it names adds its masks when it is still there.
Anything else is a UsageError. Missing optional parts (a moved profile, a deleted checkpoint)
become notes on the page, never errors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..evaluation.results import RESULTS
from ..infra import provenance
from ..infra.provenance import RECORD_KEY
from ..model import masks as masks_mod
from ..model import modelcard

EXPECTED = ("expected a profile or mask file (.safetensors), a resected checkpoint directory, or eval "
            "results (a directory with results.json)")


@dataclass
class Run:
    """Everything a report may show; parts a run lacks stay None/empty."""

    path: Path
    kind: str  # profile | mask | checkpoint | eval
    target: str | None = None  # the target corpus: registered name or user corpus path
    model: str | None = None  # where to load the model from for top tokens
    rule: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    masks: dict | None = None  # {group: bool [E, E]}
    target_profile: Any = None  # profiling.Profile
    references: list = field(default_factory=list)
    results: dict | None = None  # eval results.json
    facts: dict[str, Any] = field(default_factory=dict)  # shown in the summary table
    inputs: dict[str, str] = field(default_factory=dict)  # input file -> sha256
    recorded: dict[str, dict] = field(default_factory=dict)  # what made each part: provenance records
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return run_name(self.path)

    def read(self, path: Path) -> None:
        """Record an input file (and its sha256) for the page's provenance."""
        self.inputs[str(path)] = provenance.sha256_file(path)


def run_name(path: Path) -> str:
    """A short name: the file name without extensions, or the directory holding results.json."""
    return (path.parent.name if path.name == RESULTS else path.name.split(".")[0]) or "run"


def open_run(path: str | Path) -> Run:
    """The run at `path` with every part that can be found."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: no such file or directory ({EXPECTED})")
    if path.is_dir():
        if (path / "config.json").is_file():
            return _checkpoint(path)
        if (path / RESULTS).is_file():
            return _eval(path / RESULTS)
    elif path.suffix == ".json":
        return _eval(path)
    elif path.suffix == ".safetensors":
        return _tagged(path)
    raise UsageError(f"{path}: not a run ({EXPECTED})")


# ---------------------------------------------------------------------------- kinds


def _tagged(path: Path) -> Run:
    from ..model.checkpoint import read_tagged
    from ..profiling import load

    tensors, _ = read_tagged(path, RECORD_KEY, "profile or mask file")
    if "S" in tensors:
        profile = load(path)
        run = Run(path, "profile", target=_corpus_ref(profile.meta), model=profile.meta.get("model"))
        run.read(path)
        run.target_profile = profile
        run.recorded["profile"] = profile.meta.get("provenance", {})
        run.references = _sibling_references(path, profile, run)
        run.facts.update(corpus=profile.meta.get("corpus"), tokens=profile.n, labelled=profile.labelled,
                         model=profile.meta.get("model"), model_fingerprint=profile.meta.get("model_fingerprint"),
                         references=", ".join(str(p.meta.get("corpus")) for p in run.references) or "none found")
        return run
    if tensors and all(masks_mod.KEY.match(k) for k in tensors):
        masks, meta = masks_mod.load(path)
        run = Run(path, "mask")
        run.read(path)
        _selection(run, masks, meta)
        return run
    raise UsageError(f"{path}: a safetensors file that is neither a monet-edit profile nor a mask file")


def _checkpoint(directory: Path, run: Run | None = None) -> Run:
    from ..editing.resect import MASK_FILE

    config_path = directory / "config.json"
    try:
        record = json.loads(config_path.read_text(encoding="utf-8")).get(RECORD_KEY)
    except (OSError, ValueError, AttributeError):
        raise UsageError(f"{config_path}: not a readable checkpoint config") from None
    if not isinstance(record, dict):
        raise UsageError(f"{directory}: a checkpoint without an edit record (not resected): {EXPECTED}")
    if run is None:
        run = Run(directory, "checkpoint")
        results = directory / "eval" / RESULTS
        if results.is_file():
            run.results = _read_results(results)
            run.read(results)
        else:
            run.notes.append(f"no {results} (run `monet-edit eval --model {directory}` for before/after bars)")
    run.read(config_path)
    mask_path = directory / MASK_FILE
    masks, meta = masks_mod.load(mask_path)
    run.read(mask_path)
    _selection(run, masks, dict(meta, **{k: record[k] for k in ("target", "rule", "params", "sources")
                                         if record.get(k) is not None}))
    run.model = str(directory)  # routing ignores masks: the checkpoint itself shows what its experts do
    base = record.get("base", {})
    run.facts.update(checkpoint=str(directory), base=base.get("source"), intervention=modelcard.intervention(record),
                     model_fingerprint=base.get("fingerprint"), command=record.get("command"))
    run.recorded["resect"] = record.get("provenance", {})
    return run


def _eval(path: Path) -> Run:
    run = Run(path, "eval", results=_read_results(path))
    run.read(path)
    res = run.results
    run.target = res["target"].get("name")
    run.recorded["eval"] = res.get("provenance", {})
    edited = res.get("edited", {})
    run.facts.update(base=res.get("base", {}).get("source"), edited=edited.get("source"),
                     model_fingerprint=edited.get("fingerprint"))
    directory = Path(str(edited.get("dir", "")))
    mask = edited.get("mask") or {}
    if edited.get("dir") and (directory / "config.json").is_file():
        try:
            _checkpoint(directory, run)
        except UsageError:  # an unedited model evaluated with --mask, or a damaged checkpoint
            run.model = str(directory)
    if mask.get("path") and Path(mask["path"]).is_file():
        masks, meta = masks_mod.load(mask["path"])
        run.read(Path(mask["path"]))
        _selection(run, masks, meta)
    elif run.masks is None:
        run.notes.append(f"the edited model {edited.get('source')} is not a resected checkpoint on this "
                         "machine: no masks to show")
    return run


def _read_results(path: Path) -> dict:
    try:
        res = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(res, dict) or not {"target", "loss", "summary", "edited"} <= set(res):
        raise UsageError(f"{path}: not monet-edit eval results (no target, loss, summary and edited)")
    return res


# ---------------------------------------------------------------------------- shared parts


def _selection(run: Run, masks: dict, meta: dict) -> None:
    """Masks, rule, parameters and the profiles the selection used (target identified by name)."""
    from ..profiling import load

    if run.masks is not None:  # a mask file applied on top of a resected checkpoint
        masks = {g: m | run.masks[g] if g in run.masks else m for g, m in masks.items()}
    run.masks = masks
    run.rule = meta.get("rule") or run.rule
    run.params = {k: v for k, v in (meta.get("params") or {}).items() if not isinstance(v, (list, dict))}
    run.target = meta.get("target") or run.target
    counts = [int(m.sum()) for _, m in sorted(masks.items())]
    run.facts.update(target=run.target, rule=run.rule, **{f"param {k}": v for k, v in run.params.items()},
                     masked=f"{sum(counts):,} ({', '.join(map(str, counts))} per group)")
    run.recorded["selection"] = meta.get("provenance", {})
    run.target_profile, run.references = None, []  # the last selection read names the profiles
    for name, source in (meta.get("sources") or {}).items():
        path = Path(str(source.get("profile", "")))
        if not path.is_file():
            run.notes.append(f"profile of {name} not found ({path}): specificity is not shown")
            run.target_profile, run.references = None, []
            return
        sha = provenance.sha256_file(path)
        if source.get("sha256") not in (None, sha):
            run.notes.append(f"profile of {name} changed since the selection ({path})")
        profile = load(path)
        run.inputs[str(path)] = sha
        if name == run.target or _corpus_ref(profile.meta) == run.target:
            run.target_profile = profile
        else:
            run.references.append(profile)
        run.model = run.model or profile.meta.get("model")


def _corpus_ref(meta: dict) -> str | None:
    return meta.get("corpus_ref") or meta.get("corpus")


def _sibling_references(path: Path, profile, run: Run) -> list:
    """The profiles of other corpora lying beside it, made with the same model, token budget and
    row length (as `monet-edit profile` writes a target's and its references' profiles)."""
    from ..profiling import load

    meta = profile.meta
    found = []
    for candidate in sorted(path.parent.glob("*.profile.safetensors")):
        if candidate.resolve() == path.resolve():
            continue
        try:
            other = load(candidate)
        except UsageError:
            continue  # another format or a damaged file: not a reference
        same = all(other.meta.get(k) == meta.get(k) for k in ("model_fingerprint", "tokens_requested", "seq_len"))
        if same and other.meta.get("corpus") != meta.get("corpus"):
            found.append(other)
            run.read(candidate)
    if not found:
        run.notes.append(f"no reference profiles found beside {path.name}: specificity shown as mean routing weight")
    return found
