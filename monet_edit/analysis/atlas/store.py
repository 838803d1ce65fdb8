"""The atlas on disk: what `atlas build` writes and `atlas serve` reads.

A directory of four files (format 1):

- `atlas.json`: model (source, fingerprint, shape, masked experts), corpora (name, fingerprint,
  first row, rows, tokens), build parameters, each data file's size and sha256, provenance.
- `text.safetensors`: `ids` int32 [rows, seq_len], the scanned tokens (contexts are decoded from
  them), and `row_corpus` int32 [rows], the corpus of each row.
- `experts.safetensors`: per group g and expert e = i*E + j, `top_weight` float32 [G, E*E, K] and
  `top_position` [G, E*E, K] (flat index row*seq_len + t into `ids`, -1 for an empty slot), best
  first; `active` int32 [G, E*E, C], the tokens of corpus c with G_e > 0 (density = active /
  tokens), and `usage` float32 [G, E*E, C], sum of G_e over corpus c's tokens.
- `index.safetensors`: the top-k occurrences by token id, CSR: `offsets` int64 [V+1] and
  `entries` [M], flat indices into `top_weight` (search by token and word).
- `tokenizer/`: the model's tokenizer file and config.json, so that the atlas shows its contexts
  even where the model is gone.

Positions and entries are int32 while they fit, int64 beyond. Arrays are read as read-only
memory maps, so serving an atlas of any size starts at once and pages in what requests touch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import UsageError
from ...infra import provenance

FORMAT = 1
META = "atlas.json"
FILES = ("text.safetensors", "experts.safetensors", "index.safetensors")
TOKENIZER = "tokenizer"
DTYPES = {"F32": np.float32, "F64": np.float64, "I32": np.int32, "I64": np.int64}


def index_dtype(limit: int) -> type:
    """int32 for indices below 2**31, else int64."""
    return np.int32 if limit < 2**31 else np.int64


def footprint(*, groups: int, experts: int, top: int, corpora: int, tokens: int, seq_len: int,
              vocab: int) -> dict[str, int]:
    """Bytes an atlas needs: `disk` (upper bound: every top-k slot filled) and `memory` of the
    build on rank 0 (state, scanned text; the model and one batch's active pairs come on top).
    Under torchrun each rank also holds a shard state of the same size while ranks merge."""
    E2, pos = experts * experts, np.dtype(index_dtype(tokens)).itemsize
    slots = groups * E2 * top
    disk = (tokens * 4 + tokens // seq_len * 4 + slots * (4 + pos) + groups * E2 * corpora * 8
            + (vocab + 1) * 8 + slots * np.dtype(index_dtype(slots)).itemsize)
    memory = slots * (4 + 8) + groups * E2 * corpora * (8 + 8) + tokens * 8
    return {"disk": int(disk), "memory": int(memory)}


def human(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError


def safetensors_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    from safetensors.numpy import save

    return save({k: np.ascontiguousarray(v) for k, v in arrays.items()})


def mmap_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Read-only memory maps of every array in a safetensors file (the format is 8 bytes of header
    length, a JSON header with each tensor's dtype, shape and byte range, then the data)."""
    try:
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n)) if 0 < n < 1 << 24 else None
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    if not isinstance(header, dict):
        raise UsageError(f"{path}: not a safetensors file")
    size = path.stat().st_size
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = np.dtype(DTYPES[info["dtype"]])
            shape = tuple(int(d) for d in info["shape"])
            start, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise UsageError(f"{path}: tensor {name!r} has a bad header entry") from None
        count = int(np.prod(shape))
        if end - start != count * dtype.itemsize or 8 + n + end > size:
            raise UsageError(f"{path}: tensor {name!r} does not fit the file (truncated?)")
        out[name] = (np.memmap(path, dtype=dtype, mode="r", offset=8 + n + start, shape=shape) if count
                     else np.empty(shape, dtype))
    return out


