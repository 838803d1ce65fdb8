"""A loaded Monet model (masks applied) as an lm-evaluation-harness `LM`.

Imports lm_eval at module level: reach it through `harness`, which checks that the optional extra
is installed. Requests map onto our own scoring and sampling code:
- loglikelihood: lm-eval's TemplateLM tokenizes (context, continuation) pairs (context with BOS,
  as our corpora and the mcq suite are encoded); requests sharing a context are scored as one
  batch on its KV cache by `mcq.continuation_logliks`, which also truncates to the model's positions.
- loglikelihood_rolling: lm-eval's rolling windows (BOS first, full context per window), each
  scored the same way and summed per document.
- generate_until: `generate.sample` (greedy unless the task asks for sampling), stopping at EOS or
  once a stop string appears; the text is cut before the first stop string.
"""

from __future__ import annotations

from lm_eval import utils
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import normalize_gen_kwargs

from ..model.generate import sample
from .suites.mcq import continuation_logliks


class MonetLM(TemplateLM):
    """lm-eval's view of one Monet model and its tokenizer; `seed` seeds sampled generation."""

    def __init__(self, model, tokenizer, *, batch_size: int = 8, seed: int = 0) -> None:
        super().__init__()
        self.model, self.tok = model, tokenizer
        self.batch_size, self.seed = batch_size, seed
        self._device = next(model.parameters()).device

    @property
    def max_length(self) -> int:
        return self.model.config.max_position_embeddings

    @property
    def eot_token_id(self) -> int:
        return self.tok.eos_id

    @property
    def prefix_token_id(self) -> int:
        return self.tok.bos_id if self.tok.bos_id is not None else self.tok.eos_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tok.encode(string, add_bos=add_special_tokens is not False)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """(log-likelihood, is_greedy) per ((context, continuation), context_ids, continuation_ids)."""
        by_context: dict[tuple[int, ...], list[int]] = {}
        for i, (_, context, _) in enumerate(requests):
            by_context.setdefault(tuple(context), []).append(i)
        out: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
        for context, indices in by_context.items():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start:start + self.batch_size]
                scores = continuation_logliks(self.model, list(context), [requests[i][2] for i in chunk])
                for i, score in zip(chunk, scores, strict=True):
                    out[i] = score
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of each whole text, in windows of the model's positions."""
        totals = []
        for (text,) in (req.args for req in requests):
            windows = map(utils.make_disjoint_window, utils.get_rolling_token_windows(
                token_list=self.tok_encode(text, add_special_tokens=False), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1))
            totals.append(sum(continuation_logliks(self.model, ctx, [pred])[0][0] for ctx, pred in windows))
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Continuations of each context, greedy by default, cut before the first stop string."""
        return [self._generate(context, gen_kwargs, self.seed + n)
                for n, (context, gen_kwargs) in enumerate(req.args for req in requests)]

    def _generate(self, context: str, gen_kwargs: dict, seed: int) -> str:
        kwargs = normalize_gen_kwargs(gen_kwargs)
        until = [u for u in kwargs["until"] if u]
        new = min(kwargs["max_gen_toks"], self.max_length - 1)
        ids = self.tok_encode(context)[-(self.max_length - new):]

        def stopped(row: list[int]) -> bool:
            return any(u in self.tok.decode(row) for u in until)

        temperature = float(kwargs.get("temperature", 0.0)) if kwargs["do_sample"] else 0.0
        row = sample(self.model, ids, max_new_tokens=new, temperature=temperature,
                     top_p=float(kwargs.get("top_p") or 1.0), seed=seed, eos_id=self.tok.eos_id,
                     stop=stopped if until else None)[0]
        text = self.tok.decode(row)
        for u in until:
            text = text.split(u, 1)[0]
        return text
