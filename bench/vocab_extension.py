"""Vocabulary extension: fertility of GPT-2, the base model's tokenizer, the base extended with N
domain tokens, and the domain-trained tokenizer, on a domain's held-out text and general text.

    .venv/bin/python -m bench.vocab_extension [--domain medical] [--new-tokens 2000]

Runs the tokenizer stage (and what it needs: ingest, the prepared base model) of the shipped
domain at ``--profile base`` (continue mode) with ``tokenizer.extend.num_new_tokens`` set, in
``--workdir`` (default ``dapt-work``, whose ``samples/`` must hold `dapt samples build`'s output).
Not a test: it prints a table for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import yaml

from pipeline import domains
from pipeline.driver import Session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domain", default="medical")
    parser.add_argument("--new-tokens", type=int, default=2000)
    parser.add_argument("--workdir", type=Path, default=Path("dapt-work"))
    args = parser.parse_args()
    spec = domains.get(args.domain).spec.model_dump(mode="json", exclude_none=True)
    spec.pop("schedule", None)
    spec.setdefault("profiles", {}).setdefault("base", {})["tokenizer"] = {
        "extend": {"num_new_tokens": args.new_tokens}}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{args.domain}.yaml"
        path.write_text(yaml.safe_dump(spec))
        session = Session.open(None, "base", workdir=args.workdir.resolve(), domain_file=path)
        t0 = time.perf_counter()
        session.run_stage("tokenizer")
    m = session.artifacts["tokenizer"].manifest
    print(f"{args.domain}: {m.counts['new_tokens']} new tokens from {m.counts['words_scanned']:,} "
          f"words; tokenizer stage {time.perf_counter() - t0:.0f} s")
    print(f"{'tokenizer':10} {'text':8} {'fertility':>9} {'chars/token':>11} {'tokens':>8}")
    for name, parts in m.extra["efficiency"].items():
        for part, v in parts.items():
            print(f"{name:10} {part:8} {v['fertility']:9.4f} {v['chars_per_token']:11.3f} "
                  f"{int(v['eval_tokens']):8d}")


if __name__ == "__main__":
    main()
