"""The planner: every step of a run, its artifact key and whether it is cached, known up front.

A step is data, a ``StepSpec`` (the model is Marin's ``StepSpec(name, deps, hash_attrs, fn)``):
its name (the artifact kind, ``artifacts/<name>/<key>/``), the module whose ``run(config,
inputs, out_dir) -> Manifest`` builds it (that module's import closure is its code version:
``pipeline.engine.versions``), the steps it reads, and a ``prepare`` hook that returns what its
key hashes besides those steps: the config section as hashed, the data files' digests, the
lineage it continues. ``plan`` loops over the specs in order and names no step; the specs live
beside their stages (``pipeline/stages/<step>/spec.py``) and are listed in order in
``pipeline.stages.steps``. docs/stages.md shows how a platform team adds one.

A spec can fan out: its ``prepare`` returns one ``Prepared`` per variant (one per seed or per
task), each planned as its own step ``name[variant]`` with its own key (a variant None keeps
the plain ``name``: the first seed is the step a run without fan-out has). A step that needs a
spec reads every variant of it, each input named by its step (``pretrain``,
``pretrain[seed1]``); ``first("pretrain")`` in ``needs`` reads only the first variant, so the
step's key does not change when variants are added; ``paired("control")`` reads the variant
of the same name (``pretrain[seed1]`` reads ``control[seed1]``; the first when there is none).

Order: the specs' list order, except that a spec is planned after every spec it needs (a need
on a spec listed later moves that spec forward: pretrain reads the control when it chooses its
checkpoint against it, so ``general`` and ``control`` come before ``pretrain`` in that plan).

Step selection (``select``):
- default: every step; an artifact that exists is reused (a cache hit).
- ``only=S``: just ``S``, rebuilt; its inputs must already exist, except shared steps (the base
  model, the control), which are built when missing as they always are.
- ``from_step=S``: ``S`` and every step that depends on it, rebuilt; missing upstream is built.
- ``upto=S``: ``S`` and the steps it needs, reused where cached (the sweep's proxies).
- ``force``: rebuild every selected step of the domain (shared steps are rebuilt only by
  ``only``: they belong to every domain that uses them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.engine.artifacts import (
    Artifact,
    ArtifactStore,
    DigestCache,
    artifact_key,
    stable_hash,
)
from pipeline.engine.versions import code_version


@dataclass(frozen=True)
class PlanContext:
    """What a spec's hooks may read while planning: the run's validated config, its domain, its
    resolved data files, the store, and the lineage a continued run extends (or None)."""

    domain: Any  # pipeline.domains.Domain
    run: Any  # pipeline.config.RunConfig
    workdir: Path
    store: ArtifactStore
    files: Mapping[str, list[Path]]  # "ingest.sources[0].path" -> resolved files
    digests: DigestCache
    lineage: Any = None  # pipeline.lifecycle.promotion.Lineage | None


@dataclass(frozen=True)
class Prepared:
    """What a spec's ``prepare`` returns for one step: ``config`` is what ``run`` receives (data
    paths resolved), ``hashed`` the config as it enters the key, ``inputs`` what else the key
    hashes (file digests, lineage keys; the needed steps' keys are added by the planner),
    ``artifacts`` existing artifacts the step reads that are not steps of this run (the previous
    drop, the promoted model) as {input name: (kind, key)}, ``reuse`` an artifact taken as it is
    and never rebuilt (a lineage's frozen tokenizer), ``data`` anything the spec's ``options``
    hook needs at execution."""

    config: Any
    hashed: Mapping[str, Any]
    inputs: Mapping[str, Any] = field(default_factory=dict)
    artifacts: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    reuse: Artifact | None = None
    config_hash: str | None = None  # default: stable_hash(hashed)
    variant: str | None = None  # a fanned-out step's variant ("seed1", a task name)
    data: Mapping[str, Any] = field(default_factory=dict)


FIRST = "[first]"  # the suffix of a need on a fanned-out spec's first variant only
PAIRED = "[paired]"  # the suffix of a need on the variant of the same name


def first(name: str) -> str:
    """A need on the first variant of spec ``name`` only (the others are not read)."""
    return name + FIRST


def paired(name: str) -> str:
    """A need on the variant of spec ``name`` named as the reading step's own (seed i reads
    seed i); the first variant when ``name`` has no such variant."""
    return name + PAIRED


def _spec_name(need: str) -> str:
    return need.removesuffix(FIRST).removesuffix(PAIRED)


def _resolve(need: str, latest: Mapping[str, list[str]], variant: str | None) -> list[str]:
    """The planned steps a need names: every variant of a spec, the first (``first``), or the
    one of the reading step's variant (``paired``)."""
    if need.endswith(FIRST):
        return latest.get(need.removesuffix(FIRST), [])[:1]
    if need.endswith(PAIRED):
        name = need.removesuffix(PAIRED)
        steps = latest.get(name, [])
        same = name if variant is None else f"{name}[{variant}]"
        return [same] if same in steps else steps[:1]
    return latest.get(need, [])


def _no_needs(run: Any) -> tuple[str, ...]:
    return ()


def _always(run: Any) -> bool:
    return True


@dataclass(frozen=True, kw_only=True)
class StepSpec:
    """One step of a domain run, as data; see the module docstring."""

    name: str  # the artifact kind: artifacts/<name>/<key>/
    module: str  # has run(config, inputs, out_dir) -> Manifest; its closure is the code version
    title: str  # one line for `dapt plan` and the docs
    prepare: Callable[[PlanContext], Prepared | list[Prepared]]
    needs: Callable[[Any], tuple[str, ...]] = _no_needs  # steps it reads, given the RunConfig
    enabled: Callable[[Any], bool] = _always  # whether the run has this step at all
    shared: bool = False  # its artifact serves every domain with the same recipe
    resumable: bool = False  # continues from a killed build's checkpoints
    role: str | None = None  # "model": the candidate model; "verdict": gates and the report
    parallel: bool = False  # ``run`` takes ``map_shards`` (a runner may map its shards)
    # run(...)'s keyword arguments besides map_shards, from the planned step and the store
    options: Callable[[PlannedStep, ArtifactStore, bool], dict[str, Any]] | None = None
    # before anything runs: why the run has nothing to do (None: there is work)
    up_to_date: Callable[[PlanContext, Plan], str | None] | None = None
    # after this step is built: why the run stops here (None: go on)
    stops: Callable[[PlanContext, Artifact], str | None] | None = None

    def fn(self) -> Callable[..., Any]:
        import importlib

        return importlib.import_module(self.module).run

    def code_version(self) -> str:
        return code_version(self.module)


@dataclass(frozen=True)
class PlannedStep:
    name: str  # the step's name in the plan: the spec's, or "spec[variant]" when it fans out
    spec: StepSpec
    key: str
    config_hash: str
    code: str
    config: Any  # what run() receives
    inputs: dict[str, Any]  # what the key hashed besides config and code
    needs: tuple[str, ...]  # the planned steps whose artifacts it reads
    prepared: Prepared

    @property
    def kind(self) -> str:
        return self.spec.name


class Plan(Mapping[str, PlannedStep]):
    """The run's steps in execution order, by name."""

    def __init__(self, ctx: PlanContext, steps: dict[str, PlannedStep]):
        self.ctx, self._steps = ctx, steps

    def __getitem__(self, name: str) -> PlannedStep:
        return self._steps[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._steps)

    def __len__(self) -> int:
        return len(self._steps)

    def by_role(self, role: str) -> PlannedStep | None:
        return next((s for s in self._steps.values() if s.spec.role == role), None)

    def dependents(self, name: str) -> list[str]:
        """``name`` and every step that reads it, directly or not, in plan order."""
        found = {name}
        for step in self._steps.values():
            if any(n in found for n in step.needs):
                found.add(step.name)
        return [n for n in self._steps if n in found]

    def ancestors(self, name: str) -> set[str]:
        todo, found = list(self._steps[name].needs), set()
        while todo:
            n = todo.pop()
            if n not in found:
                found.add(n)
                todo.extend(self._steps[n].needs)
        return found

    def cached(self, step: PlannedStep) -> bool:
        reused = step.prepared.reuse is not None
        return reused or self.ctx.store.get(step.kind, step.key) is not None

    def rows(self) -> list[dict[str, Any]]:
        """What ``dapt plan`` shows: each step with its key and whether it is cached."""
        return [{"step": s.name, "stage": s.kind, "key": s.key, "cached": self.cached(s),
                 "shared": s.spec.shared, "title": s.spec.title} for s in self._steps.values()]


def ordered(specs: list[StepSpec], run: Any) -> list[StepSpec]:
    """The enabled specs in list order, each moved after the specs it needs (the first spec
    whose needs are all placed comes next)."""
    todo = [s for s in specs if s.enabled(run)]
    names = {s.name for s in todo}
    out: list[StepSpec] = []
    while todo:
        placed = {s.name for s in out}
        spec = next((s for s in todo if all(_spec_name(n) in placed or _spec_name(n) not in names
                                            for n in s.needs(run))), None)
        if spec is None:
            raise ValueError(f"the steps {[s.name for s in todo]} need each other (a cycle)")
        out.append(spec)
        todo.remove(spec)
    return out


def plan_steps(specs: list[StepSpec], ctx: PlanContext) -> Plan:
    """Every enabled spec's steps, keyed: config (as hashed) + code version + input keys."""
    steps: dict[str, PlannedStep] = {}
    latest: dict[str, list[str]] = {}  # spec name -> its planned step names (fan-out)
    for spec in ordered(specs, ctx.run):
        prepared = spec.prepare(ctx)
        variants = prepared if isinstance(prepared, list) else [prepared]
        code = spec.code_version()
        latest[spec.name] = []
        for p in variants:
            needs = tuple(n for need in spec.needs(ctx.run)
                          for n in _resolve(need, latest, p.variant))
            inputs: dict[str, Any] = {}
            for n in needs:  # a fanned-out input is named by its step: "pretrain[seed1]"
                inputs[n] = steps[n].key
            inputs.update(p.inputs)
            name = spec.name if p.variant is None else f"{spec.name}[{p.variant}]"
            if p.reuse is not None:
                m = p.reuse.manifest
                key, config_hash, code_used = p.reuse.key, m.config_hash, m.code_version
                inputs = dict(m.inputs)
            else:
                key = artifact_key(p.hashed, code, inputs)
                config_hash, code_used = p.config_hash or stable_hash(p.hashed), code
            steps[name] = PlannedStep(name, spec, key, config_hash, code_used, p.config, inputs,
                                      needs, p)
            latest[spec.name].append(name)
    ctx.digests.save()
    return Plan(ctx, steps)


@dataclass(frozen=True)
class Selection:
    """Which planned steps execute, which are rebuilt even if cached, and whether missing
    inputs of a selected step may be built."""

    steps: list[str]
    rebuild: set[str]
    build_missing: bool
    only: bool  # a single step was asked for


def select(plan_: Plan, only: str | None = None, from_step: str | None = None,
           force: bool = False, upto: str | None = None) -> Selection:
    names = list(plan_)
    kinds = list(dict.fromkeys(s.kind for s in plan_.values()))  # plan order, once each
    for flag, value in (("--only", only), ("--from", from_step), ("upto", upto)):
        if value is not None and value not in names and value not in kinds:
            raise ValueError(f"{flag} {value!r}: not a step of this run; allowed: "
                             f"{', '.join(kinds)}")
    if only and from_step:
        raise ValueError("--only and --from cannot be combined: pick one")

    def matching(value: str) -> list[str]:
        return [n for n in names if n == value or plan_[n].kind == value]

    own = {n for n in names if not plan_[n].spec.shared}
    if upto:  # the step and whatever it needs, reused where cached (the sweep's proxies)
        chosen = set(matching(upto))
        needed = chosen.union(*(plan_.ancestors(c) for c in chosen))
        return Selection([n for n in names if n in needed], set(), True, False)
    if only:
        chosen = matching(only)
        # shared steps are built when missing, whatever is selected (they always were)
        shared = [n for n in names if plan_[n].spec.shared and n not in chosen
                  and any(n in plan_.ancestors(c) for c in chosen)]
        return Selection([n for n in names if n in chosen or n in shared], set(chosen),
                         build_missing=False, only=True)
    if from_step:
        rebuild = {d for m in matching(from_step) for d in plan_.dependents(m)}
        return Selection(names, rebuild | (own if force else set()), True, False)
    return Selection(names, own if force else set(), True, False)
