"""Tokenizer training and tokenize-and-pack throughput: our stage code vs the direct baselines.

    .venv/bin/python -m bench.tokenizer_bench [--mb 200] [--vocab 32768] [--seq-len 2048]

Corpus: every sample corpus (`dapt samples build`: medical, legal, finance, general news and the
task texts, ~90 MB of real text), repeated whole until it reaches ``--mb`` MB, written as
ingest-style Parquet shards (and as .txt files for the trainer baseline). The repeats are exact
copies, so word statistics are those of the ~90 MB corpus at larger counts.

1. Tokenizer training (byte-level BPE, ``--vocab``): ``pipeline.stages.tokenizer.run`` (streams the
   shards, trains, writes the HF files, measures fertility and the round-trip gate) vs
   ``Tokenizer.train(files=...)`` on the same text as .txt files. Goal: ratio <= 1.10.
2. Tokenize-and-pack with that tokenizer, ``--threads`` cores: ``pipeline.stages.pretrain.packing``
(read
   Parquet, encode in N processes, EOS, write sequence shards) vs raw ``encode_batch`` with N
   rayon threads on the texts already in memory (reading and writing not timed: a ceiling), and
   vs the ``datasets.map`` tokenize + ``group_texts`` recipe of transformers' ``run_clm.py``
   with ``num_proc=N``. Goals: >= 0.9 of raw, >= 3x the datasets recipe.

Each measurement runs in a fresh process, which reports its own peak RSS (and its children's).
Not a test: the numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from itertools import chain
from pathlib import Path

import pyarrow as pa
import pyarrow.json as pj
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent

DOCS_PER_SHARD = 50_000


def build_corpus(samples_dir: Path, out: Path, mb: int) -> dict[str, int]:
    from pipeline import samples

    if not (samples_dir / "general/news.jsonl").exists():
        samples.build_all(samples_dir)
    texts: list[str] = []
    for path in sorted(samples_dir.glob("*/*.jsonl")):
        texts += [t for t in pj.read_json(path).column("text").to_pylist() if t]
    base_bytes = sum(len(t.encode()) for t in texts)
    copies = -(-mb * 1_000_000 // base_bytes)
    corpus = texts * copies
    ingest = out / "ingest"
    txt = out / "txt"
    ingest.mkdir(parents=True)
    txt.mkdir()
    for i in range(0, len(corpus), DOCS_PER_SHARD):
        chunk = corpus[i:i + DOCS_PER_SHARD]
        ids = [str(i + j) for j in range(len(chunk))]
        pq.write_table(pa.table({"doc_id": ids, "source": ["bench"] * len(chunk), "text": chunk}),
                       ingest / f"train-{i // DOCS_PER_SHARD:05d}.parquet", compression="zstd")
        (txt / f"part-{i // DOCS_PER_SHARD:05d}.txt").write_text("\n".join(chunk) + "\n")
    held = texts[::200][:2000]
    pq.write_table(pa.table({"doc_id": [f"e{i}" for i in range(len(held))],
                             "source": ["bench"] * len(held), "text": held}),
                   ingest / "eval.parquet")
    n_bytes = sum(len(t.encode()) for t in corpus)
    n_chars = sum(len(t) for t in corpus)
    from pipeline.engine.artifacts import Manifest

    (ingest / "manifest.json").write_text(Manifest(
        stage="ingest", counts={"train_chars": n_chars},
        extra={"source_names": ["bench"], "general_sources": []}).to_json())
    return {"docs": len(corpus), "bytes": n_bytes, "copies": copies, "base_bytes": base_bytes}


def _rss() -> dict[str, float]:
    """Peak RSS of this process (VmHWM: getrusage would carry the parent's peak across exec)
    and the largest of its finished children's (pool workers)."""
    status = Path("/proc/self/status").read_text()
    own = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"rss_mb": own / 1024, "children_rss_mb": kids / 1024}


