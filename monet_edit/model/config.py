"""Monet model configuration, read from and written to Hugging Face `config.json`.

We never trust defaults for released checkpoints: every architectural field the forward pass
depends on must be present in the file, and the combination is validated before any tensor is
allocated, so a broken config fails with one line instead of a shape error deep in torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import UsageError

DECOMPOSITIONS = ("horizontal", "vertical")

# Fields a config.json must carry: the forward pass depends on each of them.
REQUIRED = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "moe_dim",
    "moe_experts",
    "moe_groups",
    "moe_heads",
    "moe_topk",
    "moe_decompose",
)


@dataclass
class MonetConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    moe_dim: int
    moe_experts: int
    moe_groups: int
    moe_heads: int
    moe_topk: int
    moe_decompose: str
    num_key_value_heads: int | None = None
    hidden_act: str = "relu2"
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    attention_bias: bool = False
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    pad_token_id: int | None = None
    torch_dtype: str | None = None
    # Everything else found in config.json (edit records, auto_map, ...) is kept verbatim.
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads

    # ---- derived sizes -------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_groups(self) -> int:
        """Number of routing groups (moe_groups is a group SIZE, in layers)."""
        return self.num_hidden_layers // self.moe_groups

    @property
    def num_experts(self) -> int:
        """Experts per layer: E * E composite experts."""
        return self.moe_experts * self.moe_experts

    def group_layers(self, group: int) -> range:
        return range(group * self.moe_groups, (group + 1) * self.moe_groups)

    # ---- validation ----------------------------------------------------------------------
    def validate(self, where: str = "config") -> MonetConfig:
        def bad(msg: str) -> UsageError:
            return UsageError(f"{where}: {msg}")

        ints = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "moe_dim",
                "moe_experts", "moe_groups", "moe_heads", "moe_topk", "num_key_value_heads",
                "max_position_embeddings")
        for name in ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise bad(f"{name} must be a positive integer, got {value!r}")
        for name in ("rms_norm_eps", "rope_theta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise bad(f"{name} must be a positive finite number, got {value!r}")
        if self.moe_decompose not in DECOMPOSITIONS:
            raise bad(f"moe_decompose must be 'horizontal' or 'vertical', got {self.moe_decompose!r}")
        if self.hidden_act != "relu2":
            raise bad(f"hidden_act {self.hidden_act!r} is not supported (Monet uses 'relu2')")
        if self.hidden_size % self.num_attention_heads:
            raise bad(f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                      f"{self.num_attention_heads}")
        if self.head_dim % 2:
            raise bad(f"attention head size {self.head_dim} must be even for rotary embeddings")
        if self.num_attention_heads % self.num_key_value_heads:
            raise bad(f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                      f"num_key_value_heads {self.num_key_value_heads}")
        if self.num_hidden_layers % self.moe_groups:
            raise bad(f"moe_groups {self.moe_groups} (layers per routing group) does not divide "
                      f"num_hidden_layers {self.num_hidden_layers}")
        if self.moe_topk > self.moe_experts:
            raise bad(f"moe_topk {self.moe_topk} exceeds moe_experts {self.moe_experts}")
        if self.moe_topk == self.moe_experts:
            raise bad("moe_topk must be smaller than moe_experts (the routing threshold would be infinite)")
        if self.moe_decompose == "vertical":
            if self.hidden_size % 2:
                raise bad(f"vertical decomposition needs an even hidden_size, got {self.hidden_size}")
            if self.moe_dim % 2:
                raise bad(f"vertical decomposition needs an even moe_dim, got {self.moe_dim}")
        if self.rope_scaling not in (None, {}):
            raise bad(f"rope_scaling {self.rope_scaling!r} is not supported")
        return self

    # ---- (de)serialisation ---------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any, where: str = "config") -> MonetConfig:
        if not isinstance(data, dict):
            raise UsageError(f"{where}: expected a JSON object, got {type(data).__name__}")
        model_type = data.get("model_type")
        if model_type != "monet":
            raise UsageError(f"{where}: model_type is {model_type!r}, expected 'monet'")
        missing = [name for name in REQUIRED if name not in data]
        if missing:
            raise UsageError(f"{where}: missing required field(s): {', '.join(missing)}")
        known = {f.name for f in fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in data.items() if k in known}
        extra = {k: v for k, v in data.items() if k not in known and k != "model_type"}
        return cls(**kwargs, extra=extra).validate(where)

    @classmethod
    def from_file(cls, path: str | Path) -> MonetConfig:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UsageError(f"{path}: file not found") from None
        except OSError as exc:
            raise UsageError(f"{path}: cannot read ({exc.strerror or exc})") from None
        except UnicodeDecodeError:
            raise UsageError(f"{path}: not UTF-8 text") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        return cls.from_dict(data, where=str(path))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        extra = data.pop("extra")
        out: dict[str, Any] = {"model_type": "monet", "architectures": ["MonetForCausalLM"]}
        out.update(data)
        out.update(extra)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
