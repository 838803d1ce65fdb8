"""The same command twice gives byte-identical profile and mask files and the same eval numbers."""

from monet_edit import load_model, load_tokenizer, profiling
from monet_edit.model import checkpoint, scoring
from monet_edit.selection import select as selection


def _corpus(tmp_path, name, word):
    path = tmp_path / f"{name}.txt"
    path.write_text("\n\n".join(f"{word} number {i} " + f"{word} and more {word} " * 20 for i in range(200)))
    return path


def test_profiles_and_masks_are_byte_identical(tiny_ckpt, tmp_path):
    a_corpus, b_corpus = _corpus(tmp_path, "a", "law"), _corpus(tmp_path, "b", "def")
    runs = []
    for run in ("one", "two"):
        paths = profiling.ensure_profiles(str(tiny_ckpt), [str(a_corpus), str(b_corpus)], tokens=3000,
                                          seq_len=32, batch_size=4, out_dir=tmp_path / run, quiet=True)
        files = [paths[str(a_corpus)], paths[str(b_corpus)]]
        target, other = (profiling.load(f) for f in files)
        config = checkpoint.load_config(tiny_ckpt)
        mask_path = selection.write_mask(tmp_path / run / "mask.safetensors", selection.skew(target, [other], 1.5),
                                         config, rule="skew", params={"ratio": 1.5},
                                         model_fingerprint=checkpoint.model_fingerprint(tiny_ckpt),
                                         sources={"a": files[0].name})
        runs.append([f.read_bytes() for f in (*files, mask_path)])
    assert runs[0] == runs[1]
    assert 2900 <= profiling.load(files[0]).n <= 3000  # whole rows of 32 tokens


def test_eval_numbers_repeat(tiny_ckpt):
    tok = load_tokenizer(tiny_ckpt)
    docs = [{"text": f"def f{i}(x):\n    return x + {i}\n"} for i in range(40)]
    rows = scoring.rows(scoring.token_stream(tok, docs), 16)
    first = scoring.loss_sums(load_model(tiny_ckpt), rows)
    second = scoring.loss_sums(load_model(tiny_ckpt), rows)
    assert first == second and first.tokens > 0
