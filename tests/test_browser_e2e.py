"""The real app in a real browser: `streamlit run` on a loopback port, driven by Playwright.

Needs Debian's Chromium (``apt-get install -y chromium``) and the ``playwright`` Python package;
skipped with the reason otherwise. Run with ``pytest -m browser tests/test_browser_e2e.py``.
"""
from __future__ import annotations

import csv
import io
import json
import re
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from browser_util import require_browser, wait_ready

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]

playwright = require_browser()

TINY = {"demo_n": 300, "image_size": 32, "lp_epochs": 3, "fft_epochs": 1}
PAGES = ["", "data_run", "training", "losses", "clusters", "review", "export"]


APP_DEFAULTS = TINY   # the form defaults of conftest's `server` fixture


def assert_no_exception(page) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0, page.locator(
        '[data-testid="stException"]').first.inner_text()


def test_every_page_renders_for_finished_and_failed_runs(server, browser):
    url, runs = server
    sys.path.insert(0, str(ROOT / "tests"))
    from fakerun import make_fake_run

    page = browser.new_page(viewport={"width": 1300, "height": 900})
    for p in ("", "data_run", "review"):  # no runs at all
        page.goto(f"{url}/{p}")
        wait_ready(page)
        assert_no_exception(page)
    make_fake_run(runs / "fin", n=40)
    make_fake_run(runs / "bad", n=20, state="failed")
    for run, pages in (("fin", PAGES), ("bad", ["", "training", "review", "export"])):
        for p in pages:
            page.goto(f"{url}/{p}?run={run}")
            wait_ready(page)
            assert_no_exception(page)
    page.goto(f"{url}/training?run=bad")
    page.get_by_text("boom: synthetic failure").first.wait_for(timeout=30_000)


def test_demo_run_review_and_download(server, browser):
    url, runs = server
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    page.goto(f"{url}/data_run")
    wait_ready(page, "Start run")
    start = page.get_by_role("button", name="Start run")
    start.wait_for(timeout=60_000)
    page.wait_for_function("!Array.from(document.querySelectorAll('button')).find("
                           "b => b.innerText.trim() === 'Start run').disabled", timeout=90_000)
    start.click()
    # The Training page polls the job; wait until it says it finished.
    try:
        page.get_by_text("Finished.").first.wait_for(timeout=420_000)
    except Exception:
        page.screenshot(path=str(runs.parent / "fail.png"), full_page=True)
        raise
    names = [d.name for d in runs.iterdir() if (d / "status.json").exists()]
    assert len(names) == 1
    run = names[0]
    assert json.loads((runs / run / "status.json").read_text())["state"] == "finished"

    # Review: one click, one keyboard shortcut.
    page.goto(f"{url}/review?run={run}")
    try:
        wait_ready(page, "suspects reviewed")
    except Exception:
        page.screenshot(path="/tmp/e2e_fail.png", full_page=True)
        raise
    head = page.get_by_text(re.compile(r"^\d+ of \d+ suspects reviewed$")).first
    total = int(re.match(r"0 of (\d+)", head.inner_text()).group(1))
    assert total > 0
    page.get_by_role("button", name=re.compile(r"^Accept →")).first.click()
    page.get_by_text(f"1 of {total} suspects reviewed").first.wait_for(timeout=30_000)
    wait_ready(page)
    page.mouse.click(1250, 30)  # focus the page (not an input) so the shortcut reaches Streamlit
    page.keyboard.press("k")
    page.get_by_text(f"2 of {total} suspects reviewed").first.wait_for(timeout=30_000)

    # Export: download the corrected CSV and check its rows.
    page.goto(f"{url}/export?run={run}")
    wait_ready(page, "Corrected labels")
    with page.expect_download(timeout=30_000) as dl:
        page.get_by_role("button", name="Download corrected_labels.csv").click()
    data = Path(dl.value.path()).read_text(encoding="utf-8")
    rows = list(csv.DictReader(io.StringIO(data)))
    assert list(rows[0].keys()) == ["path", "given_label", "suggested_label", "final_label", "decision",
                                    "suspicion", "is_label_issue"]
    assert len(rows) == TINY["demo_n"]
    reviewed = [r for r in rows if r["decision"] != "unreviewed"]
    assert sorted(r["decision"] for r in reviewed) == ["accept", "keep"]
    for r in reviewed:
        if r["decision"] == "accept":
            assert r["final_label"] == r["suggested_label"]
        else:
            assert r["final_label"] == r["given_label"]
    for r in rows:
        assert 0.0 <= float(r["suspicion"]) <= 1.0 and r["is_label_issue"] in ("0", "1")
    # The download also wrote the file to the run's exports folder.
    deadline = time.time() + 10
    while not (runs / run / "exports" / "corrected_labels.csv").exists() and time.time() < deadline:
        time.sleep(0.2)
    assert (runs / run / "exports" / "corrected_labels.csv").exists()
