from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from pipeline.stages.pretrain import packing
from pipeline.stages.pretrain.packing import Encoded, PackedSequences, TokenBatches

WORDS = {"<eos>": 0, "a": 1, "b": 2, "[UNK]": 3}


def _tokenizer(tmp_path: Path) -> Path:
    tok = Tokenizer(models.WordLevel(WORDS, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(tmp_path / "tok.json"))
    return tmp_path / "tok.json"


def _shard(tmp_path: Path) -> Path:
    pq.write_table(pa.table({"text": ["a b", "b", "a zz a", "b b b"],
                             "source": ["x", "y", "x", "y"]}), tmp_path / "s.parquet")
    return tmp_path / "s.parquet"


@pytest.mark.parametrize("workers", [1, 2])
def test_encode_appends_eos_and_keeps_order_across_processes(tmp_path: Path, workers: int
                                                             ) -> None:
    enc = packing.encode(_tokenizer(tmp_path), [_shard(tmp_path)], 0, tmp_path / "t.bin",
                         source_names=["x", "y"], num_workers=workers, batch_size=1)
    assert np.fromfile(tmp_path / "t.bin", dtype=np.uint16).tolist() == \
        [1, 2, 0, 2, 0, 1, 3, 1, 0, 2, 2, 2, 0]
    assert enc.lengths.tolist() == [3, 2, 4, 4] and enc.sources.tolist() == [0, 1, 0, 1]
    assert enc.tokens_by_source() == {"x": 7, "y": 6}


def test_encode_rejects_a_source_it_was_not_told_about(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"source\(s\) \['y'\] are not among"):
        packing.encode(_tokenizer(tmp_path), [_shard(tmp_path)], 0, tmp_path / "t.bin",
                       source_names=["x"], num_workers=1)


def test_token_dtype_fits_vocab() -> None:
    assert packing.token_dtype(65536) == np.uint16 and packing.token_dtype(65537) == np.uint32


def _encoded(tmp_path: Path, lengths: list[int], sources: list[int]) -> Encoded:
    """Documents whose tokens are their own positions in the stream: easy to check."""
    np.arange(sum(lengths), dtype=np.uint32).tofile(tmp_path / "stage.bin")
    return Encoded(tmp_path / "stage.bin", np.dtype(np.uint32), np.array(lengths),
                   np.array(sources, dtype=np.int16), ["x", "y"])


def test_write_sequences_shards_whole_sequences_and_counts_the_tail(tmp_path: Path) -> None:
    enc = _encoded(tmp_path, [5, 3, 6, 9], [0, 0, 1, 1])  # 23 tokens
    index = packing.write_sequences(enc, np.array([2, 0, 3, 1]), tmp_path, "train", seq_len=4,
                                    max_shard_tokens=9)  # 2 sequences a shard
    assert index["sequences"] == 5 and index["tokens"] == 20 and index["tail_tokens"] == 3
    assert [s["sequences"] for s in index["shards"]] == [2, 2, 1]
    expected = [8, 9, 10, 11, 12, 13, 0, 1, 2, 3, 4, 14, 15, 16, 17, 18, 19, 20, 21, 22]
    data = PackedSequences(tmp_path, "train")
    assert np.concatenate([data[i] for i in range(len(data))]).tolist() == expected
    assert (tmp_path / "train-00002.bin").stat().st_size == 4 * 4  # one uint32 sequence
    # gathering in small blocks (memory bound) writes the same stream
    packing.write_sequences(enc, np.array([2, 0, 3, 1]), tmp_path, "small", seq_len=4,
                            max_shard_tokens=9, block_tokens=5)
    small = PackedSequences(tmp_path, "small")
    assert np.concatenate([small[i] for i in range(len(small))]).tolist() == expected
    with pytest.raises(IndexError):
        data[5]


def test_mixture_upsamples_named_source_and_uses_the_rest_once(tmp_path: Path) -> None:
    enc = _encoded(tmp_path, [10] * 120, [0] * 100 + [1] * 20)  # x: 1000 tokens, y: 200
    selection, report = packing.mixture_selection(enc, {"y": 0.5}, seed=0)
    assert report["y"]["achieved_share"] == 0.5 and report["y"]["passes"] == 5
    assert sorted(selection[enc.sources[selection] == 0].tolist()) == list(range(100))
    # every pass over y is complete: each of its documents is used exactly 5 times
    assert np.bincount(selection[enc.sources[selection] == 1])[100:].tolist() == [5] * 20
    assert enc.sources[selection][:20].tolist() != sorted(enc.sources[selection][:20].tolist())


def test_mixture_downsamples_by_whole_documents_within_one_document(tmp_path: Path) -> None:
    enc = _encoded(tmp_path, [10] * 120, [0] * 100 + [1] * 20)
    _, report = packing.mixture_selection(enc, {"y": 0.1}, seed=3)
    # target 0.1 of 1000 / 0.9 = 111.1 tokens of y: 12 documents of 10
    assert report["y"]["tokens"] == 120 and report["x"]["tokens"] == 1000
    assert report["y"]["target_share"] == pytest.approx(0.1)
    assert report["y"]["achieved_share"] == pytest.approx(120 / 1120)


def test_mixture_with_every_source_named_normalises_the_weights(tmp_path: Path) -> None:
    enc = _encoded(tmp_path, [10] * 120, [0] * 100 + [1] * 20)
    _, report = packing.mixture_selection(enc, {"x": 0.3, "y": 0.3}, seed=0)
    assert report["x"]["tokens"] == 600 and report["y"]["tokens"] == 600
    none, natural = packing.mixture_selection(enc, {}, seed=0)
    assert none.tolist() == list(range(120))  # no mixture: every document once, in order
    assert natural["y"]["target_share"] == pytest.approx(200 / 1200)


def test_mixture_of_a_source_with_no_documents_is_an_error(tmp_path: Path) -> None:
    enc = _encoded(tmp_path, [10] * 3, [0] * 3)
    with pytest.raises(ValueError, match=r"\['y'\] with no training documents"):
        packing.mixture_selection(enc, {"y": 0.2}, seed=0)
    # only the replayed source has documents: 0.2 of nothing is not a mixture
    with pytest.raises(ValueError, match=r"the sources it does not name \(y\) have no"):
        packing.mixture_selection(enc, {"x": 0.2}, seed=0)


def test_batch_order_is_seeded_resumable_and_covers_each_epoch(tmp_path: Path) -> None:
    enc = _encoded(tmp_path, [40], [0])
    packing.write_sequences(enc, np.array([0]), tmp_path, "train", 4, max_shard_tokens=12)
    a = TokenBatches(tmp_path, "train", seed=7)
    stream = a.sequence_ids(0, 30)
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:20]) == list(range(10))
    assert stream[:10] != stream[10:20]  # a new permutation per epoch
    resumed = TokenBatches(tmp_path, "train", seed=7)
    assert resumed.sequence_ids(13, 17) == stream[13:]  # any position, fresh process
    assert a.batch([2, 7]).tolist() == [[8, 9, 10, 11], [28, 29, 30, 31]]  # across shards
    assert TokenBatches(tmp_path, "train", seed=8).sequence_ids(0, 10) != stream[:10]


