"""vLLM tokenizer mode "monet": the checkpoint's tokenizer, encoding as monet-edit's does.

Checkpoints that monet-edit trains carry only tokenizer.json, with no tokenizer_config.json to
name the special tokens, so transformers would encode without BOS and never stop at EOS. Here
the same BOS/EOS that monet_edit.model.tokenizer finds are declared and BOS is prepended, as
`load_tokenizer(...).encode` does. Checkpoints with a tokenizer_config.json (the published
MonetLLM ones) load exactly as transformers reads them.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer
from vllm.tokenizers.hf import get_cached_tokenizer

from ..model.tokenizer import Tokenizer


def special_tokens(path: str | Path) -> dict:
    """Keyword arguments for AutoTokenizer that declare BOS/EOS/pad of a bare tokenizer.json."""
    directory = Path(path)
    if not (directory / "tokenizer.json").is_file() or (directory / "tokenizer_config.json").is_file():
        return {}
    from tokenizers import Tokenizer as Vocabulary

    tok = Tokenizer.from_dir(directory)
    backend = Vocabulary.from_file(str(directory / "tokenizer.json"))
    out: dict = {}
    if tok.bos_id is not None:
        out.update(bos_token=backend.id_to_token(tok.bos_id), add_bos_token=True)
    if tok.eos_id is not None:
        out["eos_token"] = backend.id_to_token(tok.eos_id)
    if backend.token_to_id("<pad>") is not None:
        out["pad_token"] = "<pad>"
    return out


class MonetTokenizer:
    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | Path, *args, trust_remote_code: bool = False,
                        revision: str | None = None, download_dir: str | None = None, **kwargs):
        kwargs.pop("mistral_format", None)
        kwargs = {**special_tokens(path_or_repo_id), **kwargs}
        tokenizer = AutoTokenizer.from_pretrained(path_or_repo_id, *args, trust_remote_code=trust_remote_code,
                                                  revision=revision, cache_dir=download_dir, **kwargs)
        return get_cached_tokenizer(tokenizer)
