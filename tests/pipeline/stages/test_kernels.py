"""What the compiled kernels share (``ingest/kernels.py``): the code point tables, and
``warm()``, which ``make install`` runs to compile every kernel. Each kernel's own tests sit
beside it: ``test_text_kernels.py``, ``test_gopher_kernels.py``, ``test_minhash_kernels.py``."""

from __future__ import annotations

from pipeline.stages.ingest import kernels


def test_unicode_tables_cover_every_classified_code_point() -> None:
    flags, lower = kernels.unicode_tables()
    assert flags[ord("a")] == kernels.LETTER | kernels.WORD and flags[ord("7")] == kernels.WORD
    assert flags[ord("_")] == kernels.WORD and flags[ord(" ")] == 0
    assert lower[ord("\u00c4")] == ord("\u00e4") and lower[ord("\u03a3")] == ord("\u03c3")
    beyond = [chr(c) for c in range(kernels.LAST_CLASSIFIED + 1, 0x110000)]
    assert not any(c.isalnum() or c.lower() != c for c in beyond)




def test_warm_runs_every_kernel() -> None:
    kernels.warm()
