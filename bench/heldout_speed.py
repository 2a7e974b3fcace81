"""Held-out scoring speed: ``scoring.score_documents`` (the evaluate stage's bits/byte pass) on
real text with a real model, tokens per second and the summed NLL, so two checkouts of the
scorer can be timed side by side and shown to give the same scores.

    PYTHONPATH=CHECKOUT .venv/bin/python bench/heldout_speed.py \\
        --model /work/runs/lg/artifacts/models/KEY/hf --texts SAMPLES/general/news.jsonl \\
        --docs 40 --window 256 --batch-size 8

``PYTHONPATH`` picks the checkout whose ``pipeline`` is timed (run the file by path, so the
bench itself comes from this one). It prints the pass's seconds, tokens, tokens/s and the total
NLL in nats (equal to ~1e-6 relative between two correct scorers). Not a test: it loads the
real 135M model.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline.stages.evaluate import scoring


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="an HF model directory")
    parser.add_argument("--texts", type=Path, required=True, help="JSONL with a text field")
    parser.add_argument("--docs", type=int, default=40)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    with args.texts.open() as f:
        texts = [json.loads(line)["text"] for line, _ in zip(f, range(args.docs), strict=False)]
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(args.model)
    start = time.perf_counter()
    scores = scoring.score_documents(model, tok, texts, args.window, args.batch_size)
    seconds = time.perf_counter() - start
    tokens = sum(s.tokens for s in scores)
    print(f"{scoring.__file__}: {seconds:.1f} s, {tokens} tokens, {tokens / seconds:.0f} "
          f"tokens/s, NLL {sum(s.nll for s in scores):.4f} nats", flush=True)


if __name__ == "__main__":
    main()
