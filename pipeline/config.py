"""Typed configuration: one validated config per stage, and the domain file that holds them.

A domain YAML has one section per stage (``ingest``, ``tokenizer``, ``pretrain``, ``finetune``,
``evaluate``) plus ``profiles`` overrides and an optional ``schedule``. Resolving a domain for a
profile (the size dial: ``tiny``, ``small``, ``base``, ``cpu``) merges, in increasing priority:

1. the built-in profile defaults in ``PROFILES``,
2. the domain's stage sections,
3. the domain's ``profiles.<profile>`` overrides,

and validates the result into a ``RunConfig`` whose stage configs are what the stages receive and
what artifact keys hash. Unknown keys are errors, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import copy
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

STAGES: tuple[str, ...] = ("ingest", "tokenizer", "pretrain", "finetune", "evaluate")
# Every step of a run, in order: the stages above, the base model's conversion (models), the
# general text's own ingest (general) and the control run (control). The CLI checks
# --only/--from against it before anything loads; the steps' specs are
# pipeline/stages/steps.py (a test keeps the two equal).
STEP_NAMES: tuple[str, ...] = ("ingest", "models", "tokenizer", "pretrain", "general",
                               "control", "finetune", "evaluate")
ProfileName = Literal["tiny", "small", "base", "cpu"]
Precision = Literal["fp32", "bf16"]  # evaluate.precision: of the scoring forward passes
PROFILE_NAMES: tuple[str, ...] = ("tiny", "small", "base", "cpu")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- ingest -----------------------------------------------------------------------------------


class SourceConfig(_Strict):
    """One input of the corpus: a local path or glob."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", description="Short id, used in doc ids.")
    path: str = Field(
        description="File or glob; ${samples} and $ENV are expanded; relative to the YAML."
    )
    format: Literal["jsonl", "jsonl.gz", "jsonl.zst", "txt", "csv", "parquet"] | None = Field(
        default=None, description="Inferred from the file suffix when omitted."
    )
    text_field: str = Field(default="text", description="Column holding the document text.")
    id_field: str | None = Field(default=None, description="Column holding a stable id.")
    general: bool = Field(
        default=False, description="General-domain (replay) text: mixed into pretraining by "
        "pretrain.mixture, and reported apart from the domain text (forgetting, fertility).")


class GopherConfig(_Strict):
    """Gopher quality heuristics (Rae et al. 2021); defaults are the paper's, for web text."""

    enabled: bool = True
    min_words: int | None = Field(default=50, ge=0)
    max_words: int | None = Field(default=100_000, gt=0)
    min_mean_word_length: float | None = Field(default=3.0, ge=0)
    max_mean_word_length: float | None = Field(default=10.0, gt=0)
    max_symbol_word_ratio: float | None = Field(
        default=0.1, ge=0, description="Most '#' or ellipses per word.")
    max_ellipsis_lines: float | None = Field(
        default=0.3, ge=0, le=1, description="Most share of lines ending in an ellipsis.")
    max_bullet_lines: float | None = Field(
        default=0.9, ge=0, le=1, description="Most share of lines starting with a bullet.")
    min_alpha_words: float | None = Field(
        default=0.8, ge=0, le=1, description="Least share of words with a letter.")
    min_stop_words: int | None = Field(
        default=2, ge=0, description="Least number of distinct `stop_words` present.")
    stop_words: list[str] = Field(
        default_factory=lambda: ["the", "be", "to", "of", "and", "that", "have", "with"])


class RepetitionConfig(_Strict):
    """Gopher repetition filters: shares of duplicated lines and paragraphs, by count and by
    characters, and of characters in the top and in duplicated word n-grams."""

    enabled: bool = True
    max_duplicate_lines: float | None = Field(default=0.3, ge=0, le=1)
    max_duplicate_paragraphs: float | None = Field(default=0.3, ge=0, le=1)
    max_duplicate_line_chars: float | None = Field(default=0.2, ge=0, le=1)
    max_duplicate_paragraph_chars: float | None = Field(default=0.2, ge=0, le=1)
    max_top_ngram_chars: dict[int, float] | None = Field(
        default_factory=lambda: {2: 0.2, 3: 0.18, 4: 0.16},
        description="n -> most share of word characters in the most frequent word n-gram.")
    max_duplicate_ngram_chars: dict[int, float] | None = Field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10},
        description="n -> most share of word characters inside repeated word n-grams.")


class C4Config(_Strict):
    """C4's line filters (Raffel et al. 2020), as datatrove's C4QualityFilter: a line that fails
    is removed from the document (logged in modified.parquet); a document with 'lorem ipsum' or
    a curly bracket, or with too few sentences left, is excluded. Off by default: it is made
    for web pages and would strip hard-wrapped or telegraphic text (licences, diagnoses)."""

    enabled: bool = False
    terminal_punctuation: bool = Field(
        default=True, description="Keep only lines ending in . ! ? \" or ' (not an ellipsis).")
    min_words_per_line: int | None = Field(default=3, ge=1)
    max_word_length: int | None = Field(
        default=1000, gt=0, description="A line with a longer word goes.")
    remove_citations: bool = Field(default=True, description="Strip [1], [edit], ... first.")
    javascript_lines: bool = Field(default=True, description="Lines mentioning javascript go.")
    policy_lines: bool = Field(
        default=True, description="Lines with 'terms of use', 'privacy policy', cookies go.")
    lorem_ipsum: bool = Field(default=True, description="Exclude documents with lorem ipsum.")
    curly_bracket: bool = Field(default=True, description="Exclude documents with '{'.")
    min_sentences: int | None = Field(default=5, ge=1, description="Left after the lines go.")


