"""One tokenizer interface over Hugging Face `tokenizers` (tokenizer.json) and SentencePiece.

Encoding adds BOS as Llama does. Offsets map tokens back to characters (used to give each token
the toxicity label of the word it belongs to).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UsageError

BOS_NAMES = ("<s>", "<|begin_of_text|>", "<bos>")
EOS_NAMES = ("</s>", "<|end_of_text|>", "<eos>")


class Tokenizer:
    def __init__(self, backend, kind: str, bos_id: int | None, eos_id: int | None, path: Path) -> None:
        self._tok = backend
        self.kind = kind
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.path = path

    @classmethod
    def from_dir(cls, directory: Path) -> Tokenizer:
        cfg = {}
        if (directory / "config.json").is_file():
            try:
                cfg = json.loads((directory / "config.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                cfg = {}
        tj, sp = directory / "tokenizer.json", directory / "tokenizer.model"
        if tj.is_file():
            from tokenizers import Tokenizer as HFTokenizer

            try:
                tok = HFTokenizer.from_file(str(tj))
            except Exception as exc:  # tokenizers raises a bare Exception on bad files
                raise UsageError(f"{tj}: not a valid tokenizer.json ({str(exc)[:120]})") from None
            ids = [tok.token_to_id(n) for n in BOS_NAMES]
            eos = [tok.token_to_id(n) for n in EOS_NAMES]
            bos_id = next((i for i in ids if i is not None), cfg.get("bos_token_id"))
            eos_id = next((i for i in eos if i is not None), cfg.get("eos_token_id"))
            return cls(tok, "tokenizers", bos_id, eos_id, tj)
        if sp.is_file():
            import sentencepiece as spm

            proc = spm.SentencePieceProcessor()
            try:
                proc.Load(str(sp))
            except (OSError, RuntimeError) as exc:
                raise UsageError(f"{sp}: not a valid SentencePiece model ({str(exc)[:120]})") from None
            bos = proc.bos_id() if proc.bos_id() >= 0 else cfg.get("bos_token_id")
            eos = proc.eos_id() if proc.eos_id() >= 0 else cfg.get("eos_token_id")
            return cls(proc, "sentencepiece", bos, eos, sp)
        raise UsageError(f"{directory}: no tokenizer.json or tokenizer.model")

    @property
    def vocab_size(self) -> int:
        if self.kind == "tokenizers":
            return self._tok.get_vocab_size()
        return self._tok.GetPieceSize()

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        ids, _ = self.encode_with_offsets(text, add_bos)
        return ids

    def encode_with_offsets(self, text: str, add_bos: bool = True) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids and (start, end) character spans; BOS gets the empty span (0, 0)."""
        if self.kind == "tokenizers":
            enc = self._tok.encode(text, add_special_tokens=False)
            ids, offsets = list(enc.ids), [tuple(o) for o in enc.offsets]
        else:
            enc = self._tok.EncodeAsOffsetMapping(text)
            ids, offsets = list(enc["ids"]), [tuple(o) for o in enc["offsets"]]
        if add_bos and self.bos_id is not None:
            ids, offsets = [self.bos_id] + ids, [(0, 0)] + offsets
        return ids, offsets

    def decode(self, ids: list[int]) -> str:
        if self.kind == "tokenizers":
            return self._tok.decode(ids, skip_special_tokens=True)
        return self._tok.Decode(ids)