def write(directory: Path, meta: dict[str, Any], arrays: dict[str, dict[str, np.ndarray]],
          tokenizer: Path, model_dir: Path) -> dict:
    """Write the data files into `directory` (a temporary one that becomes the atlas), the
    tokenizer, and atlas.json with every file's size and sha256; returns the final meta."""
    import shutil

    files = {}
    for name in FILES:
        (directory / name).write_bytes(safetensors_bytes(arrays[name]))
    (directory / TOKENIZER).mkdir()
    shutil.copyfile(tokenizer, directory / TOKENIZER / tokenizer.name)
    shutil.copyfile(model_dir / "config.json", directory / TOKENIZER / "config.json")
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        name = path.relative_to(directory).as_posix()
        files[name] = {"bytes": path.stat().st_size, "sha256": provenance.sha256_file(path)}
    meta = dict(meta, format=FORMAT, files=files)
    (directory / META).write_text(json.dumps(meta, indent=1, sort_keys=True, ensure_ascii=False) + "\n",
                                  encoding="utf-8")
    return meta


@dataclass
class Atlas:
    """An opened atlas: its meta and memory-mapped arrays (validated against each other)."""

    dir: Path
    meta: dict[str, Any]
    ids: np.ndarray
    row_corpus: np.ndarray
    top_weight: np.ndarray
    top_position: np.ndarray
    active: np.ndarray
    usage: np.ndarray
    offsets: np.ndarray
    entries: np.ndarray

    @property
    def groups(self) -> int:
        return self.top_weight.shape[0]

    @property
    def experts(self) -> int:
        return self.meta["model"]["experts"]

    @property
    def top(self) -> int:
        return self.top_weight.shape[2]

    @property
    def corpora(self) -> list[dict]:
        return self.meta["corpora"]

    @property
    def seq_len(self) -> int:
        return self.ids.shape[1]

    def corpus_tokens(self) -> np.ndarray:
        return np.array([c["tokens"] for c in self.corpora], dtype=np.float64)


def open_atlas(directory: str | Path, *, check_hashes: bool = True) -> Atlas:
    """Open an atlas directory; anything missing, damaged or inconsistent is one UsageError."""
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise UsageError(f"{directory}: no such atlas directory (make one with `monet-edit atlas build`)")
    try:
        meta = json.loads((directory / META).read_text("utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{directory}: not an atlas (no {META})") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"{directory / META}: unreadable ({exc})") from None
    if not isinstance(meta, dict) or meta.get("kind") != "monet-edit atlas":
        raise UsageError(f"{directory / META}: not a monet-edit atlas")
    if meta.get("format") != FORMAT:
        raise UsageError(f"{directory / META}: atlas format {meta.get('format')!r} is not supported "
                         f"(expected {FORMAT}); rebuild it with `monet-edit atlas build`")
    recorded = meta.get("files")
    if not isinstance(recorded, dict) or not all(name in recorded for name in FILES):
        raise UsageError(f"{directory / META}: no file list (not written by `monet-edit atlas build`)")
    for name, info in recorded.items():
        path = directory / name
        if not path.is_file():
            raise UsageError(f"{path}: missing (the atlas is incomplete)")
        if check_hashes and (info or {}).get("sha256") != provenance.sha256_file(path):
            raise UsageError(f"{path}: sha256 differs from {META} (damaged or replaced)")
    arrays: dict[str, np.ndarray] = {}
    for name in FILES:
        arrays.update(mmap_safetensors(directory / name))
    wanted = ("ids", "row_corpus", "top_weight", "top_position", "active", "usage", "offsets", "entries")
    missing = [k for k in wanted if k not in arrays]
    if missing:
        raise UsageError(f"{directory}: atlas arrays missing: {', '.join(missing)}")
    atlas = Atlas(directory, meta, *(arrays[k] for k in wanted))
    G, E = len(meta["model"]["masked"]), meta["model"]["experts"]
    C, K = len(meta["corpora"]), atlas.top_weight.shape[-1] if atlas.top_weight.ndim == 3 else -1
    shapes = {"top_weight": (G, E * E, K), "top_position": (G, E * E, K), "active": (G, E * E, C),
              "usage": (G, E * E, C), "row_corpus": (atlas.ids.shape[0],)}
    bad = [k for k, s in shapes.items() if getattr(atlas, k).shape != s]
    if bad or atlas.ids.ndim != 2 or atlas.offsets.shape[0] < 2:
        raise UsageError(f"{directory}: atlas arrays have inconsistent shapes ({', '.join(bad) or 'ids/offsets'})")
    return atlas


def open_tokenizer(directory: Path):
    """The tokenizer stored in the atlas."""
    from ...model.tokenizer import Tokenizer

    return Tokenizer.from_dir(directory / TOKENIZER)
