"""Opt-in Hugging Face Hub sources (`--source hub`), through `datasets`.

Only used when asked. Offline (or with HF_HUB_OFFLINE=1) they fail fast with one line that
names the dataset and suggests `--source local`.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from ..errors import MonetEditError, UsageError
from . import registry
from .registry import CorpusSpec

CONNECT_TIMEOUT_S = 5.0
HUB_MAX_DOCS = 20_000
CODE_LANG_DIRS = {
    "python": "python",
    "c": "c",
    "go": "go",
    "rust": "rust",
    "perl": "perl",
    "javascript": "javascript",
}


def dataset_for(spec: CorpusSpec) -> str:
    if spec.kind == "domain":
        return registry.HUB_DATASETS["domain"]
    if spec.kind == "toxicity":
        return registry.HUB_DATASETS["toxicity"]
    if spec.kind == "language" and spec.family == "code":
        return registry.HUB_DATASETS["code"]
    raise UsageError(f"corpus {spec.name} has no hub source; use --source local")


def _endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def check_reachable(dataset: str) -> None:
    """Fail with one line unless the Hub answers a TCP connect within a few seconds."""
    why = None
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on") or os.environ.get(
        "HF_DATASETS_OFFLINE", ""
    ).strip().lower() in ("1", "true", "yes", "on"):
        why = "HF_HUB_OFFLINE is set"
    else:
        url = urlparse(_endpoint())
        host = url.hostname or "huggingface.co"
        port = url.port or (443 if url.scheme != "http" else 80)
        try:
            with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
                pass
        except OSError as exc:
            why = f"{host}:{port}: {exc.strerror or str(exc) or exc.__class__.__name__}"
    if why is not None:
        raise MonetEditError(
            f"cannot reach the Hugging Face Hub to fetch {dataset}: {why}; use --source local"
        )


def _load(dataset: str, *args, **kwargs):
    check_reachable(dataset)
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "30")
    try:
        import datasets

        return datasets.load_dataset(dataset, *args, **kwargs)
    except Exception as exc:  # any hub/network/auth failure: one line
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise MonetEditError(
            f"cannot fetch {dataset} from the Hugging Face Hub: {msg}; use --source local"
        ) from None


def documents(spec: CorpusSpec) -> list[dict]:
    dataset = dataset_for(spec)
    if spec.kind == "domain":
        category = registry.DOMAINS[spec.name]
        mapping = registry.subject_to_category()
        ds = _load(dataset, "all", split="test")
        out = []
        counters: dict[str, int] = {}
        for row in ds:
            subject = str(row["subject"])
            if mapping.get(subject) != category:
                continue
            k = counters.get(subject, 0)
            counters[subject] = k + 1
            choices = [str(c) for c in row["choices"]]
            answer = int(row["answer"])
            letters = "ABCDEFGHIJ"
            question = str(row["question"]).strip()
            text = (
                question
                + "\n"
                + "\n".join(f"{letters[i]}. {c}" for i, c in enumerate(choices))
                + f"\nAnswer: {letters[answer]}. {choices[answer]}"
            )
            out.append(
                {
                    "id": f"{subject}:{k:04d}",
                    "text": text,
                    "question": question,
                    "choices": choices,
                    "answer": answer,
                    "subject": subject,
                }
            )
        return out
    if spec.kind == "toxicity":
        ds = _load(dataset, split="train", streaming=True)
        out = []
        for i, row in enumerate(ds):
            if i >= HUB_MAX_DOCS:
                break
            prompt = row.get("prompt") or {}
            cont = row.get("continuation") or {}
            text = f"{prompt.get('text', '')}{cont.get('text', '')}".strip()
            tox = prompt.get("toxicity")
            out.append({"id": f"rtp:{i:06d}", "text": text, "label": float(tox) if tox is not None else 0.0})
        return out
    # code
    ds = _load(dataset, data_dir=f"data/{CODE_LANG_DIRS[spec.name]}", split="train", streaming=True)
    out = []
    for i, row in enumerate(ds):
        if i >= HUB_MAX_DOCS:
            break
        out.append({"id": f"stack:{i:06d}", "text": str(row.get("content", ""))[:8192]})
    return out
