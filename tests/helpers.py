"""Shared test fixtures: tiny random Monet configs and checkpoints written to disk."""

from __future__ import annotations

from pathlib import Path

import torch

from monet_edit.model.config import MonetConfig
from monet_edit.model.monet import MonetForCausalLM


def tiny_config(decompose: str = "horizontal", **overrides) -> MonetConfig:
    fields = dict(vocab_size=96, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, moe_dim=4, moe_experts=8, moe_groups=2, moe_heads=2,
                  moe_topk=3, moe_decompose=decompose, max_position_embeddings=64,
                  rms_norm_eps=1e-6, rope_theta=10000.0)
    fields.update(overrides)
    return MonetConfig(**fields).validate()


def random_model(config: MonetConfig, seed: int = 0) -> MonetForCausalLM:
    """A random model whose routing is realistic: biases, BN statistics matched to the scores."""
    torch.manual_seed(seed)
    model = MonetForCausalLM(config).init_weights(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or name.endswith((".b", ".b1", ".b2")):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
            if "router.w" in name:
                p.mul_(10)
        for router in model.model.routers():
            for norm in (router.norm1, router.norm2):
                norm.running_mean.copy_(torch.randn(norm.running_mean.shape, generator=gen) * 0.1)
                norm.running_var.copy_(torch.rand(norm.running_var.shape, generator=gen) * 0.1 + 0.1)
    return model.eval()


def random_mask(config: MonetConfig, fraction: float, seed: int = 0) -> dict[int, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    E = config.moe_experts
    return {g: torch.rand(E, E, generator=gen) < fraction for g in range(config.num_groups)}


def write_checkpoint(model: MonetForCausalLM, path: Path, dtype: torch.dtype = torch.float32) -> Path:
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(model.config.to_json())
    sd = {k: v.detach().to(dtype if v.is_floating_point() else v.dtype).contiguous()
          for k, v in model.state_dict().items()}
    save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


def write_tokenizer(path: Path, vocab_size: int = 300) -> int:
    """Train a small byte-level BPE (ours, with <pad>, <s>, </s>); returns its vocabulary size."""
    from tokenizers import Tokenizer

    from monet_edit.model.bpe import train_bpe

    text = ["def main():\n    return 0\n", "The law of the land.", "Der Hund ist gross."] * 50
    return Tokenizer.from_file(str(train_bpe(text, vocab_size, path / "tokenizer.json"))).get_vocab_size()


def write_tiny_checkpoint(path: Path, decompose: str = "horizontal", seed: int = 0,
                          masks: dict | None = None, **overrides) -> Path:
    """A complete random checkpoint directory (config, weights, tokenizer), as a user would have;
    `overrides` change tiny_config fields."""
    vocab = write_tokenizer(path)
    fields = dict(vocab_size=vocab, bos_token_id=1, eos_token_id=2)
    fields.update(overrides)
    model = random_model(tiny_config(decompose, **fields), seed)
    write_checkpoint(model, path)
    if masks:
        from safetensors.torch import load_file, save_file

        from monet_edit.model.checkpoint import mask_key

        sd = load_file(str(path / "model.safetensors"))
        for g, m in masks.items():
            sd[mask_key(model.config, g)] = m.bool()
        save_file(sd, str(path / "model.safetensors"))
    return path


def sibling_references(name: str) -> list[str]:
    """`--reference` options naming the target's siblings (the other corpora of its kind): a
    smaller, faster reference set than the default (every other corpus)."""
    from monet_edit import corpora

    kind = corpora.get_spec(name).kind
    return [a for n in corpora.names(kind) if n != name for a in ("--reference", n)]
