"""`load_model` and `load_tokenizer`: the library's front door."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UsageError
from . import checkpoint
from . import masks as masks_mod

DTYPES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
          "fp16": "float16", "float16": "float16"}


def parse_dtype(dtype: Any):
    """torch dtype from a torch.dtype or a name such as 'bf16'; None stays None."""
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    name = DTYPES.get(str(dtype).lower())
    if name is None:
        raise UsageError(f"unknown dtype {dtype!r} (choose from {', '.join(sorted(DTYPES))})")
    return getattr(torch, name)


def parse_device(device: Any):
    import torch

    if device is None:
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"unknown device {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {device!r} requested but CUDA is not available")
    return dev


def load_model(source: str | Path | checkpoint.Checkpoint, *, dtype: Any = None, device: Any = None,
               mask: Any = None):
    """Load a Monet checkpoint in eval mode with its masks (and `mask`, if given) applied.

    source: a checkpoint directory, a packaged model name ('tiny') or a Hub id (downloaded into
    the Hugging Face cache; fails with one line when offline). dtype: default on CPU
    precision.cpu_dtype() (bf16 where the CPU has native bf16, else float32), on CUDA the stored
    dtype. mask: a mask file path or {group: bool [E, E]}; it is combined (logical or) with any
    masks the checkpoint already carries. Per-expert scales stored in the checkpoint are applied
    too (a masked expert stays masked).
    """
    import torch

    from . import precision
    from .monet import RotaryEmbedding
    from .skeleton import skeleton

    ckpt = checkpoint.of(source)
    config = ckpt.config
    dev = parse_device(device)
    infos = ckpt.infos
    checkpoint.check_tensors(config, infos, ckpt.dir)
    extra = _mask_argument(mask, config)
    tensors = checkpoint.read_tensors({n: i for n, i in infos.items() if not checkpoint.EDIT_KEY.match(n)})
    target = parse_dtype(dtype)
    if target is None:
        floats = [t.dtype for t in tensors.values() if t.is_floating_point()]
        target = precision.cpu_dtype() if dev.type == "cpu" else floats[0] if floats else torch.float32
    for name, t in tensors.items():
        keep_fp32 = ".router.norm" in name  # BatchNorm statistics drive routing: keep full precision
        if t.is_floating_point():
            tensors[name] = t.to(torch.float32 if keep_fp32 else target)
    model = skeleton(config)
    if config.tie_word_embeddings:
        tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]
    model.load_state_dict(tensors, strict=True, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.model.rotary = RotaryEmbedding(config.head_dim, config.rope_theta)
    model.to(dev)
    if dev.type == "cpu":  # the routed CPU path reads the output projections per sub-expert
        model.expert_major_()
    model.set_masks(masks_mod.combine(ckpt.stored_masks, extra))
    model.set_scales(ckpt.stored_scales)
    model.checkpoint = ckpt
    return model.eval()


def _mask_argument(mask: Any, config) -> dict:
    if mask is None:
        return {}
    if isinstance(mask, (str, Path)):
        loaded, _ = masks_mod.load(mask, config)
        return loaded
    return masks_mod.normalise(mask, config)


def load_tokenizer(source: str | Path | checkpoint.Checkpoint):
    """The tokenizer of a checkpoint (tokenizer.json or SentencePiece tokenizer.model)."""
    return checkpoint.of(source).tokenizer
