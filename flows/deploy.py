"""Prefect deployments from the domains' ``schedule`` sections.

- ``dapt deploy`` registers one deployment per scheduled domain in a work pool (created as a
  ``process`` pool if missing); any Prefect worker of that pool runs them:
  ``prefect worker start --pool dapt-process``.
- ``dapt serve`` registers the same deployments and runs them in this process
  (``prefect.serve``): scheduled runs and runs triggered from the UI or the API.

Both need a Prefect server: ``PREFECT_API_URL`` when set, else the one ``dapt server start``
runs for the workdir (``--workdir``), which the CLI finds by itself.
A deployment's parameters are the flow's (``profile``, ``only``, ``from_stage``, ``force``,
``workdir``, ``init``, ``overrides``), so a single-stage rerun is a deployment run with ``only``
set; ``workdir`` is the CLI's ``--workdir`` unless ``schedule.parameters`` names one. Schedules
run the continued-adaptation loop by default (``init: promoted``: continue the domain's promoted
model on each new drop, promote on passing gates); ``schedule.parameters.init: base`` opts out.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from prefect import serve
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectNotFound
from prefect.schedules import Cron

from flows.domain_flow import domain_pipeline
from pipeline.domains import Domain

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ENTRYPOINT = "flows/domain_flow.py:domain_pipeline"


def deployment_name(domain: Domain) -> str:
    return f"dapt-{domain.name}"


def deployment_kwargs(domain: Domain, workdir: Path | None = None) -> dict[str, Any]:
    """Name, schedule, parameters and tags of a scheduled domain's deployment; its runs use
    ``workdir`` (when given) unless the schedule's parameters say otherwise."""
    schedule = domain.spec.schedule
    if schedule is None:
        raise ValueError(f"domain {domain.name!r} has no `schedule` section to deploy")
    target = ({"domain_file": str(domain.path)} if domain.origin == "file"
              else {"domain": domain.name})
    return {
        "name": deployment_name(domain),
        "schedules": [Cron(schedule.cron, timezone=schedule.timezone)],
        "parameters": {**target, "init": "promoted",
                       **({"workdir": str(workdir)} if workdir else {}), **schedule.parameters},
        "tags": ["dapt", domain.name],
        "description": domain.spec.description or None,
    }


async def _ensure_pool(name: str) -> None:
    async with get_client() as client:
        try:
            await client.read_work_pool(name)
        except ObjectNotFound:
            await client.create_work_pool(WorkPoolCreate(name=name, type="process"))


def deploy(domains: list[Domain], pool: str, workdir: Path | None = None) -> list[str]:
    """Register one deployment per domain in ``pool``; return their full names."""
    asyncio.run(_ensure_pool(pool))
    flow = domain_pipeline.from_source(source=str(PROJECT_ROOT), entrypoint=ENTRYPOINT)
    names = []
    for domain in domains:
        kwargs = deployment_kwargs(domain, workdir)
        flow.deploy(work_pool_name=pool, build=False, push=False, print_next_steps=False,
                    **kwargs)
        names.append(f"{domain_pipeline.name}/{kwargs['name']}")
    return names


async def _forget(names: list[str]) -> None:
    async with get_client() as client:
        for name in names:
            try:
                deployment = await client.read_deployment_by_name(name)
            except ObjectNotFound:
                continue
            await client.delete_deployment(deployment.id)


def serve_domains(domains: list[Domain], limit: int | None = None,
                  workdir: Path | None = None) -> None:
    """Register the deployments and run their flow runs here until interrupted.

    A deployment of the same name registered by ``dapt deploy`` is replaced: Prefect would
    otherwise keep its code-storage settings, and this process could not load the flow.
    """
    asyncio.run(_forget([f"{domain_pipeline.name}/{deployment_name(d)}" for d in domains]))
    serve(*[domain_pipeline.to_deployment(**deployment_kwargs(d, workdir)) for d in domains],
          limit=limit)
