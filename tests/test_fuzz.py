"""Fuzzing every reader of files we accept: any input either parses or raises UsageError.

Bounded budgets keep this in the default run (a few seconds each).
"""

import json
import struct

import pytest
from helpers import tiny_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monet_edit.errors import UsageError
from monet_edit.infra import tomlconfig
from monet_edit.model import checkpoint, masks
from monet_edit.model.config import MonetConfig

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10**6) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def _valid_config_dict():
    return tiny_config("vertical").to_dict()


@FUZZ
@given(st.dictionaries(st.sampled_from(sorted(_valid_config_dict())), json_values, max_size=6))
def test_config_mutations(changes):
    data = _valid_config_dict()
    data.update(changes)
    try:
        cfg = MonetConfig.from_dict(data)
    except UsageError as exc:
        assert "\n" not in str(exc)
        return
    assert cfg.num_hidden_layers % cfg.moe_groups == 0 and cfg.moe_decompose in ("horizontal", "vertical")
    assert 0 < cfg.rms_norm_eps < float("inf") and 0 < cfg.rope_theta < float("inf")


@FUZZ
@given(json_values)
def test_config_arbitrary_json(value):
    with pytest.raises(UsageError):
        MonetConfig.from_dict(value if not isinstance(value, dict) else {**value, "model_type": "x"})


def _safetensors_bytes(header: dict, payload: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + payload


tensor_entries = st.fixed_dictionaries({
    "dtype": st.sampled_from(["F32", "BF16", "BOOL", "I64", "F99", 3]),
    "shape": st.lists(st.integers(-2, 6), max_size=3),
    "data_offsets": st.lists(st.integers(-4, 200), min_size=0, max_size=3),
})


@FUZZ
@given(st.dictionaries(st.text(min_size=1, max_size=10), tensor_entries, max_size=4),
       st.binary(max_size=200))
def test_safetensors_header_that_lies(tmp_path_factory, header, payload):
    path = tmp_path_factory.mktemp("st") / "model.safetensors"
    path.write_bytes(_safetensors_bytes(header, payload))
    try:
        infos = checkpoint.read_header(path)
    except UsageError:
        return
    for info in infos.values():  # whatever is accepted really lies inside the file
        assert 0 <= info.start <= info.end <= path.stat().st_size


@FUZZ
@given(st.binary(max_size=300))
def test_safetensors_random_bytes(tmp_path_factory, blob):
    path = tmp_path_factory.mktemp("st") / "model.safetensors"
    path.write_bytes(blob)
    try:
        checkpoint.read_header(path)
    except UsageError:
        pass


@FUZZ
@given(st.binary(max_size=300) | st.builds(lambda h, p: _safetensors_bytes(h, p),
                                          st.dictionaries(st.sampled_from(["group.0", "group.1", "x"]),
                                                          tensor_entries, max_size=2),
                                          st.binary(max_size=128)))
def test_mask_file_reader(tmp_path_factory, blob):
    path = tmp_path_factory.mktemp("mask") / "m.safetensors"
    path.write_bytes(blob)
    try:
        loaded, _ = masks.load(path, tiny_config("horizontal"))
    except UsageError:
        return
    assert all(tuple(m.shape) == (8, 8) for m in loaded.values())


SCHEMA = {"a": int, "b": (float, 1.0), "t": {"s": str, "flag": (bool, False), "xs": (list, [])}}


@FUZZ
@given(st.dictionaries(st.sampled_from(["a", "b", "t", "zzz"]), json_values | st.dictionaries(
    st.sampled_from(["s", "flag", "xs", "q"]), json_values, max_size=3), max_size=4))
def test_recipe_validation(data):
    try:
        out = tomlconfig.validate(data, SCHEMA, "r.toml")
    except UsageError as exc:
        assert str(exc).startswith("r.toml: ")
        return
    assert isinstance(out["a"], int) and isinstance(out["t"]["s"], str)


@FUZZ
@given(st.text(max_size=200))
def test_toml_text(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("toml") / "r.toml"
    path.write_text(text)
    try:
        tomlconfig.validate(tomlconfig.read(path), SCHEMA, str(path))
    except UsageError:
        pass


@FUZZ
@given(st.binary(max_size=300) | st.builds(
    lambda h, p: _safetensors_bytes(h, p),
    st.fixed_dictionaries({"S": tensor_entries}, optional={"__metadata__": st.fixed_dictionaries(
        {"monet_edit": st.text(max_size=40) | json_values.map(json.dumps)})}),
    st.binary(max_size=128)))
def test_profile_file_reader(tmp_path_factory, blob):
    from monet_edit import profiling

    path = tmp_path_factory.mktemp("profile") / "p.safetensors"
    path.write_bytes(blob)
    try:
        prof = profiling.load(path)
    except UsageError:
        return
    assert prof.n > 0 and prof.S.dim() == 3