class QualityConfig(_Strict):
    """Document quality filters, applied after the length filter and before dedup; a
    document's reason is the first filter it fails. Any threshold set to null is off."""

    c4: C4Config = Field(default_factory=C4Config)
    gopher: GopherConfig = Field(default_factory=GopherConfig)
    repetition: RepetitionConfig = Field(default_factory=RepetitionConfig)


class LanguageConfig(_Strict):
    """Language identification with lingua (its models ship in the wheel: no download): a
    document whose most likely language, among ``candidates``, is not in ``languages`` is
    excluded (``language``). The first ``sample_chars`` characters are judged; documents
    shorter than ``min_chars`` are kept unjudged (too little text to tell)."""

    enabled: bool = True
    languages: list[str] = Field(default_factory=lambda: ["en"],
                                 description="Allowed, ISO 639-1 codes.")
    candidates: list[str] | None = Field(
        default_factory=lambda: ["en", "de", "fr", "es", "it", "pt", "nl", "sv", "pl", "ru",
                                 "uk", "tr", "ar", "fa", "hi", "zh", "ja", "ko", "id", "vi"],
        description="The languages told apart (ISO 639-1); null: all 75 lingua knows.")
    sample_chars: int = Field(default=1000, gt=0)
    min_chars: int = Field(default=50, ge=0)
    low_accuracy: bool = Field(
        default=False, description="lingua's faster mode (trigrams only): worse on short text.")

    @model_validator(mode="after")
    def _check(self) -> LanguageConfig:
        from lingua import IsoCode639_1

        unknown = [c for c in [*self.languages, *(self.candidates or [])]
                   if not hasattr(IsoCode639_1, c.upper())]
        if unknown:
            raise ValueError(f"unknown ISO 639-1 language code(s) {unknown}")
        if self.candidates is not None and not set(self.languages) <= set(self.candidates):
            raise ValueError(f"languages {self.languages} must be among candidates")
        return self


PII_TYPES = ("iban", "credit_card", "ssn", "url", "email", "mrn", "person_date", "phone", "ip",
             "address", "person", "location")
PII_NER_TYPES = ("person", "location")  # found by a spaCy NER model (pipeline/stages/ingest/ner.py)
PII_POLICIES = ("redact", "mask", "keep", "hash")
PiiTypeName = Literal[PII_TYPES]  # type: ignore[valid-type]


class PiiConfig(_Strict):
    """Identifiers replaced by typed placeholders (``<EMAIL>``, ...) before filtering, so
    neither the output nor the exclusion log holds them; see ``pipeline/stages/ingest/pii.py``."""

    enabled: bool = True
    types: list[PiiTypeName] = Field(
        default_factory=lambda: ["email", "phone", "ip", "credit_card", "iban", "ssn"],
        description="Any of " + ", ".join(PII_TYPES) + "; person and location run an NER "
        "model on windows around the names, titles and places a gazetteer finds.")
    policy: dict[PiiTypeName, Literal[PII_POLICIES]] = Field(  # type: ignore[valid-type]
        default_factory=dict, description="Per type: redact (<TYPE>, the default), mask (the "
        "format kept, letters and digits hidden), keep (left as is), hash (<TYPE_xxxxxxxx>, a "
        "salted pseudonym: the same value gives the same token across a corpus).")
    salt: str = Field(default="", description="Secret mixed into `hash` pseudonyms; required "
                      "when a type's policy is hash. A new salt gives new pseudonyms.")
    url_keep: list[str] = Field(
        default_factory=list, description="Hosts whose URLs stay intact (a host matches itself "
        "and its subdomains), e.g. attack.mitre.org. Other URLs go when they have a query "
        "string, a personal path (/users/..., /~name, @handle, social sites) or a link "
        "shortener's host.")
    allow: list[str] = Field(
        default_factory=list, description="Words and phrases never redacted as a person or a "
        "place (this domain's product, vendor, tool or technique names, e.g. Kerberos), "
        "matched whole-word and case-sensitively inside a span.")
    location_min_level: Literal["city", "state", "country"] = Field(
        default="city", description="The broadest place `location` redacts: city (towns, "
        "cities, facilities, streets; states and countries stay, as HIPAA Safe Harbor "
        "allows), state (also states and provinces) or country (also countries).")
    ner_workers: int = Field(
        default=0, ge=0, description="Processes running the NER model (one model each); 0: "
        "one per core. The output does not depend on it.")
    ner_share: float = Field(
        default=1.0, description="Share of documents (0 < share <= 1) that the NER types "
        "(person, location) are looked for in, chosen by a salted hash of the doc id, so a "
        "rerun or another shard layout picks the same ones; the others still get every "
        "pattern type, but their names and places stay. Ingest counts both "
        "(ner_docs_scanned, ner_docs_skipped) and the report says so. Below 1 trades recall "
        "for time: NER is most of a PII pass's time.")

    @model_validator(mode="after")
    def _check(self) -> PiiConfig:
        if not 0 < self.ner_share <= 1:
            raise ValueError(f"ner_share: {self.ner_share!r} is not a share of documents; "
                             "allowed: 0 < ner_share <= 1 (1: every document)")
        for name in self.policy:
            if name not in self.types:
                raise ValueError(f"policy.{name}: {name!r} is not in pii.types {self.types}; "
                                 "add it there or drop its policy")
        if "hash" in self.policy.values() and not self.salt:
            raise ValueError("salt: a type's policy is hash, so pii.salt must be set "
                             "(a secret string; the pseudonyms depend on it)")
        for i, term in enumerate(self.allow):
            if not term.strip() or term != term.strip():
                raise ValueError(f"allow[{i}]: {term!r} must be a word or phrase without "
                                 "leading or trailing spaces")
        for i, host in enumerate(self.url_keep):
            if not re.fullmatch(r"(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+[a-z]{2,63}", host):
                raise ValueError(f"url_keep[{i}]: {host!r} is not a host name (lowercase, "
                                 "like attack.mitre.org; no scheme, path or wildcard)")
        return self


