"""What masking one expert does to a short text: the same model before and after.

The model is loaded once; a request installs its checkpoint's own masks plus expert (i, j) of
group g (Monet's exact per-expert masking, model/monet.py), runs, and puts the checkpoint's masks
back, under a lock (the server answers requests on several threads). Reported: the expert's
routing weight on every token, each token's next-token loss before and after, and a greedy
continuation before and after.
"""

from __future__ import annotations

import threading
from typing import Any

import torch
import torch.nn.functional as F

from .query import QueryError

MAX_CHARS = 2000
MAX_NEW_TOKENS = 64


class Masking:
    """Before/after runs of one model (the atlas's, checked by fingerprint)."""

    def __init__(self, ckpt, device: Any = None) -> None:
        from ...model import loading

        self.model = loading.load_model(ckpt, device=device)
        self.tokenizer = loading.load_tokenizer(ckpt)
        self.own = self.model.masks()
        self.lock = threading.Lock()

    def _masks(self, g: int, i: int, j: int) -> dict[int, torch.Tensor]:
        E = self.model.config.moe_experts
        extra = torch.zeros(E, E, dtype=torch.bool)
        extra[i, j] = True
        masks = {k: v.cpu() for k, v in self.own.items()}
        masks[g] = masks[g] | extra if g in masks else extra
        return masks

    @torch.inference_mode()
    def _pass(self, ids: torch.Tensor) -> tuple[torch.Tensor, list]:
        out = self.model(ids, output_routing=True)
        nll = F.cross_entropy(out.logits[0, :-1].float(), ids[0, 1:], reduction="none")
        return nll, out.routing

    def run(self, g: int, i: int, j: int, text: str, new_tokens: int = 16) -> dict:
        """The before/after document for expert (i, j) of group g (already validated) on `text`."""
        from ...model import generate
        from ..experts import token_text

        if text is not None and not isinstance(text, str):
            raise QueryError(f"text must be a string, got {type(text).__name__}")
        if not text or not text.strip():
            raise QueryError("text is empty: type a short text to run before and after masking")
        if len(text) > MAX_CHARS:
            raise QueryError(f"text is {len(text)} characters long; at most {MAX_CHARS}", 413)
        ids = self.tokenizer.encode(text)
        limit = self.model.config.max_position_embeddings
        if len(ids) < 2:
            raise QueryError("text is too short: it must encode to at least one token after <s>")
        if len(ids) + new_tokens > limit:
            raise QueryError(f"text ({len(ids)} tokens) + {new_tokens} new tokens exceed the model's {limit} "
                             f"positions; shorten it", 413)
        device = next(self.model.parameters()).device
        batch = torch.tensor([ids], device=device)
        E = self.model.config.moe_experts
        with self.lock:
            try:
                before, routing = self._pass(batch)
                cont_before = generate.sample(self.model, ids, max_new_tokens=new_tokens, temperature=0,
                                              eos_id=self.tokenizer.eos_id)[0]
                self.model.set_masks(self._masks(g, i, j))
                after, _ = self._pass(batch)
                cont_after = generate.sample(self.model, ids, max_new_tokens=new_tokens, temperature=0,
                                             eos_id=self.tokenizer.eos_id)[0]
            finally:
                self.model.set_masks(self.own)
        g1, g2 = routing[g]
        weight = (g1[0, :, :, i].float() * g2[0, :, :, j].float()).sum(-1).cpu().tolist()
        tokens = [{"token": token_text(self.tokenizer, t), "token_id": t, "weight": weight[n],
                   "loss_before": None if n == 0 else float(before[n - 1]),
                   "loss_after": None if n == 0 else float(after[n - 1])} for n, t in enumerate(ids)]
        decode = self.tokenizer.decode
        return {"group": g, "i": i, "j": j, "id": i * E + j, "text": text,
                "already_masked": bool(g in self.own and self.own[g][i, j]), "tokens": tokens,
                "loss_before": float(before.mean()), "loss_after": float(after.mean()),
                "fires_on": sum(1 for w in weight if w > 0),
                "continuation_before": decode(cont_before), "continuation_after": decode(cont_after),
                "new_tokens": new_tokens}
