"""The CPU compute dtype: bf16 by default only where the CPU multiplies bf16 natively."""

import pytest
import torch

from monet_edit import load_model
from monet_edit.errors import UsageError
from monet_edit.model import precision


@pytest.mark.parametrize("native, env, expected", [
    (True, "auto", torch.bfloat16), (False, "auto", torch.float32), (True, "fp32", torch.float32),
    (False, "bf16", torch.bfloat16), (True, "", torch.bfloat16)])
def test_default_cpu_dtype(native, env, expected, monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda: native)
    monkeypatch.setenv(precision.ENV, env)
    assert precision.cpu_dtype() == expected


def test_bad_setting_is_a_usage_error(monkeypatch):
    monkeypatch.setenv(precision.ENV, "fp8")
    with pytest.raises(UsageError, match="MONET_EDIT_CPU_DTYPE='fp8'"):
        precision.cpu_dtype()


def test_native_bf16_reads_torchs_probes():
    assert precision.native_bf16() == bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def test_load_model_follows_the_default_and_keeps_router_statistics_fp32(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda: True)
    monkeypatch.setenv(precision.ENV, "auto")
    model = load_model("tiny")
    assert model.lm_head.weight.dtype == torch.bfloat16
    router = model.model.routers()[0]
    assert router.norm1.running_mean.dtype == router.norm2.running_var.dtype == torch.float32
    assert load_model("tiny", dtype="fp32").lm_head.weight.dtype == torch.float32  # an explicit dtype wins
    monkeypatch.setattr(precision, "native_bf16", lambda: False)
    assert load_model("tiny").lm_head.weight.dtype == torch.float32
