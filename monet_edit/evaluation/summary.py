"""The headline numbers of an evaluation (the gate metrics), from each suite's before/after entry.

Each suite turns its own entry into metrics (evaluation/suites); here they are joined with the
counts every evaluation reports. Non-finite values are written to JSON as null with a note.
"""

from __future__ import annotations

from . import suites


def summarise(target_name: str, entries: dict, masked: int, total: int) -> tuple[dict, list[str]]:
    """(summary, notes) of {suite: entry} (suites that did not run are absent)."""
    out: dict = {"experts_masked": masked, "fraction_masked": masked / total if total else 0.0}
    notes: list[str] = []
    for name, entry in entries.items():
        if entry:
            metrics, more = suites.get(name).summarise(target_name, entry)
            out.update(metrics)
            notes += more
    return out, notes
