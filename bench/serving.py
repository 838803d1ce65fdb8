"""`make bench-serving`: greedy decoding tokens/s on `tiny`, vLLM against monet_edit's generate (CPU).

Runs in vLLM's environment (.venv-vllm). Both sides compute in fp32 on the same number of torch
threads (`--threads`, default 1: steadier on a shared machine; vLLM's worker is told through
OMP_NUM_THREADS). For batch sizes 1 and 16, each side decodes `--tokens` new tokens per sequence
from the same prompt, EOS ignored; the best of `--repeats` timed runs counts, after a warm-up run.
vLLM's engine start-up is reported separately. Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROMPT = "def main():\n    parser = argparse.ArgumentParser("


def best(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # stdout is for the result

    import torch
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from monet_edit.model.checkpoint import resolve
    from monet_edit.model.generate import sample
    from monet_edit.model.loading import load_model, load_tokenizer

    torch.set_num_threads(args.threads)
    ids = load_tokenizer("tiny").encode(PROMPT)
    model = load_model("tiny")
    result: dict = {"model": "tiny", "threads": args.threads, "new_tokens": args.tokens,
                    "prompt_tokens": len(ids), "dtype": "float32"}
    start = time.perf_counter()
    llm = LLM(str(resolve("tiny")), dtype="float32", max_model_len=512, kv_cache_memory_bytes=256 << 20,
              enforce_eager=True, seed=0)
    result["vllm_start_s"] = round(time.perf_counter() - start, 1)
    params = SamplingParams(temperature=0, max_tokens=args.tokens, ignore_eos=True)
    try:
        for batch in (1, 16):
            ours = best(lambda b=batch: sample(model, ids, num_samples=b, max_new_tokens=args.tokens,
                                               temperature=0), args.repeats)
            prompts = [TokensPrompt(prompt_token_ids=ids)] * batch
            theirs = best(lambda p=prompts: llm.generate(p, params, use_tqdm=False), args.repeats)
            result[f"batch{batch}"] = {"monet_edit_tok_s": round(batch * args.tokens / ours, 1),
                                       "vllm_tok_s": round(batch * args.tokens / theirs, 1)}
    finally:
        llm.llm_engine.engine_core.shutdown()
    sys.stdout.write(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
