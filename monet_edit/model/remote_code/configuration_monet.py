"""Monet configuration for transformers, read from the checkpoint's config.json.

monet-edit validated this config when it wrote the checkpoint. Optional fields a config.json
leaves out take monet-edit's own defaults (monet_defaults.py, generated from its config module).
"""

from transformers import PretrainedConfig

from .monet_defaults import DEFAULTS


class MonetConfig(PretrainedConfig):
    model_type = "monet"

    def __init__(self, **kwargs) -> None:
        rope_scaling = kwargs.pop("rope_scaling", None)
        if rope_scaling:
            raise ValueError(f"rope_scaling {rope_scaling!r} is not supported by Monet")
        for key, value in DEFAULTS.items():
            kwargs.setdefault(key, value)
        super().__init__(**kwargs)
        if getattr(self, "num_attention_heads", None):
            if self.num_key_value_heads is None:
                self.num_key_value_heads = self.num_attention_heads
            self.head_dim = self.hidden_size // self.num_attention_heads
