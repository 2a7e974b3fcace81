"""Prefect flows and tasks that wire ``pipeline`` stages together, plus the ``dapt`` CLI."""