class NearDupConfig(_Strict):
    """MinHash-LSH near-duplicate removal over word n-gram shingles (after exact dedup); one
    representative (the first in input order) of each connected cluster is kept."""

    enabled: bool = True
    ngram: int = Field(default=5, gt=0, description="Words per shingle.")
    num_bands: int = Field(default=14, gt=0)
    rows_per_band: int = Field(default=8, gt=0)
    threshold: float = Field(
        default=0.8, gt=0, le=1, description="Least Jaccard similarity of a pair's word n-gram "
        "sets, computed exactly for every LSH candidate; candidates below it are kept apart.")
    seed: int = 0


class EvalSetConfig(_Strict):
    """Text the model is evaluated on: training documents sharing an n-gram with it go."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_:-]*$")
    path: str = Field(description="JSONL, CSV or Parquet; ${samples} and $ENV expanded.")
    text_field: str = "text"
    id_field: str = "id"
    test_fraction: float = Field(
        default=1.0, gt=0, le=1, description="Rows whose id hashes below this (with "
        "split_seed, as finetune splits) are the test set; 1.0 takes the whole file.")
    split_seed: int = 0
    max_rows: int | None = Field(
        default=None, gt=0, description="Only the first N test rows in hash order (the rows "
        "finetune.max_test_examples keeps); null: all.")


class DecontaminationConfig(_Strict):
    """Drop training documents that share a word n-gram with the held-out slice or a test set
    (each fine-tune task's test split is added by the runner)."""

    enabled: bool = True
    ngram: int = Field(default=13, gt=0, description="Words; shorter texts must match whole.")
    test_sets: list[EvalSetConfig] = Field(
        default_factory=list, description="Extra evaluation sets besides the fine-tune tasks.")


class GroupRegex(_Strict):
    """Documents whose ids give the same value belong to one group (e.g. an ICD-10 code's
    3-character category, a licence's family)."""

    id_regex: str = Field(
        description="A regex (DuckDB's RE2 syntax) over the source's id field (without the "
        "'source:' prefix): its first capture group (or, without one, the whole match) names "
        "the group; an id it does not match is a group of its own.")

    @field_validator("id_regex")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as err:
            raise ValueError(f"{value!r} is not a regular expression: {err}") from None
        return value


GroupRule = Literal["id", "auto"] | GroupRegex


class HeldOutConfig(_Strict):
    """Which documents go to the held-out slice together (docs/adaptation.md, "The held-out
    split"): a group's documents land on one side, so a template's variants never straddle it."""

    group_by: GroupRule = Field(
        default="auto", description="id: each document alone (a hash of its id); auto: "
        "clusters of near-twins (texts of up to 256 words differing by one word, linked "
        "transitively); {id_regex: ...}: groups named by the id, merged with the near-twin "
        "clusters. General sources are always held out by id.")
    sources: dict[str, GroupRule] = Field(
        default_factory=dict, description="Per source name, a rule other than group_by.")


class IngestConfig(_Strict):
    sources: list[SourceConfig] = Field(min_length=1)
    min_chars: int = Field(default=20, ge=0, description="Shorter documents are excluded.")
    max_chars: int = Field(default=200_000, gt=0, description="Longer documents are excluded.")
    fix_mojibake: bool = Field(
        default=True, description="Re-decode UTF-8 text that was read as Latin-1 (ftfy).")
    pii: PiiConfig = Field(default_factory=PiiConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    language: LanguageConfig = Field(default_factory=LanguageConfig)
    near_dup: NearDupConfig = Field(default_factory=NearDupConfig)
    decontamination: DecontaminationConfig = Field(default_factory=DecontaminationConfig)
    eval_fraction: float = Field(
        default=0.02, gt=0, le=0.5, description="Held-out slice share (at most 0.5: the control "
        "run never trains on that half).")
    held_out: HeldOutConfig = Field(default_factory=HeldOutConfig)
    num_docs_per_shard: int = Field(default=100_000, gt=0)
    shard_mb: float = Field(
        default=32, gt=0, description="Source files are grouped, in order, into work shards "
        "of about this many MB; a bigger file is cut into pieces of about this size (JSONL, "
        ".gz and .zst at line ends, Parquet at row groups), so a shard's memory follows it, "
        "not the file's size. The output does not depend on it.")
    min_kept_docs: int = Field(default=100, ge=1, description="Quality gate: fail below this.")
    global_memory_gb: float = Field(
        default=1.0, gt=0, description="DuckDB's memory limit for the steps over the whole "
        "corpus (dedup, split, write): past it they spill to disk in the work directory. "
        "The output does not depend on it.")
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> IngestConfig:
        if self.min_chars >= self.max_chars:
            raise ValueError(
                f"min_chars ({self.min_chars}) must be below max_chars ({self.max_chars})"
            )
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique, got {names}")
        general = {s.name for s in self.sources if s.general}
        for name in self.held_out.sources:
            if name not in names:
                raise ValueError(f"held_out.sources.{name}: no source is named {name!r}; "
                                 f"sources: {', '.join(names)}")
            if name in general:
                raise ValueError(f"held_out.sources.{name}: a general source is always held "
                                 "out by id (the control shares its rule); drop this entry")
        return self

    def group_rule(self, source: str) -> GroupRule:
        """The held-out grouping of one source; a general source's is always ``id``: the
        control, shared by every domain, holds out the same general documents."""
        if any(s.name == source and s.general for s in self.sources):
            return "id"
        return self.held_out.sources.get(source, self.held_out.group_by)


# --- tokenizer --------------------------------------------------------------------------------


class VocabExtensionConfig(_Strict):
    """Domain tokens added to the base model's tokenizer (continue mode only)."""

    num_new_tokens: int = Field(
        default=0, ge=0, description="Most new tokens to add; 0 keeps the base tokenizer as is.")
    min_frequency: int = Field(
        default=20, ge=1, description="A word must occur this often in the scanned text.")
    sample_chars: int = Field(
        default=20_000_000, gt=0, description="Characters of training text scanned for words.")


class TokenizerConfig(_Strict):
    model: Literal["bpe", "unigram"] = Field(
        default="bpe", description="Byte-level BPE or Unigram (both over byte-level symbols).")
    vocab_size: int = Field(default=8192, ge=300, description="Includes 256 bytes + specials.")
    min_frequency: int = Field(default=2, ge=1, description="BPE: merges seen fewer times drop.")
    eos_token: str = "<|endoftext|>"
    pad_token: str = "<|pad|>"
    special_tokens: list[str] = Field(
        default_factory=list, description="Further special tokens, after eos and pad.")
    max_train_chars: int | None = Field(
        default=None, gt=0, description="Train on a seeded uniform sample of about this many "
        "characters (tokenizers' memory grows with the corpus); null: the whole corpus.")
    batch_size: int = Field(default=1000, gt=0, description="Documents per training batch.")
    max_roundtrip_docs: int = Field(default=2000, gt=0, description="Held-out docs checked.")
    extend: VocabExtensionConfig = Field(default_factory=VocabExtensionConfig)
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> TokenizerConfig:
        specials = [self.eos_token, self.pad_token, *self.special_tokens]
        if len(set(specials)) != len(specials):
            raise ValueError(f"special tokens must be distinct, got {specials}")
        return self


# --- pretrain ---------------------------------------------------------------------------------


class ModelConfig(_Strict):
    """A Llama-style causal LM; the profile dial sets these."""

    num_layers: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    num_heads: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    tie_embeddings: bool = True

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by "
                f"num_heads ({self.num_heads})"
            )
        return self


class PretrainConfig(_Strict):
    mode: Literal["from_scratch", "continue"] = Field(
        default="from_scratch",
        description="continue: domain-adaptive pretraining of base_model (model sizes ignored).")
    base_model: str = Field(
        default="smollm2-135m", description="Registered base (dapt models list) or an HF dir.")
    init: Literal["base", "promoted"] = Field(
        default="base", description="Where training starts. base: the base model (continue) "
        "or fresh weights (from_scratch), on the whole corpus. promoted: the domain's promoted "
        "model (`dapt models promoted`), on the new drop's text plus earlier_share of earlier "
        "drops and the mixture's general shares, with that model's tokenizer (frozen within a "
        "lineage); as base while nothing is promoted. Schedules default to promoted.")
    earlier_share: float = Field(
        default=0.25, ge=0, lt=1, description="init: promoted: share of training tokens "
        "replayed from the domain sources' earlier drops (the new drop's text is used once).")
    model: ModelConfig
    seq_len: int = Field(gt=1)
    micro_batch_size: int = Field(gt=0, description="Sequences per rank per micro step.")
    grad_accum_steps: int = Field(default=1, gt=0)
    max_steps: int = Field(gt=0, description="Optimizer steps.")
    lr: float = Field(gt=0)
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1, description="Cosine floor / peak lr.")
    warmup_steps: int = Field(default=0, ge=0)
    weight_decay: float = Field(default=0.1, ge=0)
    grad_clip: float = Field(default=1.0, ge=0)
    zero_stage: Literal[0, 1, 2, 3] = 0
    precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto", description="auto: bf16 on GPU, fp32 on CPU (CPU bf16 is ~20x slower)."
    )
    num_gpus: int = Field(default=1, gt=0, description="Ranks per node for the launcher.")
    num_nodes: int = Field(default=1, gt=0, description="Nodes; above 1 needs a hostfile.")
    hostfile: str | None = Field(
        default=None, description="DeepSpeed hostfile for multi-node runs; $ENV is expanded "
        "at launch, so a fixed `$DAPT_HOSTFILE` keeps the artifact key stable across jobs."
    )
    master_addr: str | None = Field(
        default=None, description="Rank-0 address for multi-node runs ($ENV expanded); "
        "DeepSpeed asks the first host over ssh when unset."
    )
    log_every: int = Field(default=10, gt=0)
    checkpoint_every: int = Field(default=500, gt=0, description="Steps between checkpoints.")
    eval_every: int = Field(default=0, ge=0, description="Steps between held-out evals; 0: end.")
    activation_checkpointing: bool = Field(
        default=False, description="Recompute activations in backward: less memory, ~30% slower.")
    offload_optimizer: bool = Field(
        default=False, description="ZeRO optimizer state in CPU memory (DeepSpeed CPU Adam).")
    compile: bool = Field(
        default=False, description="torch.compile the model (DeepSpeed's engine.compile); it "
        "compiles at the first step, and again for the held-out scoring.")
    compile_backend: Literal["inductor", "aot_eager", "eager"] = Field(
        default="inductor", description="torch.compile backend with compile: true. eager only "
        "captures the graphs (a quick check of the compile path on a CPU, no speed-up).")
    keep_checkpoints: int = Field(default=2, gt=0, description="Newest checkpoints kept.")
    keep_final_checkpoint: bool = Field(
        default=False, description="Checkpoint the last step and keep it (weights and "
        "optimizer state, ~16 bytes a parameter) in the artifact after hf/ is exported; by "
        "default the last step is not checkpointed and the earlier checkpoints are deleted "
        "then (they serve only to resume an interrupted build). Not part of the key: it "
        "applies to builds from then on.")
    tensorboard: bool = Field(
        default=True, description="Curves to <artifact>/tensorboard via DeepSpeed's monitor.")
    eval_max_seqs: int = Field(
        default=256, gt=0, description="Held-out sequences per slice (domain, general) scored "
        "at each eval point; with select_checkpoint, those of the dev half.")
    select_checkpoint: bool = Field(
        default=False, description="Continue mode: score the model before training and at "
        "every eval_every step on the dev half of the held-out text (domain and general), and "
        "export the eval point with the largest domain loss drop whose general loss rise stays "
        "within select_max_general_degradation (else the one with the smallest rise).")
    select_max_general_degradation: float = Field(
        default=0.03, ge=0, description="Checkpoint choice: most relative rise of the general "
        "dev loss over the control's on the same text where the run has one, else over the base "
        "model's (0.03: 3%).")
    control: bool = Field(
        default=False, description="Continue mode: also continue the base model on general "
        "text only with the same recipe and budget (the control run of 'Don't Stop "
        "Pretraining'); finetune and evaluate score it beside base and adapted. One control "
        "artifact serves every domain with the same recipe and general sources. A domain "
        "without a general source (general: true) has no control; its report says so.")
    mixture: dict[str, float] = Field(
        default_factory=dict, description="Source name -> share of training tokens (0: not "
        "trained on); sources not named share the rest in their natural proportions and are "
        "used exactly once.")
    num_pack_workers: int = Field(
        default=0, ge=0, description="Processes that tokenize for packing; 0: one per CPU.")
    max_shard_tokens: int = Field(
        default=1 << 28, gt=0, description="Tokens per packed shard file (rounded down to "
        "whole sequences).")
    seed: int = Field(default=0, description="The first training seed (data order, mixture "
                      "sampling, initialisation); seed i of `seeds` is seed + i.")
    seeds: int = Field(
        default=1, ge=1, description="Training seeds per arm (adapted and, with control, the "
        "control): steps pretrain, pretrain[seed1], ... and control, control[seed1], ...; "
        "evaluate reports each arm's mean +- spread over seeds and an interval of the gain vs "
        "control that covers training variance and documents. finetune and promotion use the "
        "first seed's model. Not hashed: each seed's key is its own config with its seed, so "
        "the first seed's artifact is the one a run with seeds: 1 builds.")
    ds_overrides: dict[str, Any] = Field(
        default_factory=dict, description="Raw DeepSpeed JSON merged over the generated one."
    )

    @model_validator(mode="after")
    def _check(self) -> PretrainConfig:
        if self.warmup_steps >= self.max_steps:
            raise ValueError(
                f"warmup_steps ({self.warmup_steps}) must be below max_steps ({self.max_steps})"
            )
        if self.eval_every % self.log_every:
            raise ValueError(f"eval_every ({self.eval_every}) must be a multiple of "
                             f"log_every ({self.log_every})")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("offload_optimizer needs zero_stage 1, 2 or 3 (got zero_stage 0)")
        bad = {k: v for k, v in self.mixture.items() if not 0 <= v <= 1}
        if bad:
            raise ValueError(f"mixture shares must be in [0, 1] (0: not trained on), got {bad}")
        if self.mixture and sum(self.mixture.values()) > 1 + 1e-9:
            raise ValueError(f"mixture shares sum to {sum(self.mixture.values()):.3f}; "
                             "they are fractions of the training tokens, so at most 1")
        if self.init == "promoted" and sum(self.mixture.values()) + self.earlier_share >= 1:
            raise ValueError(
                f"pretrain.mixture shares ({sum(self.mixture.values()):.3f}) plus "
                f"pretrain.earlier_share ({self.earlier_share:g}) must stay below 1 with "
                "pretrain.init: promoted, leaving a share for the new drop's text")
        if self.max_shard_tokens < self.seq_len:
            raise ValueError(f"max_shard_tokens ({self.max_shard_tokens}) must hold at least "
                             f"one sequence of seq_len ({self.seq_len}) tokens")
        if self.select_checkpoint and (self.mode != "continue" or not self.eval_every):
            raise ValueError(
                "pretrain.select_checkpoint needs pretrain.mode: continue (the base model is the "
                f"reference) and pretrain.eval_every > 0; got mode {self.mode!r}, eval_every "
                f"{self.eval_every}")
        if self.control and self.mode != "continue":
            raise ValueError("pretrain.control: a control run continues the base model, so it "
                             f"needs pretrain.mode: continue (got {self.mode!r})")
        if self.num_nodes > 1 and not self.hostfile:
            raise ValueError(
                f"num_nodes ({self.num_nodes}) > 1 needs hostfile: set pretrain.hostfile to a "
                "DeepSpeed hostfile (`python -m pipeline.stages.pretrain.launch hostfile` "
                "writes one)"
            )
        return self


