"""Serving Monet checkpoints with vLLM (masks and per-expert scales applied).

`register` is the `vllm.general_plugins` entry point (pyproject.toml): vLLM calls it in every
process it starts, so `vllm serve DIR`, `LLM(DIR)` and `monet-edit serve DIR` all know the
architecture "MonetForCausalLM" and the config model_type "monet". Nothing here is imported
by monet-edit itself unless serving.
"""

from __future__ import annotations

ARCHITECTURE = "MonetForCausalLM"


def register() -> None:
    """Teach vLLM (and transformers' AutoConfig) about Monet; safe to call more than once."""
    from transformers import AutoConfig
    from vllm import ModelRegistry
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP
    from vllm.renderers.registry import RENDERER_REGISTRY
    from vllm.tokenizers.registry import TokenizerRegistry

    from .hf_config import MonetHFConfig
    from .hooks import MonetConfigHook

    AutoConfig.register("monet", MonetHFConfig, exist_ok=True)
    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, f"{__name__}.model:{ARCHITECTURE}")
    if "monet" not in TokenizerRegistry.tokenizers:
        TokenizerRegistry.register("monet", f"{__name__}.tokenizer", "MonetTokenizer")
    if "monet" not in RENDERER_REGISTRY.renderers:  # prompts render as for any Hugging Face tokenizer
        RENDERER_REGISTRY.register("monet", "vllm.renderers.hf", "HfRenderer")
    MODELS_CONFIG_MAP.setdefault(ARCHITECTURE, MonetConfigHook)
