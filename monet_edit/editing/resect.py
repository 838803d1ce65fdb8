"""Write a resected checkpoint: the base model's tensors, byte for byte, plus per-group masks.

Output directory (written atomically, never over the base):
- model.safetensors: every base tensor copied as raw bytes (no torch round trip, no re-cast,
  shards merged into one file) plus `model.layers.{g*moe_groups}.router.expert_mask` (bool [E, E])
  for each routing group with at least one masked expert; groups without one carry no mask tensor.
- edit-mask.safetensors: the same masks as a mask file (monet_edit.masks format) with the
  selection's metadata, so `load_model(base, mask=...)` reproduces this checkpoint.
- config.json: the base config verbatim plus a `monet_edit` edit record (base, rule, params,
  counts, fraction, command, provenance; a base's own record is kept under `previous`).
- the Python files that let `transformers` load the directory (monet_edit.remote_code; config.json
  gets their `auto_map`), so the masks also apply under AutoModelForCausalLM(trust_remote_code=True).
- tokenizer files, README.md (model card), manifest.json (sha256 of base weights, the mask file
  and every output file).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..infra import atomic, provenance
from ..infra.provenance import RECORD_KEY
from ..model import checkpoint, modelcard, remote_code
from ..model import masks as masks_mod

MASK_FILE = "edit-mask.safetensors"
MANIFEST = "manifest.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
)


def check_output(out: Path, base: Path, force: bool) -> None:
    """The output may be neither the base directory, nor inside it, nor one of its parents, and
    exists only with `force`."""
    o, b = out.expanduser().resolve(), base.resolve()
    if o == b or b in o.parents or o in b.parents:
        raise UsageError(f"{out}: output would overlap the base checkpoint {base}; choose another --out")
    atomic.check_new_dir(out, force)


def write_weights(
    path: Path, infos: dict, extra: dict[str, tuple[str, list[int], bytes]], metadata: dict[str, str]
) -> str:
    """Stream a safetensors file: `infos` tensors copied as raw bytes from their files, then `extra`
    (name -> (dtype, shape, data)). Returns the file's sha256."""
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
                fh.seek(info.start)
                remaining = info.end - info.start
                while remaining:
                    block = fh.read(min(remaining, 1 << 22))
                    if not block:
                        raise UsageError(f"{info.file}: truncated while copying {name}")
                    out.write(block)
                    digest.update(block)
                    remaining -= len(block)
    finally:
        for fh in handles.values():
            fh.close()
    return digest.hexdigest()


def resect(
    base_source,
    masks: dict,
    out_dir: str | Path,
    *,
    force: bool = False,
    command: str,
    mask_meta: dict,
    eval_summary: dict | None = None,
) -> Path:
    """Write the base checkpoint with `masks` ({group: bool [E, E]}) applied as a new directory."""
    import torch

    base = checkpoint.resolve(base_source)
    config = checkpoint.load_config(base)
    out = Path(out_dir)
    check_output(out, base, force)
    infos = checkpoint.read_headers(base)
    checkpoint.check_tensors(config, infos, base)
    masks = masks_mod.normalise(masks, config, where="mask")
    fingerprint = checkpoint.model_fingerprint(base)
    made_for = mask_meta.get("model_fingerprint")
    if made_for and made_for != fingerprint:
        raise UsageError(
            f"mask was made for another model (fingerprint {str(made_for)[:12]}, "
            f"{base} is {fingerprint[:12]})"
        )
    previous = checkpoint.stored_masks(infos, config)
    combined = {g: masks.get(g, torch.zeros_like(m)) | m for g, m in previous.items()}
    combined.update({g: m for g, m in masks.items() if g not in combined})
    weight_infos = {n: i for n, i in infos.items() if not checkpoint.MASK_KEY.match(n)}
    E = config.moe_experts
    extra = {
        checkpoint.mask_key(config, g): ("BOOL", [E, E], m.to(torch.uint8).numpy().tobytes())
        for g, m in sorted(combined.items())
        if bool(m.any())
    }
    raw_config = json.loads((base / "config.json").read_text(encoding="utf-8"))
    counts = masks_mod.counts(combined, config)
    total = config.num_experts * config.num_groups
    record = {
        "base": {
            "source": str(base_source),
            "path": str(base.resolve()),
            "fingerprint": fingerprint,
            "weights_sha256": {f.name: provenance.sha256_file(f) for f in checkpoint.weight_files(base)},
        },
        "target": mask_meta.get("target"),
        "rule": mask_meta.get("rule", "given mask"),
        "params": mask_meta.get("params", {}),
        "sources": mask_meta.get("sources", {}),
        "counts": counts,
        "masked": sum(counts),
        "total_experts": total,
        "fraction": sum(counts) / total,
        "mask_file": MASK_FILE,
        "mask_storage": "bool [E, E] per routing group with at least one masked expert, under "
        "model.layers.{group*moe_groups}.router.expert_mask",
        "command": command,
        "eval": eval_summary,
        "provenance": provenance.record(),
    }
    if RECORD_KEY in raw_config:
        record["previous"] = raw_config[RECORD_KEY]
    raw_config[RECORD_KEY] = record
    raw_config = remote_code.with_auto_map(raw_config)
    base_meta = checkpoint.file_metadata(checkpoint.weight_files(base)[0])
    base_meta.pop(RECORD_KEY, None)
    with atomic.output_dir(out, force) as tmp:
        hashes = {
            checkpoint.WEIGHTS: write_weights(
                tmp / checkpoint.WEIGHTS, weight_infos, extra, base_meta or {"format": "pt"}
            )
        }
        masks_mod.save(tmp / MASK_FILE, combined, config, dict(mask_meta, model_fingerprint=fingerprint))
        (tmp / "config.json").write_text(
            json.dumps(raw_config, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
        for name in TOKENIZER_FILES:
            if (base / name).is_file():
                shutil.copyfile(base / name, tmp / name)
        remote_code.write(tmp)
        (tmp / "README.md").write_text(modelcard.render(record, config, out.name), encoding="utf-8")
        for f in sorted(tmp.iterdir()):
            if f.name not in hashes:
                hashes[f.name] = provenance.sha256_file(f)
        manifest = {
            "base": {
                "path": str(base.resolve()),
                "fingerprint": fingerprint,
                "weights_sha256": record["base"]["weights_sha256"],
            },
            "mask": {"file": MASK_FILE, "sha256": hashes[MASK_FILE]},
            "files": dict(sorted(hashes.items())),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out


def verify(directory: str | Path) -> list[str]:
    """Files of a resected checkpoint whose sha256 no longer matches its manifest (empty = intact)."""
    directory = Path(directory)
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        raise UsageError(f"{directory}: no valid {MANIFEST} (not a resected checkpoint?)") from None
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise UsageError(f"{directory}: {MANIFEST} 'files' must map file names to sha256 strings")
    for name in files:
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise UsageError(f"{directory}: {MANIFEST} names {name!r}, not a plain file name in the directory")
    return [
        name
        for name, sha in sorted(files.items())
        if not (directory / name).is_file() or provenance.sha256_file(directory / name) != sha
    ]
