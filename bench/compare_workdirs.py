"""Compare the artifacts of two dapt workdirs stage by stage: does a change preserve what a
run builds? (bench/RESULTS.md, "One planner, one driver": the tiny medical run before and after
the layout move.)

    python -m bench.compare_workdirs A_WORKDIR B_WORKDIR [--src-a DIR --src-b DIR]
        [--out compare.json] [stage ...]

Artifacts are paired by stage (one ``artifacts/<stage>/<key>/`` per side); each file is compared
by SHA-256, then by content where the bytes differ (Parquet tables, tensors one by one,
TensorBoard scalars, JSON and text with the workdirs, source trees, keys, code versions, times
and throughput masked). Prints a table per stage and writes the details as JSON.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
from pathlib import Path

# set by main(): the two workdirs and (optional) the source trees their runs used
WA, WB = Path("A"), Path("B")
SA: Path | None = None
SB: Path | None = None
STAGES = ["ingest-shard", "ingest", "tokenizer", "pretrain", "control", "finetune", "evaluate"]
# fields that carry time, duration, the artifact's own identity or machine-local state
VOLATILE = {"created_at", "duration_s", "seconds", "elapsed_s", "wall_s", "time", "timestamp",
            "steps_per_s", "tokens_per_s", "tok_s", "samples_per_s", "train_runtime",
            "runtime_s", "started_at", "finished_at"}


def sha(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def artifact_dirs(w: Path, stage: str) -> list[Path]:
    d = w / "artifacts" / stage
    return sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if d.exists() else []


def manifest(p: Path) -> dict:
    return json.loads((p / "manifest.json").read_text())


class Masker:
    """Replaces the workdir, source tree, artifact keys and code versions of either side by
    placeholders, so that text from A and from B can be compared."""

    def __init__(self) -> None:
        self.subs: list[tuple[str, str]] = [
            (str(WA), "<WORKDIR>"), (str(WB), "<WORKDIR>"),
            *[(str(src), "<SRC>") for src in (SA, SB) if src is not None],
            (WA.name, "<W>"), (WB.name, "<W>")]

    def add(self, a: str, b: str, label: str) -> None:
        if a and b:
            self.subs += [(a, f"<{label}>"), (b, f"<{label}>")]

    def text(self, s: str) -> str:
        for old, new in self.subs:
            s = s.replace(old, new)
        s = re.sub(r"\.tmp-(<[^>]+>|[0-9a-f]{16})-[0-9a-f]{8}", r".tmp-\1-<TMP>", s)
        s = re.sub(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d([.,]\d+)?(\+00:00|Z)?", "<TIME>", s)
        s = re.sub(r"\b\d\d:\d\d:\d\d(\.\d+)?\b", "<CLOCK>", s)
        s = re.sub(r"\b\d{8}T\d{6}-[0-9a-f]{6}\b", "<RUNID>", s)
        s = re.sub(r"MASTER_PORT=\d+", "MASTER_PORT=<PORT>", s)
        # timings inside logs: worker events' throughput and ETA, tqdm rates
        s = re.sub(r'"(tokens_per_s|eta_s|elapsed_s|duration_s)":[0-9.e+-]+', r'"\1":<T>', s)
        s = re.sub(r"[0-9.]+(it/s|s/it)\]", r"<RATE>\1]", s)
        s = re.sub(r"\[\d\d:\d\d<\d\d:\d\d", "[<ELAPSED>", s)
        return s

    def obj(self, o, path=""):
        if isinstance(o, dict):
            return {self.text(k): ("<VOLATILE>" if k in VOLATILE else self.obj(v, f"{path}.{k}"))
                    for k, v in o.items()}
        if isinstance(o, list):
            return [self.obj(v, path) for v in o]
        if isinstance(o, str):
            return self.text(o)
        return o


def json_diff(a, b, path="$", out=None, limit=40):
    out = [] if out is None else out
    if len(out) >= limit:
        return out
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{path}.{k}: only in {'B' if k not in a else 'A'}")
            else:
                json_diff(a[k], b[k], f"{path}.{k}", out, limit)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            json_diff(x, y, f"{path}[{i}]", out, limit)
    elif a != b:
        out.append(f"{path}: {str(a)[:120]!r} != {str(b)[:120]!r}")
    return out


def load_json_any(p: Path):
    txt = p.read_text()
    if p.suffix == ".jsonl":
        return [json.loads(line) for line in txt.splitlines() if line.strip()]
    return json.loads(txt)


def cmp_parquet(a: Path, b: Path, m: Masker) -> tuple[bool, str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    ta, tb = pq.read_table(a), pq.read_table(b)
    if ta.equals(tb):
        same_meta = ta.schema.equals(tb.schema, check_metadata=True)
        return True, ("pyarrow: tables equal; sha256 differs in file metadata only"
                      + ("" if same_meta else " (schema metadata differs)"))
    if ta.schema != tb.schema or ta.num_rows != tb.num_rows:
        return False, f"pyarrow: schema/rows differ: {ta.num_rows} vs {tb.num_rows} rows"

    def masked(t: pa.Table) -> list:
        return m.obj(t.to_pylist())
    ra, rb = masked(ta), masked(tb)
    if ra == rb:
        cols = [c for c in ta.column_names if not ta[c].equals(tb[c])]
        return True, f"pyarrow: tables equal after masking paths/keys (columns {cols})"
    bad = [i for i, (x, y) in enumerate(zip(ra, rb, strict=False)) if x != y]
    cols = [c for c in ta.column_names if not ta[c].equals(tb[c])]
    return False, (f"pyarrow: {len(bad)} of {ta.num_rows} rows differ, columns {cols}; "
                   f"first {bad[:5]}")


def cmp_tensors(da: dict, db: dict) -> tuple[bool, str]:
    import torch
    if set(da) != set(db):
        return False, f"tensor names differ: {sorted(set(da) ^ set(db))[:10]}"
    bad = [k for k in da if not (da[k].shape == db[k].shape and da[k].dtype == db[k].dtype
                                 and torch.equal(da[k], db[k]))]
    if bad:
        diffs = {k: float((da[k].float() - db[k].float()).abs().max()) for k in bad[:5]
                 if da[k].shape == db[k].shape}
        return False, f"{len(bad)} of {len(da)} tensors differ; max abs diff {diffs}"
    return True, f"all {len(da)} tensors bit-equal"


def flat_tensors(o, prefix="") -> dict:
    import torch
    out = {}
    if isinstance(o, torch.Tensor):
        out[prefix] = o
    elif isinstance(o, dict):
        for k, v in o.items():
            out.update(flat_tensors(v, f"{prefix}/{k}"))
    elif isinstance(o, (list, tuple)):
        for i, v in enumerate(o):
            out.update(flat_tensors(v, f"{prefix}/{i}"))
    return out


def cmp_file(a: Path, b: Path, rel: str, m: Masker) -> tuple[bool, str]:
    sa, sb = sha(a), sha(b)
    if sa == sb:
        return True, f"sha256 equal ({sa[:12]})"
    name = a.name
    try:
        if name.endswith(".parquet"):
            return cmp_parquet(a, b, m)
        if name.endswith(".safetensors"):
            from safetensors.torch import load_file
            ok, why = cmp_tensors(load_file(a), load_file(b))
            return ok, "safetensors: " + why
        if name.endswith(".pt"):
            import torch
            oa = torch.load(a, map_location="cpu", weights_only=False)
            ob = torch.load(b, map_location="cpu", weights_only=False)
            ok, why = cmp_tensors(flat_tensors(oa), flat_tensors(ob))
            # non-tensor content, masked
            def strip(o):
                import torch as t
                if isinstance(o, t.Tensor):
                    return "<T>"
                if isinstance(o, dict):
                    return {str(k): strip(v) for k, v in o.items()}
                if isinstance(o, (list, tuple)):
                    return [strip(v) for v in o]
                return o if isinstance(o, (int, float, str, bool, type(None))) else repr(o)
            rest = json_diff(m.obj(strip(oa)), m.obj(strip(ob)))
            return ok and not rest, f"torch.load: {why}; other fields differing: {rest[:5]}"
        if name.endswith(".png"):
            import numpy as np
            from PIL import Image
            ia, ib = np.asarray(Image.open(a)), np.asarray(Image.open(b))
            same = ia.shape == ib.shape and bool((ia == ib).all())
            return same, f"png: pixels {'equal' if same else 'differ'} (sha256 differs: metadata)"
        if "tfevents" in name:
            from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

            def scalars(p):
                ea = EventAccumulator(str(p))
                ea.Reload()
                return {t: [(e.step, e.value) for e in ea.Scalars(t)] for t in ea.Tags()["scalars"]}
            xa, xb = scalars(a), scalars(b)
            vol = {t for t in xa if re.search(r"time|per_s|/s$|throughput", t, re.I)}
            ka = {t: v for t, v in xa.items() if t not in vol}
            kb = {t: v for t, v in xb.items() if t not in vol}
            same = "equal" if ka == kb else json_diff(ka, kb)[:5]
            return ka == kb, (f"tensorboard scalars (wall times not compared; timing tags "
                              f"{sorted(vol)} skipped): {same}")
        if name.endswith((".json", ".jsonl")):
            ja, jb = m.obj(load_json_any(a)), m.obj(load_json_any(b))
            if ja == jb:
                return True, "json: equal after masking paths/keys/times"
            d = json_diff(ja, jb)
            return False, f"json: {len(d)}+ fields differ: {d[:8]}"
        ta, tb = a.read_text(errors="replace"), b.read_text(errors="replace")
        la, lb = m.text(ta).splitlines(), m.text(tb).splitlines()
        if la == lb:
            return True, "text: equal after masking paths/keys/times"
        import difflib
        d = [x for x in difflib.unified_diff(la, lb, lineterm="", n=0)
             if x[:1] in "+-" and not x.startswith(("+++", "---"))]
        return False, f"text: {len(d)} lines differ after masking: {d[:6]}"
    except Exception as exc:  # noqa: BLE001
        return False, f"compare failed: {exc!r}"


def files_of(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()}


def main(stages: list[str], out: Path) -> None:
    m = Masker()
    pairs = {}
    for st in STAGES:
        da, db = artifact_dirs(WA, st), artifact_dirs(WB, st)
        pairs[st] = (da, db)
        for x, y in zip(da, db, strict=False):
            ma, mb = manifest(x), manifest(y)
            m.add(ma["key"], mb["key"], f"KEY:{st}")
            m.add(ma["code_version"], mb["code_version"], f"CODE:{st}")
            # the ingest drop lineage hashes the ingest code version (stable_hash of domain,
            # code, config): an identity, like a key
            la = ma.get("extra", {}).get("drop", {}).get("lineage") if st == "ingest" else None
            lb = mb.get("extra", {}).get("drop", {}).get("lineage") if st == "ingest" else None
            if la and lb:
                m.add(la, lb, "LINEAGE")
    results = {}
    for st in stages:
        da, db = pairs[st]
        print(f"\n## {st}: A {[p.name for p in da]}  B {[p.name for p in db]}")
        if len(da) != 1 or len(db) != 1:
            results[st] = {"_pairing": f"not 1:1 ({len(da)} vs {len(db)})"}
            continue
        a, b = da[0], db[0]
        rows = {}
        fa, fb = files_of(a), files_of(b)
        # tensorboard event files are named after their creation time, host and pid: pair the
        # one of each side by its directory
        ta = [f for f in fa if "tfevents" in f]
        tb = [f for f in fb if "tfevents" in f]
        tf_pair = {}
        if len(ta) == 1 and len(tb) == 1:
            fa.discard(ta[0])
            fb.discard(tb[0])
            tf_pair[f"{ta[0]} ~ {Path(tb[0]).name}"] = (ta[0], tb[0])
        for label, (x, y) in tf_pair.items():
            rows[label] = cmp_file(a / x, b / y, label, m)
            print(f"  {'OK  ' if rows[label][0] else 'DIFF'} {label}: {rows[label][1][:300]}")
        for rel in sorted(fa | fb):
            if rel not in fa or rel not in fb:
                rows[rel] = (False, f"only in {'A' if rel in fa else 'B'}")
            else:
                rows[rel] = cmp_file(a / rel, b / rel, rel, m)
            print(f"  {'OK  ' if rows[rel][0] else 'DIFF'} {rel}: {rows[rel][1][:300]}")
        ma, mb = manifest(a), manifest(b)
        for part in ("counts", "metrics", "extra", "inputs", "files", "config_hash", "stage"):
            same = ma.get(part) == mb.get(part)
            why = "raw equal" if same else None
            if not same:
                d = json_diff(m.obj(ma.get(part)), m.obj(mb.get(part)))
                same = not d
                why = "equal after masking" if same else f"differ: {d[:8]}"
            rows[f"manifest.{part}"] = (same, why)
            print(f"  {'OK  ' if same else 'DIFF'} manifest.{part}: {why[:300]}")
        results[st] = {k: {"same": v[0], "how": v[1]} for k, v in rows.items()}
    out.write_text(json.dumps(results, indent=1))
    print(f"\ndetails: {out}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", type=Path, help="workdir A (before)")
    ap.add_argument("b", type=Path, help="workdir B (after)")
    ap.add_argument("stages", nargs="*", default=STAGES)
    ap.add_argument("--src-a", type=Path, help="source tree A's run used (masked in logs)")
    ap.add_argument("--src-b", type=Path, help="source tree B's run used")
    ap.add_argument("--out", type=Path, default=Path("compare.json"))
    args = ap.parse_args()
    WA, WB, SA, SB = args.a.resolve(), args.b.resolve(), args.src_a, args.src_b
    main(args.stages, args.out)
