"""How far each shipped domain's held-out test text is from its training text, with the split
each domain ships (``ingest.held_out``) against the old one (every document by a hash of its
id): per source, the share of test documents with a one-word-edit twin in training
(``heldout_twin_rate``) and the share with >= 90% of their word 3-grams seen in training
(``heldout_covered_rate``), and how many documents are held out. Goals (issue 27): twin rate
<= 2% in every source, covered share <= 10% per domain.

Ingest runs on the domain's ``cpu`` profile config with its sample sources (``dapt samples
build``), its fine-tune tasks' test splits as decontamination test sets, as a run would; the
NER PII types (person, location) are off unless ``--ner`` (they take minutes and only replace
names by a placeholder).

    python -m bench.heldout_split --samples /tmp/w/samples [--domains medical legal finance]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from pipeline import domains
from pipeline.config import PII_NER_TYPES, EvalSetConfig, HeldOutConfig, IngestConfig
from pipeline.stages.ingest import stage as ingest
from pipeline.stages.ingest import twins
from pipeline.stages.ingest.artifact import split_dev_test


def config_of(domain: str, samples: Path, ner: bool) -> IngestConfig:
    spec = domains.get(domain)
    run = spec.resolve("cpu")
    config = run.ingest
    sources = [s.model_copy(update={"path": domains.resolve_path(s.path, spec, samples.parent)})
               for s in config.sources]
    tests = [EvalSetConfig(name=f"finetune:{t.name}",
                           path=domains.resolve_path(t.path, spec, samples.parent),
                           text_field=t.text_field, id_field=t.id_field,
                           test_fraction=run.finetune.test_fraction,
                           split_seed=run.finetune.split_seed,
                           max_rows=run.finetune.max_test_examples)
             for t in run.finetune.tasks]
    types = [t for t in config.pii.types if ner or t not in PII_NER_TYPES]
    return config.model_copy(update={
        "sources": sources, "pii": config.pii.model_copy(update={"types": types}),
        "decontamination": config.decontamination.model_copy(update={"test_sets": tests})})


def measure(config: IngestConfig, out: Path) -> dict:
    start = time.perf_counter()
    manifest = ingest.run(config, {}, out)
    seconds = time.perf_counter() - start
    held = pq.read_table(out / "eval.parquet")
    test = split_dev_test(held)["test"]
    train = (pq.read_table(p, columns=["text"]).column("text")
             for p in sorted(out.glob("train-*.parquet")))
    rates = twins.with_domain(
        twins.rates(test.column("text"), test.column("source").to_pylist(), train),
        [s.name for s in config.sources if s.general])
    return {"seconds": round(seconds, 1), "rates": rates,
            "counts": {k: v for k, v in manifest.counts.items()
                       if k in ("kept", "train_docs", "eval_docs", "excluded_contaminated",
                                "heldout_groups", "heldout_twin_pairs")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=Path, required=True)
    parser.add_argument("--domains", nargs="+", default=["medical", "legal", "finance"])
    parser.add_argument("--ner", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="JSON of every figure")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for domain in args.domains:
            shipped = config_of(domain, args.samples, args.ner)
            by_id = shipped.model_copy(update={"held_out": HeldOutConfig(group_by="id")})
            for name, config in (("by id (before)", by_id), ("shipped groups", shipped)):
                out = Path(tmp) / domain / name.split()[0]
                out.mkdir(parents=True)
                r = measure(config, out)
                results.setdefault(domain, {})[name] = r
                print(f"\n{domain}, {name}: ingest {r['seconds']} s, {r['counts']}")
                print(f"  {'source':<14}{'test docs':>10}{'twins':>9}{'covered':>9}")
                for source, row in r["rates"].items():
                    print(f"  {source:<14}{row['docs']:>10}{row['twin_rate']:>9.1%}"
                          f"{row['covered_rate']:>9.1%}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