# --- parts, each run in its own process ------------------------------------------------------


def part_train_stage(work: Path, vocab: int) -> dict:
    from pipeline.config import TokenizerConfig
    from pipeline.engine.artifacts import Artifact
    from pipeline.stages.tokenizer import stage as tokenizer

    out = work / "tok-stage"
    out.mkdir()
    t0 = time.perf_counter()
    m = tokenizer.run(TokenizerConfig(vocab_size=vocab), {"ingest": Artifact(
        "ingest", "bench", work / "ingest")}, out)
    return {"seconds": time.perf_counter() - t0, "vocab": m.counts["vocab_size"], **_rss()}


def part_train_direct(work: Path, vocab: int) -> dict:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, min_frequency=2,
                                  special_tokens=["<|endoftext|>", "<|pad|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    t0 = time.perf_counter()
    tok.train([str(p) for p in sorted((work / "txt").glob("*.txt"))], trainer)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "vocab": tok.get_vocab_size(), **_rss()}


def part_pack_stage(work: Path, threads: int, seq_len: int) -> dict:
    from pipeline.stages.pretrain import packing

    data = work / "packed"
    data.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    enc = packing.encode(work / "tok-stage/tokenizer.json",
                         sorted((work / "ingest").glob("train-*.parquet")), 0,
                         data / "staging.bin", source_names=["bench"], num_workers=threads)
    selection, _ = packing.mixture_selection(enc, {}, seed=0)
    index = packing.write_sequences(enc, selection, data, "train", seq_len, 1 << 28)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "tokens": int(enc.lengths.sum()),
            "sequences": index["sequences"], **_rss()}


def part_encode_raw(work: Path, threads: int) -> dict:
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    os.environ["RAYON_NUM_THREADS"] = str(threads)
    import pyarrow.dataset as ds
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(work / "tok-stage/tokenizer.json"))
    dataset = ds.dataset(sorted(str(p) for p in (work / "ingest").glob("train-*.parquet")))
    batches = [b.column(0).to_pylist() for b in dataset.to_batches(columns=["text"],
                                                                    batch_size=1000)]
    t0 = time.perf_counter()
    tokens = 0
    for texts in batches:
        tokens += sum(len(e.ids) + 1 for e in tok.encode_batch(texts, add_special_tokens=False))
    return {"seconds": time.perf_counter() - t0, "tokens": tokens, **_rss()}


def part_hf_datasets(work: Path, threads: int, seq_len: int) -> dict:
    from datasets import disable_progress_bars, load_dataset
    from transformers import PreTrainedTokenizerFast

    disable_progress_bars()
    tok = PreTrainedTokenizerFast.from_pretrained(str(work / "tok-stage"))
    t0 = time.perf_counter()
    raw = load_dataset("parquet", data_files=sorted(str(p) for p in
                                                    (work / "ingest").glob("train-*.parquet")),
                       split="train", cache_dir=str(work / "hf-cache"))

    def tokenize_function(examples: dict) -> dict:  # run_clm.py, plus EOS per document
        out = tok(examples["text"])
        out["input_ids"] = [ids + [tok.eos_token_id] for ids in out["input_ids"]]
        out["attention_mask"] = [m + [1] for m in out["attention_mask"]]
        return out

    def group_texts(examples: dict) -> dict:  # run_clm.py, verbatim in substance
        concatenated = {k: list(chain(*examples[k])) for k in examples}
        total = len(concatenated[next(iter(examples))]) // seq_len * seq_len
        result = {k: [t[i:i + seq_len] for i in range(0, total, seq_len)]
                  for k, t in concatenated.items()}
        result["labels"] = result["input_ids"].copy()
        return result

    tokenized = raw.map(tokenize_function, batched=True, num_proc=threads,
                        remove_columns=raw.column_names)
    tokens = sum(len(x) for x in tokenized["input_ids"])
    grouped = tokenized.map(group_texts, batched=True, num_proc=threads)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "tokens": tokens, "sequences": len(grouped), **_rss()}


