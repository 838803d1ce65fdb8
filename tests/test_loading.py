"""Checkpoint loading: names and shapes of the released checkpoint format, sharding, masks, bad input."""

import json
import shutil

import pytest
import torch
from helpers import random_mask, random_model, tiny_config, write_checkpoint
from safetensors.torch import load_file, save_file

from monet_edit import load_model, load_tokenizer
from monet_edit.errors import UsageError
from monet_edit.model.checkpoint import expected_shapes, mask_key, model_fingerprint
from monet_edit.model.masks import load as load_mask_file
from monet_edit.model.masks import save as save_mask_file
from monet_edit.model.tokenizer import Tokenizer


def design_names(cfg):
    """Tensor names and shapes written out from the released checkpoint format, independently of the model."""
    d, E, m, H, V = cfg.hidden_size, cfg.moe_experts, cfg.moe_dim, cfg.moe_heads, cfg.vocab_size
    kv = cfg.num_key_value_heads * cfg.head_dim
    out = {"model.embed_tokens.weight": (V, d), "lm_head.weight": (V, d), "model.norm.weight": (d,)}
    for L in range(cfg.num_hidden_layers):
        p = f"model.layers.{L}."
        out.update({p + "self_attn.q_proj.weight": (d, d), p + "self_attn.k_proj.weight": (kv, d),
                    p + "self_attn.v_proj.weight": (kv, d), p + "self_attn.o_proj.weight": (d, d),
                    p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,)})
        if cfg.moe_decompose == "horizontal":
            out.update({p + "moe.u.weight": (E * m, d), p + "moe.u.bias": (E * m,),
                        p + "moe.v.weight": (d, E * m), p + "moe.b": (E, d)})
        else:
            for s in ("u1", "u2"):
                out.update({p + f"moe.{s}.weight": (E * m // 2, d), p + f"moe.{s}.bias": (E * m // 2,)})
            for s in ("v11", "v12", "v21", "v22"):
                out[p + f"moe.{s}.weight"] = (d // 2, E * m // 2)
            out.update({p + "moe.b1": (E, d // 2), p + "moe.b2": (E, d // 2)})
        if L % cfg.moe_groups == 0:
            out.update({p + "router.w1.weight": (H * E, d), p + "router.w2.weight": (H * E, d)})
            for n in ("norm1", "norm2"):
                out.update({p + f"router.{n}.running_mean": (H,), p + f"router.{n}.running_var": (H,),
                            p + f"router.{n}.num_batches_tracked": ()})
    return out


@pytest.mark.parametrize("decompose", ["horizontal", "vertical"])
def test_design_names_and_shapes_load_exactly(tmp_path, decompose):
    cfg = tiny_config(decompose)
    assert expected_shapes(cfg) == design_names(cfg)
    # a checkpoint built only from those names (not from our model) loads with nothing missing
    gen = torch.Generator().manual_seed(0)
    sd = {k: (torch.randn(s, generator=gen) * 0.02 if s else torch.tensor(0)) for k, s in design_names(cfg).items()}
    for k in sd:
        if k.endswith("running_var"):
            sd[k] = torch.ones_like(sd[k])
    (tmp_path / "config.json").write_text(cfg.to_json())
    save_file(sd, str(tmp_path / "model.safetensors"))
    model = load_model(tmp_path)
    assert not model.training
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v.float(), sd[k].float())


def test_load_logits_equal_original(tmp_path):
    cfg = tiny_config("vertical")
    model = random_model(cfg)
    write_checkpoint(model, tmp_path)
    ids = torch.randint(0, cfg.vocab_size, (2, 9))
    loaded = load_model(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)
    # on CPU the output projections are stored expert-major for the routed path; saved, they are
    # the published layout again, byte for byte
    v = loaded.model.layers[0].moe.v11.weight
    assert v.t().is_contiguous() and not v.is_contiguous()
    write_checkpoint(loaded, tmp_path / "again")
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (tmp_path / "model.safetensors").read_bytes()


def test_bf16_checkpoint_and_dtype_argument(tmp_path):
    cfg = tiny_config("horizontal")
    write_checkpoint(random_model(cfg), tmp_path, dtype=torch.bfloat16)
    assert load_model(tmp_path).lm_head.weight.dtype == torch.float32
    m = load_model(tmp_path, dtype="bf16")
    assert m.lm_head.weight.dtype == torch.bfloat16
    assert m.model.routers()[0].norm1.running_var.dtype == torch.float32
    assert m(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, cfg.vocab_size)


def test_sharded_checkpoint(tmp_path):
    cfg = tiny_config("horizontal")
    model = random_model(cfg)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    names = sorted(sd)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    weight_map = {}
    for fname, keys in shards.items():
        save_file({k: sd[k] for k in keys}, str(tmp_path / fname))
        weight_map.update({k: fname for k in keys})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (tmp_path / "config.json").write_text(cfg.to_json())
    ids = torch.randint(0, cfg.vocab_size, (1, 5))
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path)(ids).logits, model(ids).logits)


def test_mask_argument_file_and_checkpoint_masks(tmp_path):
    cfg = tiny_config("horizontal")
    model = random_model(cfg)
    masks = random_mask(cfg, 0.25)
    write_checkpoint(model, tmp_path / "base")
    save_mask_file(tmp_path / "m.safetensors", masks, cfg, {"rule": "test"})
    loaded_masks, meta = load_mask_file(tmp_path / "m.safetensors", cfg)
    assert meta["rule"] == "test" and meta["counts"] == [int(m.sum()) for m in masks.values()]
    ids = torch.randint(0, cfg.vocab_size, (1, 6))
    model.set_masks(masks)
    with torch.no_grad():
        want = model(ids).logits
        for m in (load_model(tmp_path / "base", mask=tmp_path / "m.safetensors"),
                  load_model(tmp_path / "base", mask=loaded_masks)):
            torch.testing.assert_close(m(ids).logits, want)
    # masks stored in the checkpoint itself are applied, and do not change the fingerprint
    shutil.copytree(tmp_path / "base", tmp_path / "edited")
    sd = load_file(str(tmp_path / "edited" / "model.safetensors"))
    sd.update({mask_key(cfg, g): m for g, m in masks.items()})
    save_file(sd, str(tmp_path / "edited" / "model.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path / "edited")(ids).logits, want)
    assert model_fingerprint(tmp_path / "edited") == model_fingerprint(tmp_path / "base")


def test_tokenizer_adds_bos(tiny_ckpt):
    tok = load_tokenizer(tiny_ckpt)
    ids, offsets = tok.encode_with_offsets("def main")
    assert ids[0] == tok.bos_id == 1 and offsets[0] == (0, 0)
    assert tok.decode(ids) == "def main"
    assert tok.vocab_size > 3


def test_sentencepiece_tokenizer(tmp_path):
    import sentencepiece as spm

    text = tmp_path / "t.txt"
    text.write_text("\n".join(["the law of the land", "def main return zero", "der Hund ist gross"] * 200))
    spm.SentencePieceTrainer.Train(input=str(text), model_prefix=str(tmp_path / "tokenizer"), vocab_size=40, hard_vocab_limit=False,
                                   bos_id=1, eos_id=2, unk_id=0, pad_id=-1, minloglevel=2)
    tok = Tokenizer.from_dir(tmp_path)
    ids = tok.encode("the law")
    assert ids[0] == 1 and tok.decode(ids[1:]) == "the law"


# ---- bad input: one clear UsageError naming the problem -----------------------------------------

def _break(tmp_path, how):
    cfg = tiny_config("horizontal")
    write_checkpoint(random_model(cfg), tmp_path)
    cj, st = tmp_path / "config.json", tmp_path / "model.safetensors"
    if how == "config not json":
        cj.write_text("{not json")
    elif how == "config lacks fields":
        d = json.loads(cj.read_text())
        del d["moe_experts"]
        cj.write_text(json.dumps(d))
    elif how == "unknown model_type":
        d = json.loads(cj.read_text())
        d["model_type"] = "llama"
        cj.write_text(json.dumps(d))
    elif how == "bad decomposition":
        d = json.loads(cj.read_text())
        d["moe_decompose"] = "diagonal"
        cj.write_text(json.dumps(d))
    elif how == "group size does not divide layers":
        d = json.loads(cj.read_text())
        d["moe_groups"] = 3
        cj.write_text(json.dumps(d))
    elif how == "truncated safetensors":
        st.write_bytes(st.read_bytes()[:-100])
    elif how == "header lies":
        raw = bytearray(st.read_bytes())
        raw[0:8] = (10**9).to_bytes(8, "little")
        st.write_bytes(bytes(raw))
    elif how == "wrong shapes":
        d = json.loads(cj.read_text())
        d["moe_dim"] = 8
        cj.write_text(json.dumps(d))
    elif how == "missing weights":
        st.unlink()
    return tmp_path


@pytest.mark.parametrize("how,expect", [
    ("config not json", "not valid JSON"),
    ("config lacks fields", "missing required field(s): moe_experts"),
    ("unknown model_type", "model_type is 'llama'"),
    ("bad decomposition", "moe_decompose"),
    ("group size does not divide layers", "does not divide"),
    ("truncated safetensors", "truncated"),
    ("header lies", "corrupt safetensors header"),
    ("wrong shapes", "has shape"),
    ("missing weights", "no model.safetensors"),
])
def test_bad_checkpoints(tmp_path, how, expect):
    path = _break(tmp_path, how)
    with pytest.raises(UsageError) as exc:
        load_model(path)
    assert expect in str(exc.value)
    assert "\n" not in str(exc.value)


def test_missing_directory_and_offline_hub(tmp_path):
    with pytest.raises(UsageError, match="no such directory"):
        load_model(tmp_path / "nope")
    with pytest.raises(UsageError, match="MonetLLM/monet-vd-1.4B-100BT-hf"):
        load_model("MonetLLM/monet-vd-1.4B-100BT-hf")


def test_mask_that_does_not_fit(tmp_path):
    cfg = tiny_config("horizontal")
    write_checkpoint(random_model(cfg), tmp_path)
    with pytest.raises(UsageError, match=r"the model needs \[8, 8\]"):
        load_model(tmp_path, mask={0: torch.zeros(4, 4, dtype=torch.bool)})
    with pytest.raises(UsageError, match="out of range"):
        load_model(tmp_path, mask={7: torch.zeros(8, 8, dtype=torch.bool)})
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(UsageError, match="not a mask file"):
        load_model(tmp_path, mask=tmp_path / "bad.safetensors")
