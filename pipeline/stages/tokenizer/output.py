"""Reading a tokenizer artifact: the files and fields the steps downstream may use.

Downstream code goes through ``TokenizerOutput`` and never opens a tokenizer artifact's files
by name nor reads its manifest's dicts. This module is not imported by the tokenizer stage:
editing it changes the keys of the steps that read a tokenizer, not the tokenizer's.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.engine.artifacts import Artifact


class TokenizerOutput:
    """A tokenizer artifact as the stages downstream may read it (never its files by name).

    - ``dir``: the domain tokenizer's HF files (``tokenizer.json``, ``tokenizer_config.json``,
      ``special_tokens_map.json``); ``eos_id`` and ``pad_id`` are its ids; ``model``: its
      algorithm (``bpe`` or ``unigram``);
    - ``extended_dir``: in continue mode with ``extend.num_new_tokens``, the base model's
      tokenizer with the domain's new tokens (HF files, plus what ``vocab`` needs to initialise
      their embeddings); None otherwise;
    - ``base_vocab_size``: the base tokenizer's size in continue mode, else None;
    - ``vocab_size``, ``roundtrip_checked`` (held-out documents checked to round-trip),
      ``new_tokens`` (tokens the extension added; None without one);
    - ``efficiency``: {tokenizer (domain, base, extended, gpt2): {slice (domain, general):
      {fertility, chars_per_token, eval_tokens}}} on the held-out text.
    """

    def __init__(self, artifact: Artifact):
        if artifact.stage != "tokenizer":
            raise ValueError(f"{artifact.stage}/{artifact.key} is not a tokenizer artifact")
        manifest = artifact.manifest
        extra, counts = manifest.extra, manifest.counts
        self.artifact = artifact
        self.dir: Path = artifact.path
        self.eos_id: int = extra["eos_id"]
        self.pad_id: int = extra["pad_id"]
        self.model: str = extra.get("model", "bpe")
        self.extended_dir: Path | None = (artifact.path / extra["extended_dir"]
                                          if extra.get("extended_dir") else None)
        self.base_vocab_size: int | None = extra.get("base_vocab_size")
        self.efficiency: dict[str, dict[str, dict[str, float]]] = extra["efficiency"]
        self.vocab_size: int = int(counts["vocab_size"])
        self.roundtrip_checked: int = int(counts["roundtrip_checked"])
        self.new_tokens: int | None = counts.get("new_tokens")

    def fertility(self, tokenizer: str = "domain", part: str = "domain") -> float:
        """Tokens per whitespace word of ``tokenizer`` on the held-out ``part``."""
        return self.efficiency[tokenizer][part]["fertility"]