PARTS = {"train_stage": part_train_stage, "train_direct": part_train_direct,
         "pack_stage": part_pack_stage, "encode_raw": part_encode_raw,
         "hf_datasets": part_hf_datasets}


def run_part(name: str, work: Path, **kw: object) -> dict:
    cmd = [sys.executable, "-m", "bench.tokenizer_bench", "--part", name, "--work", str(work),
           "--kw", json.dumps(kw)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, cwd=ROOT)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"  {name:<13} {json.dumps({k: round(v, 2) for k, v in result.items()})}",
          flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--samples", type=Path, default=None,
                        help="sample corpora dir (built there if missing; default: a temp dir)")
    parser.add_argument("--skip-datasets", action="store_true")
    parser.add_argument("--part")
    parser.add_argument("--work", type=Path)
    parser.add_argument("--kw", default="{}")
    args = parser.parse_args()
    if args.part:
        print(json.dumps(PARTS[args.part](args.work, **json.loads(args.kw))))
        return

    with tempfile.TemporaryDirectory(prefix="dapt-bench-tok-") as tmp:
        work = Path(tmp)
        corpus = build_corpus(args.samples or work / "samples", work, args.mb)
        mb = corpus["bytes"] / 1e6
        print(f"corpus: {corpus['docs']:,} documents, {mb:.0f} MB ({corpus['copies']} copies of "
              f"{corpus['base_bytes'] / 1e6:.0f} MB of sample text); {args.threads} threads",
              flush=True)
        direct = run_part("train_direct", work, vocab=args.vocab)
        stage = run_part("train_stage", work, vocab=args.vocab)
        raw = run_part("encode_raw", work, threads=args.threads)
        pack = run_part("pack_stage", work, threads=args.threads, seq_len=args.seq_len)
        hf = None if args.skip_datasets else run_part(
            "hf_datasets", work, threads=args.threads, seq_len=args.seq_len)

    print(f"\n1. tokenizer training, BPE {args.vocab}, {mb:.0f} MB")
    print(f"   direct Tokenizer.train  {direct['seconds']:7.1f} s  {mb / direct['seconds']:5.2f} "
          f"MB/s  peak RSS {direct['rss_mb']:6.0f} MB")
    print(f"   our tokenizer stage     {stage['seconds']:7.1f} s  {mb / stage['seconds']:5.2f} "
          f"MB/s  peak RSS {stage['rss_mb']:6.0f} MB")
    print(f"   overhead ratio stage/direct: {stage['seconds'] / direct['seconds']:.3f} "
          "(goal <= 1.10)")
    print(f"\n2. tokenize-and-pack, {pack['tokens']:,} tokens, seq {args.seq_len}")
    rate = {"raw": raw["tokens"] / raw["seconds"], "pack": pack["tokens"] / pack["seconds"]}
    print(f"   raw encode_batch        {rate['raw']:10,.0f} tok/s  peak RSS {raw['rss_mb']:6.0f} "
          "MB (texts preloaded, nothing written)")
    print(f"   our packing             {rate['pack']:10,.0f} tok/s  peak RSS "
          f"{pack['rss_mb']:6.0f} MB (+ workers {pack['children_rss_mb']:.0f} MB each at most)")
    print(f"   ratio packing/raw: {rate['pack'] / rate['raw']:.3f} (goal >= 0.9)")
    if hf:
        rate["hf"] = hf["tokens"] / hf["seconds"]
        print(f"   datasets.map recipe     {rate['hf']:10,.0f} tok/s  peak RSS "
              f"{hf['rss_mb']:6.0f} MB (+ workers {hf['children_rss_mb']:.0f} MB each at most)")
        print(f"   ratio packing/datasets: {rate['pack'] / rate['hf']:.2f} (goal >= 3)")


if __name__ == "__main__":
    main()
