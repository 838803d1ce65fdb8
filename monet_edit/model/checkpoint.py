"""Finding, validating and reading Monet checkpoints (local directories, packaged models, Hub ids).

A checkpoint directory holds config.json and model.safetensors (or a sharded
model.safetensors.index.json). Resected checkpoints also carry one bool [E, E] tensor per routing
group, `model.layers.L.router.expert_mask` (L the group's first layer): the edit's masks.
Everything read from disk is validated before use and failures are one-line UsageErrors.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .config import MonetConfig

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
MASK_KEY = re.compile(r"^model\.layers\.(\d+)\.router\.expert_mask$")
SCALE_KEY = re.compile(r"^model\.layers\.(\d+)\.router\.expert_scale$")
EDIT_KEY = re.compile(r"^model\.layers\.(\d+)\.router\.expert_(mask|scale)$")  # what an edit adds
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
PACKAGED = ("tiny",)
ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
            "U8": 1, "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}
HUB_FILES = ["config.json", "*.safetensors", INDEX, "tokenizer.json", "tokenizer.model",
             "tokenizer_config.json", "special_tokens_map.json"]


def mask_key(config: MonetConfig, group: int) -> str:
    return f"model.layers.{group * config.moe_groups}.router.expert_mask"


def scale_key(config: MonetConfig, group: int) -> str:
    return f"model.layers.{group * config.moe_groups}.router.expert_scale"


def packaged_dir(name: str) -> Path:
    return Path(str(resources.files("monet_edit") / "models" / name))


def resolve(source: str | Path) -> Path:
    """Turn a model argument (path, packaged name, Hub id) into a local checkpoint directory."""
    text = str(source)
    if text in PACKAGED:
        path = packaged_dir(text)
        if not (path / "config.json").exists():
            raise UsageError(f"packaged model {text!r} is missing from this installation ({path})")
        return path
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UsageError(f"{path}: not a checkpoint directory (expected a directory with config.json)")
        if not (path / "config.json").is_file():
            raise UsageError(f"{path}: no config.json in this directory")
        return path
    if HUB_ID.match(text) and not text.startswith((".", "/")) and ".." not in text:
        return _download(text)
    raise UsageError(f"{text}: no such directory, packaged model ({', '.join(PACKAGED)}) or Hub id")


def _download(repo_id: str) -> Path:
    """Fetch a Hub checkpoint into the usual Hugging Face cache (only reached for Hub ids)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - huggingface_hub comes with datasets
        raise UsageError(f"{repo_id}: downloading from the Hub needs huggingface_hub") from None
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES, etag_timeout=10))
    except Exception as exc:  # network, auth, missing repo: all reported the same way
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{repo_id}: cannot fetch from the Hugging Face Hub (offline or unknown id): "
                         f"{reason[:200]}") from None


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint, in a fixed order."""
    single, index = directory / WEIGHTS, directory / INDEX
    if single.is_file():
        return [single]
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            names = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise UsageError(f"{index}: not a valid safetensors index (needs a 'weight_map' object)") from None
        files = []
        for name in names:
            if not isinstance(name, str) or Path(name).name != name:
                raise UsageError(f"{index}: shard name {name!r} must be a plain file name")
            if not (directory / name).is_file():
                raise UsageError(f"{index}: shard {name} is missing")
            files.append(directory / name)
        return files
    raise UsageError(f"{directory}: no {WEIGHTS} or {INDEX}")


@dataclass
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    file: Path
    start: int  # absolute byte offsets of the tensor's data in `file`
    end: int


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Tensor names, dtypes and shapes from a safetensors header, validated against the file size."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise UsageError(f"{path}: truncated safetensors file ({size} bytes)")
            n = int.from_bytes(head, "little")
            if n <= 0 or 8 + n > size or n > 100_000_000:
                raise UsageError(f"{path}: corrupt safetensors header (declares {n} header bytes, "
                                 f"file has {size})")
            raw = fh.read(n)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError
    except (ValueError, UnicodeDecodeError):
        raise UsageError(f"{path}: corrupt safetensors header (not a JSON object)") from None
    data_len = size - 8 - n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
            count = 1
            for s in shape:
                if not isinstance(s, int) or s < 0:
                    raise ValueError
                count *= s
            ok = (dtype in ITEMSIZE and isinstance(start, int) and isinstance(end, int)
                  and 0 <= start <= end <= data_len and end - start == count * ITEMSIZE[dtype])
        except (TypeError, ValueError, KeyError):
            ok = False
        if not ok:
            raise UsageError(f"{path}: corrupt safetensors header (tensor {name!r} has inconsistent "
                             f"dtype, shape or offsets, or the file is truncated)")
        out[name] = TensorInfo(dtype, shape, path, 8 + n + start, 8 + n + end)
    return out


def read_headers(directory: Path) -> dict[str, TensorInfo]:
    infos: dict[str, TensorInfo] = {}
    for f in weight_files(directory):
        infos.update(read_header(f))
    return infos


def expected_shapes(config: MonetConfig) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes a checkpoint of this config must hold (from the model on 'meta')."""
    from .skeleton import skeleton

    return {k: tuple(v.shape) for k, v in skeleton(config).state_dict().items()}


