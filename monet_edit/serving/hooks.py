"""vLLM's per-architecture config hook for Monet: tokenizer mode, and eager mode for edits.

An edited routing group finds its active edited pairs per batch (a data-dependent count), which a
captured CUDA graph cannot replay, so a checkpoint that carries masks or scales runs eagerly;
an unedited one keeps vLLM's defaults.
"""

from __future__ import annotations

from pathlib import Path

from vllm.logger import init_logger
from vllm.model_executor.models.config import VerifyAndUpdateConfig

from .edits import EDIT_KEY

logger = init_logger(__name__)


def has_edits(model: str | Path) -> bool:
    """True when a local checkpoint's safetensors headers name a mask or scale tensor."""
    from ..errors import MonetEditError
    from ..model.checkpoint import read_headers

    directory = Path(model)
    if not directory.is_dir():
        return False
    try:
        return any(EDIT_KEY.match(name) for name in read_headers(directory))
    except MonetEditError:
        return False  # vLLM's own loader reports the broken file


class MonetConfigHook(VerifyAndUpdateConfig):
    @staticmethod
    def verify_and_update_model_config(model_config) -> None:
        if model_config.tokenizer_mode == "auto":
            model_config.tokenizer_mode = "monet"
        if not model_config.enforce_eager and has_edits(model_config.model):
            logger.info("Monet checkpoint with expert edits: running eagerly (no CUDA graphs)")
            model_config.enforce_eager = True
