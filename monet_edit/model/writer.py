"""The one checkpoint writer (resect and train both use it).

A checkpoint directory is written into a temporary directory and renamed into place (never over
its source): model.safetensors (tensors streamed as raw bytes, either copied from another
checkpoint's files or from memory), config.json (with transformers' `auto_map`), the Python
files that let transformers load it (remote_code), tokenizer files, extra files (an edit's mask
file, a training record), README.md (model card) and manifest.json (sha256 of every file).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..infra import atomic, provenance
from . import checkpoint, remote_code

WEIGHTS = checkpoint.WEIGHTS
MANIFEST = "manifest.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "generation_config.json")
DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16", "float64": "F64", "int64": "I64",
          "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}

Raw = tuple[str, list[int], bytes]  # (safetensors dtype, shape, data)


def raw_tensor(tensor) -> Raw:
    """A torch tensor as (safetensors dtype, shape, bytes), its bytes untouched (bf16 included)."""
    import torch

    t = tensor.detach().cpu().contiguous()
    dtype = DTYPES[str(t.dtype).removeprefix("torch.")]
    data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
    return dtype, list(t.shape), data


def write_weights(path: Path, infos: dict, extra: dict[str, Raw], metadata: dict[str, str]) -> str:
    """Stream a safetensors file: `infos` tensors (checkpoint.TensorInfo) copied as raw bytes from
    their files, then `extra` (name -> Raw). Returns the file's sha256."""
    entries = [(n, i.dtype, list(i.shape), i.end - i.start) for n, i in infos.items()]
    entries += [(n, dtype, shape, len(data)) for n, (dtype, shape, data) in extra.items()]
    entries.sort(key=lambda e: (-checkpoint.ITEMSIZE[e[1]], e[0]))  # widest first keeps every tensor aligned
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, dtype, shape, size in entries:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    digest = hashlib.sha256()
    handles: dict[Path, Any] = {}
    try:
        with open(path, "wb") as out:
            for block in (len(raw).to_bytes(8, "little"), raw):
                out.write(block)
                digest.update(block)
            for name, *_ in entries:
                if name in extra:
                    block = extra[name][2]
                    out.write(block)
                    digest.update(block)
                    continue
                info = infos[name]
                fh = handles.get(info.file) or handles.setdefault(info.file, open(info.file, "rb"))
                for block in checkpoint.tensor_bytes(fh, info):
                    out.write(block)
                    digest.update(block)
    finally:
        for fh in handles.values():
            fh.close()
    return digest.hexdigest()


def write_checkpoint(out: Path, *, config: dict, weights: Callable[[Path], str], card: Callable[[], str],
                     tokenizer: list[Path], files: dict[str, Callable[[Path], Any]] | None = None,
                     manifest: Callable[[dict[str, str]], dict] | None = None, force: bool = False) -> Path:
    """Write a checkpoint directory atomically.

    `weights(path)` writes model.safetensors and returns its sha256; `tokenizer` lists the files
    to copy; `files` maps extra file names to writers; `card()` is the README; `manifest(hashes)`
    adds keys to manifest.json beside `files` (file name -> sha256 of everything written)."""
    with atomic.output_dir(out, force) as tmp:
        hashes = {WEIGHTS: weights(tmp / WEIGHTS)}
        (tmp / "config.json").write_text(json.dumps(remote_code.with_auto_map(config), indent=2, sort_keys=True)
                                         + "\n", encoding="utf-8")
        for source in tokenizer:
            shutil.copyfile(source, tmp / source.name)
        for name, write in (files or {}).items():
            write(tmp / name)
        remote_code.write(tmp)
        (tmp / "README.md").write_text(card(), encoding="utf-8")
        for f in sorted(tmp.iterdir()):
            if f.name not in hashes:
                hashes[f.name] = provenance.sha256_file(f)
        body = dict(manifest(hashes) if manifest else {}, files=dict(sorted(hashes.items())))
        (tmp / MANIFEST).write_text(json.dumps(body, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out


def tokenizer_files(directory: Path) -> list[Path]:
    """The tokenizer files a checkpoint directory carries (copied into the checkpoints made from it)."""
    return [directory / name for name in TOKENIZER_FILES if (directory / name).is_file()]
