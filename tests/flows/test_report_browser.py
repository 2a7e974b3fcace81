"""The HTML report in a real browser (headless Chromium): every plot decodes, the key table is
there, and a run with a failed stage still renders a report that names it."""

from __future__ import annotations

import html
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e_domain import write_test_domain
from tests.flows.conftest import SERVED_PROFILE, dapt

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser",
                                                 "google-chrome"))), None)
pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed: `apt-get install chromium` (make "
    "test-deps does it where it runs as root with apt)")]
# --no-sandbox: Chromium refuses to run as root (containers, CI) with its sandbox on.
HEADLESS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--virtual-time-budget=10000"]
# Appended to a copy of the page: after the load event (every image fetched and decoded or
# failed), write what the browser made of the page into the DOM that --dump-dom prints.
PROBE = """<script>addEventListener('load', () => {
  const rows = t => t && t.tagName === 'TABLE'
    ? [...t.rows].map(r => [...r.cells].map(c => c.textContent)) : null;
  const key = [...document.querySelectorAll('h2')]
    .find(h => h.textContent.startsWith('Key results'));
  const out = document.createElement('pre');
  out.id = 'dapt-probe';
  out.textContent = JSON.stringify({
    title: document.title, text: document.body.innerText,
    images: [...document.images].map(i => ({alt: i.alt, complete: i.complete,
                                            width: i.naturalWidth, height: i.naturalHeight})),
    key_table: key ? rows(key.nextElementSibling) : null,
    tables: [...document.querySelectorAll('table')].map(rows)});
  document.body.appendChild(out);
});</script>"""


def render(page: Path, scratch: Path) -> dict:
    """What Chromium made of ``page``: title, visible text, images, tables."""
    probed = scratch / f"probe-{page.parent.name}.html"
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    dom = subprocess.run([CHROMIUM, *HEADLESS, "--dump-dom", probed.as_uri()],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert "<pre id=\"dapt-probe\">" in dom, dom[-2000:]
    return json.loads(html.unescape(dom.split("<pre id=\"dapt-probe\">", 1)[1]
                                    .split("</pre>", 1)[0]))


def screenshot(page: Path, out: Path, size: str = "1280,2400") -> Path:
    subprocess.run([CHROMIUM, *HEADLESS, f"--window-size={size}", f"--screenshot={out}",
                    page.as_uri()], capture_output=True, timeout=120, check=True)
    return out


def test_report_renders_with_every_plot_and_the_key_table(served_run: dict,
                                                          tmp_path: Path) -> None:
    page = served_run["report"].with_suffix(".html")
    seen = render(page, tmp_path)
    plots = sorted(p.name for p in (page.parent / "plots").glob("*.png"))
    assert len(seen["images"]) == len(plots) >= 5
    for image in seen["images"]:  # decoded: a broken data URI has naturalWidth 0
        assert image["complete"] and image["width"] > 0 and image["height"] > 0, image
    assert seen["title"].startswith("dapt report: medtest")
    header, *rows = seen["key_table"]
    assert header == ["metric", "base", "adapted", "change"]
    names = [r[0] for r in rows]
    assert "domain bits/byte (lower is better)" in names
    assert "icd10_chapter macro-f1 (mean +- std, 2 seeds)" in names
    shot = screenshot(page, tmp_path / "report.png")
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(png[16:20], "big") == 1280  # IHDR width: the window we asked for


def test_a_failed_run_renders_a_report_naming_the_stage(served_run: dict, samples_dir: Path,
                                                        tmp_path: Path) -> None:
    # More sequences per step than the corpus packs into: pretrain's quality gate stops the run
    # after ingest and the tokenizer (cache hits from the served run) completed.
    profile = {**SERVED_PROFILE, "pretrain": {**SERVED_PROFILE["pretrain"],
                                              "micro_batch_size": 100_000}}
    domain_file = write_test_domain(samples_dir, tmp_path, **profile)
    result = dapt("run", "--domain-file", str(domain_file), "--workdir",
                  str(served_run["work"]))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "stage pretrain failed" in result.stderr
    report = Path(result.stderr.split("report: ", 1)[1].split()[0])
    table = {line.split()[0]: line.split()[1] for line in result.stdout.splitlines()
             if line.split()[:1] in (["ingest"], ["tokenizer"], ["pretrain"])}
    assert table == {"ingest": "cache", "tokenizer": "cache", "pretrain": "failed"}

    seen = render(report.with_suffix(".html"), tmp_path)
    assert seen["title"].endswith("FAILED")
    assert "failed in stage pretrain" in seen["text"]
    assert "StageError: stage pretrain failed" in seen["text"]
    assert "need at least 100000" in seen["text"]  # the quality gate's own words
    (stages,) = seen["tables"]
    assert [r[:3:2] for r in stages[1:]] == [["ingest", "cache hit"], ["tokenizer", "cache hit"],
                                             ["pretrain", "failed"]]
    assert seen["images"] == []
