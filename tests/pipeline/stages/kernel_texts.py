"""Texts the compiled kernels' tests run on (``test_*kernels.py``): every sample document and
literal strings that reach the corners (CRLF, Unicode space, bullets, ellipses, blank
paragraphs, non-ASCII words), and plain-Python and SQL statements the kernels are held to."""

from __future__ import annotations

import json
import re
from pathlib import Path

import duckdb
import pyarrow as pa

CORNERS = [
    "  a \t b\u3000c \n d\r\n\r\n\r\ne\x01f\u00a0\n", "\n\n\n x", " \n\nabc", "a\r\r\nb",
    "a\r\x01\nb", "a\n \n \nb", "abc \t", "", "   ", "caf\u0065\u0301 ok", "\u2028x\x0b\x0cy\x7f",
    "a\r \nb", " x ", "\t\n", "\n",
    "- one\n  * two\n\u2022 three\nfour...\nfive\u2026\n", "Para one.\n \nPara one.\n\n\nTwo",
    "## heading #tag ... .... ..... \u2026\u2026", "THE The the, of OF and",
    "f\u00fcr die Stra\u00dfe",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8 \u0391\u03b8\u03ae\u03bd\u03b1 123 \u00bd",
    "x\n\ny\n\nx\n\ny", "same line\nsame line\nother",
]



def sample_texts(samples_dir: Path) -> list[str]:
    """Every sample document (medical, finance, general), then the corner cases."""
    out = []
    for path in sorted(samples_dir.glob("*/*.jsonl")):
        out += [json.loads(line)["text"] for line in path.read_text().split("\n") if line]
    return out + CORNERS


def sql(query: str, texts: list[str]) -> list[tuple]:
    con = duckdb.connect()
    con.register("source", pa.table({"ord": list(range(len(texts))), "text": texts}))
    return con.sql(query).fetchall()


def python_words(text: str) -> list[str]:
    """Lower-cased word runs, code point by code point (str.lower's final sigma aside)."""
    return re.findall(r"\w+", "".join(c.lower() if len(c.lower()) == 1 else c for c in text))
