"""A real ~1 MB slice of the medical sample corpus (plus general news replayed at 10%) and a
domain YAML sized for tests."""

from __future__ import annotations

from pathlib import Path

import yaml

SLICE_LINES = {"hpo.jsonl": 2500, "icd10cm.jsonl": 2500, "healthnews.jsonl": 2500}
GENERAL_LINES = 300
TASK_FILES = ("task_organ_system.jsonl", "task_icd10_chapter.jsonl")
# The second task keeps three ICD-10-CM chapters under short names: the other rows are left
# out and counted.
CHAPTERS = {"Neoplasms (C00-D49)": "neoplasm", "Diseases of the eye and adnexa (H00-H59)": "eye",
            "Diseases of the circulatory system (I00-I99)": "circulatory"}

TEST_PROFILE = {
    "tokenizer": {"vocab_size": 2048},
    "pretrain": {"max_steps": 40, "warmup_steps": 4, "log_every": 5, "eval_every": 20,
                 "eval_max_seqs": 32},
    "finetune": {"max_train_examples": 400, "max_test_examples": 200, "epochs": 2,
                 "max_seq_len": 48, "seeds": [0, 1]},
    "evaluate": {"max_eval_docs": 100},
}


def write_test_domain(samples: Path, root: Path, **profile_overrides: dict) -> Path:
    """Copy the head of each medical corpus file into ``root/data`` and write ``root/test.yaml``
    (data paths relative to the YAML, as a user's own domain file would have them)."""
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    for name, n in SLICE_LINES.items():
        with open(samples / "medical" / name) as src:
            (data / name).write_text("".join(line for _, line in zip(range(n), src, strict=False)))
    with open(samples / "general/news.jsonl") as src:
        (data / "news.jsonl").write_text(
            "".join(line for _, line in zip(range(GENERAL_LINES), src, strict=False)))
    for task in TASK_FILES:
        (data / task).write_text((samples / "medical" / task).read_text())
    profile = {k: {**v, **profile_overrides.get(k, {})} for k, v in TEST_PROFILE.items()}
    doc = {
        "name": "medtest",
        "ingest": {"sources": [{"name": Path(n).stem, "path": f"data/{n}", "id_field": "id"}
                               for n in SLICE_LINES]
                   + [{"name": "general", "path": "data/news.jsonl", "id_field": "id",
                       "general": True}], "min_kept_docs": 100,
                   # as in domains/medical.yaml
                   "quality": {"gopher": {"min_words": 2, "max_mean_word_length": 15,
                                          "min_stop_words": None},
                               "repetition": {"max_top_ngram_chars": None,
                                              "max_duplicate_ngram_chars": None}},
                   # medical's pattern types before issue 17 (its NER `person` would add minutes)
                   "pii": {"types": ["email", "phone", "ip", "credit_card", "iban", "ssn", "url",
                                     "mrn", "person_date"]},
                   "language": {"enabled": False}},
        "pretrain": {"mixture": {"general": 0.1}},
        # the chapter task first: the headline, and learnable in the tests' small budget
        "finetune": {"tasks": [
            {"name": "icd10_chapter", "path": "data/task_icd10_chapter.jsonl",
             "label_map": CHAPTERS},
            {"name": "organ_system", "path": "data/task_organ_system.jsonl"}]},
        "profiles": {"tiny": profile},
    }
    path = root / "test.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path
