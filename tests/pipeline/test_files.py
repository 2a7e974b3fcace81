"""pipeline/files.py's atomic write (the data-file helpers are tested with ingest,
tests/pipeline/stages/test_ingest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.files import write_atomic


def test_write_atomic_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "packed.json"
    write_atomic(path, '{"old": 1}\n')
    write_atomic(path, '{"name": "caf\u00e9"}\n')  # UTF-8 whatever the locale
    assert path.read_bytes() == '{"name": "caf\u00e9"}\n'.encode()
    assert [p.name for p in tmp_path.iterdir()] == ["packed.json"]


def test_write_atomic_keeps_the_old_file_when_the_write_fails(tmp_path: Path) -> None:
    path = tmp_path / "reference.json"
    write_atomic(path, "old\n")
    with pytest.raises(UnicodeEncodeError):
        write_atomic(path, "\ud800")  # a lone surrogate: no UTF-8 for it
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["reference.json"]
