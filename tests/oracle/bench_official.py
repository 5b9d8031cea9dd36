"""The official runner and minigrok, timed side by side on one checkpoint (issue: performance).

    python tests/oracle/bench_official.py --checkpoint DIR [--new-tokens 32] [--json]

Runs the official InferenceRunner (run.py's loop, in the oracle venv, 8 emulated devices)
through the oracle worker: its start-up (load + compile + first sample) and its decode speed
(the time of a long generation minus a short one, per extra token). Then ``minigrok bench``
on the same checkpoint in this process. Needs the official source and the oracle venv
(see README.md here); the tokenizer comes from $MINIGROK_TOKENIZER.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))          # the repository

from oracle_harness import Oracle, source_missing  # noqa: E402

from minigrok.bench import bench  # noqa: E402

PROMPT = "The answer to life, the universe and everything is"


def official(checkpoint, tokenizer, new_tokens, bucket=64):
    oracle = Oracle()
    try:
        def generate(n):
            t0 = time.perf_counter()
            out, _ = oracle("generate", checkpoint=str(checkpoint), pad_bucket=bucket,
                            tokenizer=str(tokenizer), dtype="bfloat16", prompt=PROMPT,
                            temperature=0.01, nucleus_p=1.0, seed=1, max_len=n)
            return time.perf_counter() - t0, len(out["tokens"])

        t0 = time.perf_counter()
        first, _ = generate(2)                       # init, load, compile, 2 tokens
        startup = time.perf_counter() - t0
        short, n_short = generate(2)
        long, n_long = generate(2 + new_tokens)
        return {"official_startup_s": round(startup, 2),
                "official_decode_tok_s": round((n_long - n_short) / (long - short), 3)}
    finally:
        oracle.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    reason = source_missing()
    if reason:
        sys.exit(reason)
    tokenizer = os.environ.get("MINIGROK_TOKENIZER")
    if not tokenizer:
        sys.exit("set MINIGROK_TOKENIZER to Grok-1's tokenizer.model")
    result = official(args.checkpoint, tokenizer, args.new_tokens)
    ours = bench(args.checkpoint, prompt_len=16, new_tokens=args.new_tokens)
    result.update({f"minigrok_{k}": v for k, v in ours.items()
                   if k in ("ttft_s", "decode_tok_s", "peak_anon_mb")})
    result["decode_speedup"] = round(result["minigrok_decode_tok_s"]
                                     / result["official_decode_tok_s"], 1)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:<24} {v}")


if __name__ == "__main__":
    main()
