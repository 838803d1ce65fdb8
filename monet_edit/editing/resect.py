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

import json
from pathlib import Path

from ..errors import UsageError
from ..infra import atomic, provenance
from ..infra.provenance import RECORD_KEY
from ..model import checkpoint, modelcard, writer
from ..model import masks as masks_mod

MASK_FILE = "edit-mask.safetensors"


def check_output(out: Path, base: Path, force: bool) -> None:
    """The output may be neither the base directory, nor inside it, nor one of its parents, and
    exists only with `force`."""
    o, b = out.expanduser().resolve(), Path(base).resolve()
    if o == b or b in o.parents or o in b.parents:
        raise UsageError(f"{out}: output would overlap the base checkpoint {base}; choose another --out")
    atomic.check_new_dir(out, force)


def resect(base_source, masks: dict, out_dir: str | Path, *, force: bool = False, command: str,
           mask_meta: dict, eval_summary: dict | None = None) -> Path:
    """Write the base checkpoint with `masks` ({group: bool [E, E]}) applied as a new directory."""
    import torch

    base = checkpoint.of(base_source)
    config = base.config
    out = Path(out_dir)
    check_output(out, base.dir, force)
    infos = base.infos
    checkpoint.check_tensors(config, infos, base.dir)
    masks = masks_mod.normalise(masks, config, where="mask")
    fingerprint = base.fingerprint
    made_for = mask_meta.get("model_fingerprint")
    if made_for and made_for != fingerprint:
        raise UsageError(
            f"mask was made for another model (fingerprint {str(made_for)[:12]}, "
            f"{base.dir} is {fingerprint[:12]})"
        )
    combined = masks_mod.combine(base.stored_masks, masks)
    weight_infos = {n: i for n, i in infos.items() if not checkpoint.MASK_KEY.match(n)}
    E = config.moe_experts
    extra = {
        checkpoint.mask_key(config, g): ("BOOL", [E, E], m.to(torch.uint8).numpy().tobytes())
        for g, m in sorted(combined.items())
        if bool(m.any())
    }
    raw_config = json.loads((base.dir / "config.json").read_text(encoding="utf-8"))
    counts = masks_mod.counts(combined, config)
    total = config.num_experts * config.num_groups
    weights_sha = {f.name: provenance.sha256_file(f) for f in checkpoint.weight_files(base.dir)}
    record = {
        "base": {"source": str(base), "path": str(base.dir.resolve()), "fingerprint": fingerprint,
                 "weights_sha256": weights_sha},
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
    base_meta = checkpoint.file_metadata(checkpoint.weight_files(base.dir)[0])
    base_meta.pop(RECORD_KEY, None)

    def write_mask(path: Path) -> None:
        masks_mod.save(path, combined, config, dict(mask_meta, model_fingerprint=fingerprint))

    return writer.write_checkpoint(
        out, config=raw_config, force=force,
        weights=lambda path: writer.write_weights(path, weight_infos, extra, base_meta or {"format": "pt"}),
        tokenizer=writer.tokenizer_files(base.dir),
        files={MASK_FILE: write_mask},
        card=lambda: modelcard.edited(record, config, out.name),
        manifest=lambda hashes: {
            "base": {"path": str(base.dir.resolve()), "fingerprint": fingerprint, "weights_sha256": weights_sha},
            "mask": {"file": MASK_FILE, "sha256": hashes[MASK_FILE]}},
    )
