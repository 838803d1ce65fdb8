"""Training the byte-level BPE tokenizer of a model we train ourselves (tokenizers library)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

SPECIALS = ["<pad>", "<s>", "</s>"]  # ids 0, 1, 2: pad, BOS, EOS as in Llama


def train_bpe(texts: Iterable[str], vocab_size: int, path: Path) -> Path:
    """Train a byte-level BPE with Llama-style <s>/</s> specials and save tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path
