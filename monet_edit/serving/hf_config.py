"""The Monet config as transformers (and so vLLM) reads it, registered under model_type "monet".

vLLM builds every model from a `PretrainedConfig`; transformers has none for Monet, and the one a
checkpoint carries (`configuration_monet.py`) would need `--trust-remote-code`. This class fills the
optional fields with monet-edit's own defaults, so vLLM, transformers and `load_model` read a
config.json alike, and states the rotary embedding the way vLLM asks for it.
"""

from __future__ import annotations

import dataclasses

from transformers import PretrainedConfig

from ..model.config import MonetConfig


def _defaults() -> dict:
    skip = {"extra", "torch_dtype", "rope_scaling"}
    return {f.name: f.default for f in dataclasses.fields(MonetConfig)
            if f.default is not dataclasses.MISSING and f.name not in skip}


class MonetHFConfig(PretrainedConfig):
    model_type = "monet"

    def __init__(self, **kwargs) -> None:
        for key, value in _defaults().items():
            kwargs.setdefault(key, value)
        kwargs.setdefault("architectures", ["MonetForCausalLM"])
        super().__init__(**kwargs)
        if getattr(self, "num_attention_heads", None) and getattr(self, "hidden_size", None):
            if self.num_key_value_heads is None:
                self.num_key_value_heads = self.num_attention_heads
            self.head_dim = self.hidden_size // self.num_attention_heads
        self.rope_parameters = {"rope_type": "default", "rope_theta": float(self.rope_theta)}


def monet_config(hf_config: PretrainedConfig) -> MonetConfig:
    """monet-edit's validated config from whichever PretrainedConfig vLLM was handed."""
    data = {k: v for k, v in hf_config.to_dict().items() if k not in ("rope_parameters", "head_dim")}
    data["model_type"] = "monet"
    if not data.get("rope_scaling"):
        data["rope_scaling"] = None
    return MonetConfig.from_dict(data, where="config.json")