def check_tensors(config: MonetConfig, infos: dict[str, TensorInfo], where: Path) -> None:
    """Names and shapes must be exactly those of the config (masks aside); else one clear line."""
    expected = expected_shapes(config)
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
        infos = {k: v for k, v in infos.items() if k != "lm_head.weight"}
    E = config.moe_experts
    for name, info in infos.items():
        if (m := EDIT_KEY.match(name)) is not None:
            layer, what = int(m.group(1)), m.group(2)
            if layer % config.moe_groups or layer >= config.num_hidden_layers:
                raise UsageError(f"{where}: {what} tensor {name} is not on a routing layer")
            if info.shape != (E, E):
                raise UsageError(f"{where}: {what} tensor {name} has shape {list(info.shape)}, "
                                 f"expected [{E}, {E}]")
            if what == "scale" and info.dtype not in ("F32", "F64", "BF16", "F16"):
                raise UsageError(f"{where}: scale tensor {name} has dtype {info.dtype}, expected a float")
    names = {k for k in infos if not EDIT_KEY.match(k)}
    missing = sorted(set(expected) - names)
    unexpected = sorted(names - set(expected))
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise UsageError(f"{where}: missing tensor(s) {', '.join(missing[:3])}{more}")
    if unexpected:
        more = f" and {len(unexpected) - 3} more" if len(unexpected) > 3 else ""
        raise UsageError(f"{where}: unexpected tensor(s) {', '.join(unexpected[:3])}{more}")
    for name, shape in expected.items():
        if infos[name].shape != shape:
            raise UsageError(f"{where}: tensor {name} has shape {list(infos[name].shape)}, "
                             f"expected {list(shape)}")


def read_tensors(infos: dict[str, TensorInfo]) -> dict[str, Any]:
    """Load every tensor (already header-validated) as torch tensors on CPU."""
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    out: dict[str, Any] = {}
    by_file: dict[Path, list[str]] = {}
    for name, info in infos.items():
        by_file.setdefault(info.file, []).append(name)
    for path, names in by_file.items():
        try:
            with safe_open(str(path), framework="pt") as fh:
                for name in names:
                    out[name] = fh.get_tensor(name)
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise UsageError(f"{path}: cannot read safetensors data ({str(exc).splitlines()[0][:160]})") from None
    return out


def stored_masks(infos: dict[str, TensorInfo], config: MonetConfig) -> dict[int, Any]:
    """{group: bool [E, E]} of the masks a checkpoint carries (reads only the mask tensors)."""
    found = {n: i for n, i in infos.items() if MASK_KEY.match(n)}
    return {int(MASK_KEY.match(n).group(1)) // config.moe_groups: t.bool()
            for n, t in (read_tensors(found) if found else {}).items()}