# --- finetune ---------------------------------------------------------------------------------


class TaskConfig(_Strict):
    """A labelled classification task read from JSONL/CSV/Parquet."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    path: str = Field(description="Task file; ${samples} and $ENV expanded; relative to the YAML.")
    text_field: str = "text"
    label_field: str = "label"
    id_field: str = "id"
    label_map: dict[str, str] = Field(
        default_factory=dict, description="Raw label -> class name (merge or rename classes). "
        "When set, rows whose label is not a key are left out and counted (unmapped_rows).")


class LoraConfig(_Strict):
    """Low-rank adapters (peft) on the attention/MLP projections; the head is trained fully."""

    r: int = Field(default=8, gt=0)
    alpha: int = Field(default=16, gt=0)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], min_length=1)


class ProbeConfig(_Strict):
    """Linear probe (``method: probe``): multinomial logistic regression on the frozen model's
    mean-pooled last hidden states, features standardised with train statistics."""

    c_grid: list[float] = Field(
        default_factory=lambda: [0.01, 0.1, 1.0, 10.0], min_length=1,
        description="Inverse L2 strengths tried; the one with the best validation macro-F1 is "
        "kept (ties: the smaller C). Never chosen on the test split.")
    max_iter: int = Field(default=1000, gt=0, description="L-BFGS iterations per fit.")
    batch_size: int = Field(default=32, gt=0, description="Examples per forward pass when "
                            "extracting features (batches are sorted by length).")

    @model_validator(mode="after")
    def _check(self) -> ProbeConfig:
        bad = [c for c in self.c_grid if not c > 0]
        if bad:
            raise ValueError(f"finetune.probe.c_grid: every C must be > 0, got {bad}")
        if len(set(self.c_grid)) != len(self.c_grid):
            raise ValueError(f"finetune.probe.c_grid: values must be distinct, got {self.c_grid}")
        return self


class FinetuneConfig(_Strict):
    tasks: list[TaskConfig] = Field(
        min_length=1, description="Labelled tasks; the first is the headline in metrics and "
        "reports. `task:` (one task) is accepted as shorthand.")
    method: Literal["full", "lora", "probe"] = Field(
        default="full", description="full: every (unfrozen) weight; lora: peft adapters; "
        "probe: logistic regression on frozen mean-pooled features (see `probe`).")
    lora: LoraConfig = Field(default_factory=LoraConfig)
    probe: ProbeConfig = Field(default_factory=ProbeConfig)
    freeze_layers: int = Field(
        default=0, ge=0, description="Freeze the embeddings and the lowest N transformer layers "
        "(with lora: no adapters there).")
    seeds: list[int] = Field(
        default_factory=lambda: [0, 1, 2], min_length=1,
        description="One fine-tune per seed; metrics are the mean and std over seeds. full/lora: "
        "the seed varies head init, shuffling and dropout, not the splits; probe: the seed "
        "re-draws the train/validation partition of the non-test rows (the test rows never "
        "change).")
    split_seed: int = Field(default=0, description="Seeds the train/validation/test split.")
    test_fraction: float = Field(default=0.2, gt=0, lt=1)
    validation_fraction: float = Field(
        default=0.1, ge=0, lt=1, description="Share of the non-test rows held out for early "
        "stopping on macro-F1; 0 trains every epoch and keeps the last.")
    patience: int = Field(default=2, gt=0, description="Epochs without a better validation "
                          "macro-F1 before stopping; the best epoch's weights are kept.")
    compare_base: bool = Field(
        default=True, description="Continue mode: fine-tune the base model too, with the same "
        "splits, seeds and hyperparameters, so the difference is the effect of pretraining.")
    max_train_examples: int = Field(default=4000, gt=0)
    max_test_examples: int = Field(default=2000, gt=0)
    max_seq_len: int = Field(default=128, gt=1)
    batch_size: int = Field(default=32, gt=0)
    epochs: int = Field(default=3, gt=0)
    lr: float = Field(default=5e-4, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _one_task(cls, data: Any) -> Any:
        if isinstance(data, dict) and "task" in data:
            if "tasks" in data:
                raise ValueError("finetune: give `task` (one) or `tasks` (a list), not both")
            data = {**data, "tasks": [data["task"]]}
            del data["task"]
        return data

    @model_validator(mode="after")
    def _check(self) -> FinetuneConfig:
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"finetune.tasks: task names must be unique, got {names}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"finetune.seeds: seeds must be distinct, got {self.seeds}")
        if self.method == "probe" and self.validation_fraction == 0 and len(
                self.probe.c_grid) > 1:
            raise ValueError("finetune.validation_fraction: 0, but method probe chooses "
                             "probe.c_grid's C on the validation split; set it > 0 or give "
                             "probe.c_grid one value")
        return self


# --- evaluate ---------------------------------------------------------------------------------


class EvaluateConfig(_Strict):
    max_eval_docs: int = Field(
        default=500, gt=0, description="Held-out test docs scored, per slice (domain, general).")
    max_general_docs: int | None = Field(
        default=None, gt=0, description="Cap on the general slice's test docs (news articles "
        "are long); null: max_eval_docs.")
    batch_size: int = Field(default=8, gt=0)
    bootstrap_samples: int = Field(
        default=1000, ge=0, description="Resamples of the test documents for the standard "
        "errors of bits-per-byte and of its changes; 0: none.")
    context_dev_docs: int = Field(
        default=64, ge=0, description="Held-out dev documents (domain, first window each) on "
        "which the adapted model chooses the token every test document is scored after: the "
        "tokenizer's EOS, its BOS or <|endoftext|>, lowest NLL; 0: the EOS, no choice.")
    min_domain_gain: float | None = Field(
        default=0.001, description="Continue mode: fail unless the adapted model's domain "
        "bits-per-byte is at least this far below the base model's; null: no gate.")
    max_general_degradation: float | None = Field(
        default=0.1, ge=0, description="Continue mode: fail when general bits-per-byte rises "
        "by more than this fraction of the control's (placeholders and URLs masked) where a "
        "control runs, else of the base's; null: no limit.")
    max_twin_rate: float | None = Field(
        default=0.02, ge=0, le=1, description="Warn (in the verdict, not failing the run) when "
        "more than this share of the domain's test documents has a near-twin (one-word edit) "
        "in the training text; null: no warning.")
    precision: Precision = Field(
        default="fp32", description="Precision of every model's forward passes when scoring "
        "(held-out text, the context choice, zero-shot): fp32, or bf16 autocast (matrix "
        "products in bfloat16, log-softmax and the sums in fp32), ~1.5x faster on a CPU with "
        "native bf16 (AVX-512 BF16, AMX) or a GPU, slower where bf16 is emulated. Part of the "
        "evaluate key and of every score memo's key.")
    zeroshot: bool = Field(
        default=True, description="Score every model zero-shot on each finetune task's test "
        "split as multiple choice (log-likelihood of each class name), and export the tasks "
        "for lm-evaluation-harness (pipeline/stages/evaluate/zeroshot.py).")
    zeroshot_max_examples: int | None = Field(
        default=None, gt=0, description="Zero-shot test examples per task (a prefix of "
        "finetune's test split, which is in hash order); null: the whole test split.")
    zeroshot_max_chars: int = Field(
        default=1000, gt=0, description="Characters of each example's text in its zero-shot "
        "prompt (the start of the text).")
    zeroshot_rule_examples: int = Field(
        default=100, ge=0, description="Validation examples per task (a prefix of finetune's "
        "validation split, never test rows) on which the zero-shot headline rule is chosen: "
        "acc, acc_norm or acc_mutual_info, whichever has the highest accuracy averaged over the "
        "models scored (base, control, adapted); ties go to acc, then acc_norm. 0: no choice, "
        "acc (pipeline/stages/evaluate/zeroshot_rules.py).")


# --- schedule and the domain file -------------------------------------------------------------


class ScheduleConfig(_Strict):
    cron: str
    timezone: str = "UTC"
    parameters: dict[str, Any] = Field(default_factory=dict)


class RunConfig(_Strict):
    """Everything one run of one domain at one profile needs, fully resolved."""

    domain: str
    profile: ProfileName
    ingest: IngestConfig
    tokenizer: TokenizerConfig
    pretrain: PretrainConfig
    finetune: FinetuneConfig
    evaluate: EvaluateConfig

    @model_validator(mode="after")
    def _check_mixture(self) -> RunConfig:
        if self.tokenizer.extend.num_new_tokens and self.pretrain.mode != "continue":
            raise ValueError(
                f"tokenizer.extend.num_new_tokens ({self.tokenizer.extend.num_new_tokens}) "
                "extends the base model's tokenizer, so it needs pretrain.mode: continue "
                f"(got {self.pretrain.mode})")
        names = [s.name for s in self.ingest.sources]
        unknown = sorted(set(self.pretrain.mixture) - set(names))
        if unknown:
            raise ValueError(f"pretrain.mixture names unknown source(s) {unknown}; "
                             f"ingest.sources are: {', '.join(names)}")
        # With every source named, the shares are relative weights (normalised when packing).
        unnamed = [n for n in names if n not in self.pretrain.mixture]
        if unnamed and sum(self.pretrain.mixture.values()) >= 1 - 1e-9:
            raise ValueError(f"pretrain.mixture shares sum to 1, leaving nothing for the "
                             f"source(s) it does not name: {', '.join(unnamed)}")
        return self

    def stage(self, name: str) -> BaseModel:
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r}; allowed: {', '.join(STAGES)}")
        return getattr(self, name)


# The size dial. Everything that scales with the model lives here so the debug model and the
# real one share one code path; a domain overrides any of it under `profiles.<name>`.
PROFILES: dict[str, dict[str, Any]] = {
    "tiny": {
        # NER (person, location) on 1 document in 20: the demo's medical ingest had 38,657
        # NER windows (three in four in the replayed general news) at ~93 windows/s, 7 of its
        # 8 minutes; a share of 0.05 leaves 1,827, ~20 s. The report says how many documents
        # NER read (docs/pii.md, "NER on a share of the documents").
        "ingest": {"pii": {"ner_share": 0.05}},
        "tokenizer": {"vocab_size": 8192},
        "pretrain": {
            "model": {"num_layers": 2, "hidden_size": 128, "num_heads": 4,
                      "intermediate_size": 512},
            "seq_len": 128, "micro_batch_size": 16, "max_steps": 300, "lr": 3e-3,
            "warmup_steps": 30,
        },
        "finetune": {"max_train_examples": 2000, "max_seq_len": 96, "epochs": 4, "lr": 1e-3},
        "evaluate": {"max_eval_docs": 300, "zeroshot_max_examples": 40},
    },
    "small": {
        "tokenizer": {"vocab_size": 16384},
        "pretrain": {
            "model": {"num_layers": 6, "hidden_size": 384, "num_heads": 6,
                      "intermediate_size": 1536},
            "seq_len": 256, "micro_batch_size": 16, "max_steps": 2000, "lr": 1e-3,
            "warmup_steps": 100,
        },
        "finetune": {"max_train_examples": 8000, "max_seq_len": 256, "epochs": 3, "lr": 2e-4},
        "evaluate": {"max_eval_docs": 1000},
    },
    "base": {
        "tokenizer": {"vocab_size": 32768},
        "pretrain": {
            # Domain-adaptive pretraining of SmolLM2-135M; `mode: from_scratch` trains the
            # ~110M model below instead.
            "mode": "continue", "base_model": "smollm2-135m",
            "model": {"num_layers": 12, "hidden_size": 768, "num_heads": 12,
                      "intermediate_size": 3072, "tie_embeddings": True},
            "seq_len": 2048, "micro_batch_size": 8, "grad_accum_steps": 4, "max_steps": 2000,
            "lr": 1e-4, "warmup_steps": 100, "checkpoint_every": 250,
        },
        "finetune": {"max_train_examples": 50000, "max_seq_len": 512, "epochs": 3, "lr": 5e-5},
        "evaluate": {"max_eval_docs": 5000},
    },
    # Continued pretraining of SmolLM2-135M sized for a 2-core CPU: 1-2 hours per domain
    # with the control, scored by a linear probe instead of full fine-tuning (docs/adaptation.md).
    "cpu": {
        "pretrain": {
            "mode": "continue", "base_model": "smollm2-135m",
            "model": {"num_layers": 30, "hidden_size": 576, "num_heads": 9,
                      "intermediate_size": 1536, "tie_embeddings": True},
            "seq_len": 256, "micro_batch_size": 4, "grad_accum_steps": 2, "max_steps": 48,
            "lr": 1e-4, "warmup_steps": 4, "log_every": 4, "eval_every": 12,
            "checkpoint_every": 12, "keep_checkpoints": 1, "eval_max_seqs": 128,
            "select_checkpoint": True, "control": True, "tensorboard": False,
        },
        "finetune": {"method": "probe", "max_train_examples": 600, "max_test_examples": 400,
                     "max_seq_len": 64, "seeds": [0, 1, 2]},
        "evaluate": {"max_eval_docs": 5000, "max_general_docs": 120, "batch_size": 8,
                     "max_general_degradation": 0.03, "zeroshot_max_examples": 400},
    },
}


class SweepConfig(_Strict):
    """The LR x replay grid of ``dapt sweep`` (see ``pipeline/lifecycle/sweep.py``)."""

    lrs: list[float] = Field(
        default_factory=lambda: [2e-5, 1e-4], description="Peak learning rates to try.")
    replay: list[float] = Field(
        default_factory=lambda: [0.0, 0.25], description="Shares of training tokens replayed "
        "from the general source, each in [0, 1).")
    max_steps: int = Field(default=16, gt=1, description="Optimizer steps of each proxy run.")
    replay_source: str | None = Field(
        default=None, description="The replayed source; null: the first general source.")
    extend_edge: bool = Field(
        default=True, description="When the pick's learning rate is the grid's largest or "
        "smallest, run one more proxy at one step past it (the grid's ratio there, at the "
        "picked replay share) and pick again.")

    @model_validator(mode="after")
    def _check(self) -> SweepConfig:
        for name in ("lrs", "replay"):
            if not getattr(self, name):
                raise ValueError(f"sweep.{name} is empty: give at least one value")
        for i, lr in enumerate(self.lrs):
            if not lr > 0:
                raise ValueError(f"sweep.lrs[{i}] is {lr:g}: a learning rate must be > 0")
        for i, share in enumerate(self.replay):
            if not 0 <= share < 1:
                raise ValueError(f"sweep.replay[{i}] is {share:g}: a replay share must be in "
                                 "[0, 1)")
        return self


class RetryConfig(_Strict):
    """Retries of a stage after a transient I/O error; deterministic failures never retry."""

    count: int = Field(default=2, ge=0)
    delay_s: float = Field(default=10.0, ge=0)


class DomainSpec(_Strict):
    """The domain YAML as written: stage sections are validated when resolved per profile."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    description: str = ""
    ingest: dict[str, Any]
    tokenizer: dict[str, Any] = Field(default_factory=dict)
    pretrain: dict[str, Any] = Field(default_factory=dict)
    finetune: dict[str, Any]
    evaluate: dict[str, Any] = Field(default_factory=dict)
    profiles: dict[ProfileName, dict[str, Any]] = Field(default_factory=dict)
    schedule: ScheduleConfig | None = None
    retries: RetryConfig = Field(default_factory=RetryConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)

    @model_validator(mode="after")
    def _check_profiles(self) -> DomainSpec:
        for profile, override in self.profiles.items():
            unknown = set(override) - set(STAGES)
            if unknown:
                raise ValueError(
                    f"profiles.{profile} has unknown section(s) {sorted(unknown)}; "
                    f"allowed: {', '.join(STAGES)}"
                )
        return self

    def resolve(self, profile: str) -> RunConfig:
        if profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}; allowed: {', '.join(PROFILES)}")
        merged: dict[str, Any] = {"domain": self.name, "profile": profile}
        for stage in STAGES:
            section = deep_merge(PROFILES[profile].get(stage, {}), getattr(self, stage))
            merged[stage] = deep_merge(section, self.profiles.get(profile, {}).get(stage, {}))
        return RunConfig.model_validate(merged)


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Return ``base`` updated by ``override``, recursing into nested dicts."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def with_init(run: RunConfig, init: str | None) -> RunConfig:
    """``run`` with ``pretrain.init`` overridden (a flow or CLI parameter), validated."""
    if init is None:
        return run
    if init not in ("base", "promoted"):
        raise ValueError(f"init {init!r}: allowed: base, promoted")
    pretrain = PretrainConfig.model_validate({**run.pretrain.model_dump(), "init": init})
    return run.model_copy(update={"pretrain": pretrain})
