"""Monet for transformers: `AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`.

A PreTrainedModel + GenerationMixin shell around monet_model.py, which monet-edit copied (with
monet_kernels.py, monet_reference.py, monet_sparse.py and monet_routed.py) from its own source
when it wrote this checkpoint, so the forward pass is the one monet-edit's `load_model` runs, on
its pure-torch kernels. Expert masks stored in model.safetensors (`model.layers.L.router.expert_mask`, bool
[E, E], True = masked) and per-expert scales (`model.layers.L.router.expert_scale`, float32 [E, E],
1 = unchanged) load into their group's router and are applied the same way.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_monet import MonetConfig
from .monet_model import MonetHDExperts, MonetModel, MonetRouter, MonetVDExperts, RotaryEmbedding


class MonetPreTrainedModel(PreTrainedModel):
    config_class = MonetConfig
    base_model_prefix = "model"
    _no_split_modules = ["MonetDecoderLayer"]
    # BatchNorm statistics decide routing: kept in fp32 whatever the model dtype, as monet-edit does.
    # Scales too: they multiply routing weights computed in fp32.
    _keep_in_fp32_modules_strict = [r"router\.norm[12]\.running_", r"router\.expert_scale$"]
    # A routing group without masked (scaled) experts stores no mask (scale) tensor.
    _keys_to_ignore_on_load_missing = [r"router\.expert_mask$", r"router\.expert_scale$"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, RotaryEmbedding):
            fresh = RotaryEmbedding(self.config.head_dim, self.config.rope_theta).to(module.inv_freq.device)
            init.copy_(module.inv_freq, fresh.inv_freq)
        elif isinstance(module, MonetRouter):
            init.zeros_(module.expert_mask)
            init.ones_(module.expert_scale)
        elif isinstance(module, (MonetHDExperts, MonetVDExperts)):
            for param in module.parameters(recurse=False):  # the output biases b (HD) or b1, b2 (VD)
                init.zeros_(param)
        else:
            super()._init_weights(module)


class MonetForCausalLM(MonetPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}  # used only if the config ties them

    def __init__(self, config: MonetConfig) -> None:
        super().__init__(config)
        self.model = MonetModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        E = config.moe_experts
        for router in self.model.routers():  # persistent here, so transformers loads stored edits
            router.register_buffer("expert_mask", torch.zeros(E, E, dtype=torch.bool))
            router.register_buffer("expert_scale", torch.ones(E, E, dtype=torch.float32))
        self.post_init()

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """As PreTrainedModel's; a group whose mask masks nothing (whose scales are all 1) then runs
        unedited, as in monet-edit."""
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        for router in model.model.routers():
            if router.expert_mask is not None and not bool(router.expert_mask.any()):
                router.expert_mask = None
            if router.expert_scale is not None and not bool((router.expert_scale != 1).any()):
                router.expert_scale = None
        return loaded

    def forward(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None,
                past_key_values: Cache | None = None, use_cache: bool | None = None,
                labels: torch.LongTensor | None = None, **kwargs) -> CausalLMOutputWithPast:
        """Logits [B, T, V] (and the loss when `labels` is given). Rows must be unpadded: Monet's
        forward attends causally to every token, so an attention mask with zeros is refused."""
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("Monet does not support padded batches: pass rows of equal length, unpadded")
        asked = [k for k in ("inputs_embeds", "output_attentions", "output_hidden_states") if kwargs.get(k)]
        if asked:
            raise ValueError(f"Monet's forward takes input_ids and returns logits only; unsupported: {asked}")
        start = past_key_values.get_seq_length() if past_key_values is not None else 0
        past = [(layer.keys, layer.values) for layer in past_key_values.layers] if start else None
        hidden, present = self.model(input_ids, past, bool(use_cache))
        if use_cache:
            past_key_values = past_key_values if past_key_values is not None else DynamicCache(config=self.config)
            for i, (k, v) in enumerate(present):
                past_key_values.update(k[:, :, start:], v[:, :, start:], i)
        logits = self.lm_head(hidden)
        loss = self.loss_function(logits, labels, self.config.vocab_size) if labels is not None else None
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=past_key_values if use_cache else None)