def _jsonl_shards(path: Path, source: str, out: Path, sizes: list[int], skip: int = 0
                  ) -> list[Path]:
    import json

    rows = [json.loads(line) for line in path.read_text().splitlines()][skip:]
    files, at = [], 0
    for i, n in enumerate(sizes):
        part = rows[at:at + n]
        at += n
        pq.write_table(pa.table({"text": [r["text"] for r in part], "source": [source] * n}),
                       out / f"{source}-{skip}-{i}.parquet")
        files.append(out / f"{source}-{skip}-{i}.parquet")
    return files


def test_replay_tokenizes_what_the_shares_need_not_the_history(samples_dir: Path,
                                                               tmp_path: Path) -> None:
    """A continued run replays a seeded sample of the earlier drops sized by the new drop, in
    the earlier files' order; a history smaller than the need is kept whole."""
    import pyarrow.compute as pc

    hpo, news = samples_dir / "medical/hpo.jsonl", samples_dir / "general/news.jsonl"
    earlier = (_jsonl_shards(hpo, "hpo", tmp_path, [1000, 1000, 1000])
               + _jsonl_shards(news, "news", tmp_path, [150]))
    new = _jsonl_shards(hpo, "hpo", tmp_path, [100], skip=3000)

    def subset(name: str, mixture: dict[str, float], margin: float = 2.0) -> pa.Table:
        out = packing.replay_subset(new, earlier, mixture, 0.25, {"news"}, 7,
                                    tmp_path / name, margin=margin)
        return pq.read_table(out)

    def chars(t: pa.Table) -> int:
        return int(pc.sum(pc.utf8_length(t.column("text"))).as_py() or 0)

    history = pa.concat_tables([pq.read_table(f) for f in earlier])
    new_chars = chars(pq.read_table(new[0]))
    got = subset("a.parquet", {"news": 0.1})
    assert got.num_rows < history.num_rows / 4  # not the history
    total = new_chars / (1 - 0.35)  # the new drop's hpo text is the unnamed part
    for source, share in (("hpo", 0.25), ("news", 0.1)):
        part = got.filter(pc.equal(got.column("source"), source))
        longest = int(pc.max(pc.utf8_length(part.column("text"))).as_py())
        assert 2 * share * total <= chars(part) < 2 * share * total + longest
    texts = history.column("text").to_pylist()
    position = {t: i for i, t in enumerate(texts)}
    picked = [position[t] for t in got.column("text").to_pylist()]
    assert picked == sorted(picked)  # the earlier files' order
    assert subset("b.parquet", {"news": 0.1}).equals(got)  # seeded
    # an unnamed general source is used once, whole; a small history is kept whole
    alone = subset("c.parquet", {})
    assert pc.sum(pc.equal(alone.column("source"), "news")).as_py() == 150
    assert subset("d.parquet", {"news": 0.1}, margin=1000.0).equals(history)