def stored_scales(infos: dict[str, TensorInfo], config: MonetConfig) -> dict[int, Any]:
    """{group: float32 [E, E]} of the per-expert scales a checkpoint carries (finite, >= 0)."""
    import torch

    found = {n: i for n, i in infos.items() if SCALE_KEY.match(n)}
    out = {}
    for n, t in (read_tensors(found) if found else {}).items():
        t = t.float()
        if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
            raise UsageError(f"{infos[n].file}: scale tensor {n} holds negative or non-finite values")
        out[int(SCALE_KEY.match(n).group(1)) // config.moe_groups] = t
    return out


def read_tagged(path: str | Path, key: str, what: str) -> tuple[dict[str, Any], Any]:
    """Tensors and the JSON stored under metadata `key` of a small safetensors file (mask, profile).

    Any unreadable file, bad safetensors bytes or bad JSON is one UsageError naming `what`.
    """
    from safetensors.torch import load

    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{path}: {what} not found") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        tensors = load(raw)
        n = int.from_bytes(raw[:8], "little")
        text = (json.loads(raw[8:8 + n]).get("__metadata__") or {}).get(key)
        tag = json.loads(text) if text else None
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:  # safetensors raises SafetensorError, or a Rust panic on hostile bytes
        raise UsageError(f"{path}: not a {what} (unreadable safetensors or metadata)") from None
    return tensors, tag


def file_metadata(path: Path) -> dict[str, str]:
    """The free-form string metadata of a safetensors file."""
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return fh.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise UsageError(f"{path}: not a valid safetensors file ({str(exc).splitlines()[0][:160]})") from None


def tensor_bytes(fh, info: TensorInfo, block: int = 1 << 22):
    """The raw bytes of one tensor from its open file, in blocks (no torch, bounded memory)."""
    fh.seek(info.start)
    remaining = info.end - info.start
    while remaining:
        data = fh.read(min(remaining, block))
        if not data:
            raise UsageError(f"{info.file}: truncated inside a tensor")
        yield data
        remaining -= len(data)


def load_config(directory: Path) -> MonetConfig:
    return MonetConfig.from_file(directory / "config.json")


def model_fingerprint(directory: Path) -> str:
    """sha256 over every weight tensor except edits (masks, scales; name, dtype, shape, bytes;
    sorted by name). A resected checkpoint therefore has the fingerprint of its base: masks and
    profiles made for a model stay valid for its edits. Raw bytes are read from the file, no torch needed.
    """
    import hashlib

    files = weight_files(directory)
    infos = read_headers(directory)
    h = hashlib.sha256()
    handles = {f: open(f, "rb") for f in files}
    try:
        for name in sorted(infos):
            info = infos[name]
            if EDIT_KEY.match(name):
                continue
            h.update(f"{name}|{info.dtype}|{list(info.shape)}|".encode())
            for block in tensor_bytes(handles[info.file], info):
                h.update(block)
    finally:
        for fh in handles.values():
            fh.close()
    return h.hexdigest()


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """A model argument resolved once at the edge (CLI, recipe, library entry point) and passed
    down: its directory, and each thing read from it (config, tensor headers, fingerprint, stored
    masks, edit record, tokenizer) read at most once. `source` is what the user gave."""

    source: str
    dir: Path

    def __str__(self) -> str:
        return self.source

    def __fspath__(self) -> str:
        return str(self.dir)

    @cached_property
    def config(self) -> MonetConfig:
        return load_config(self.dir)

    @cached_property
    def infos(self) -> dict[str, TensorInfo]:
        return read_headers(self.dir)

    @cached_property
    def fingerprint(self) -> str:
        return model_fingerprint(self.dir)

    @cached_property
    def stored_masks(self) -> dict[int, Any]:
        return stored_masks(self.infos, self.config)

    @cached_property
    def stored_scales(self) -> dict[int, Any]:
        return stored_scales(self.infos, self.config)

    @property
    def masked(self) -> int:
        """Experts masked by the masks stored in the checkpoint."""
        return sum(int(m.sum()) for m in self.stored_masks.values())

    @cached_property
    def edit_record(self) -> dict | None:
        """The edit record monet-edit wrote into config.json (a resected checkpoint), or None."""
        from ..infra.provenance import RECORD_KEY

        record = self.config.extra.get(RECORD_KEY)
        return record if isinstance(record, dict) else None

    @cached_property
    def tokenizer(self):
        from .tokenizer import Tokenizer

        return Tokenizer.from_dir(self.dir)


def of(source: str | Path | Checkpoint) -> Checkpoint:
    """The Checkpoint of a model argument (a Checkpoint is returned as it is)."""
    if isinstance(source, Checkpoint):
        return source
    return Checkpoint(str(source), resolve(source))
