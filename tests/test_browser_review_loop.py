"""The reviewer's loop in a real browser: the cut-off survives a reload and Export's suspects are
the queue the reviewer worked through; review during a running job, decisions kept after it.

Real ``streamlit run`` + Playwright + Debian's Chromium (tests/browser_util.py); skipped without
them. Run with ``pytest -m browser tests/test_browser_review_loop.py``.
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

from browser_util import exceptions, require_browser, wait_ready

pytestmark = [pytest.mark.browser, pytest.mark.timeout(900)]

playwright = require_browser()

# A demo run whose FFT lasts long enough to review during it (reviewing two images takes a few seconds).
LONG_FFT = {"demo_n": 300, "image_size": 32, "lp_epochs": 3, "fft_epochs": 10}
HEAD = re.compile(r"^(\d+) of (\d+) suspects reviewed$")


APP_DEFAULTS = LONG_FFT   # the form defaults of conftest's `server` fixture


def _head(page) -> tuple[int, int]:
    text = page.get_by_text(HEAD).first.inner_text()
    done, total = HEAD.match(text).groups()
    return int(done), int(total)


def _wait_head(page, done: int, total: int | None = None) -> None:
    pattern = f"^{done} of {total if total is not None else '[0-9]+'} suspects reviewed$"
    page.get_by_text(re.compile(pattern)).first.wait_for(timeout=60_000)


def _download(page, name: str) -> str:
    """The bytes behind the download button ``name``, once the page is idle again (a button clicked
    while a rerun replaces the page's elements can be lost)."""
    wait_ready(page)
    with page.expect_download(timeout=30_000) as dl:
        page.get_by_role("button", name=re.compile(name)).click()
    data = Path(dl.value.path()).read_text(encoding="utf-8")
    wait_ready(page)
    return data


def _queue(run_dir: Path, cutoff: float) -> list[int]:
    """The suspects at ``cutoff``, most suspicious first: what the Review page queues."""
    with open(run_dir / "samples.csv", newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if float(r["suspicion"]) >= cutoff]
    rows.sort(key=lambda r: (-float(r["suspicion"]), int(r["index"])))
    return [int(r["index"]) for r in rows]


def _check_export(page, url: str, run_dir: Path, queue: list[int], reviewed: dict) -> None:
    """Export's suspect set (Label Studio tasks, is_label_issue) is ``queue``."""
    page.goto(f"{url}/export?run={run_dir.name}")
    wait_ready(page, "Corrected labels")
    assert not exceptions(page), exceptions(page)
    tasks = json.loads(_download(page, r"^Download Label Studio tasks"))
    assert [t["data"]["index"] for t in tasks] == queue
    rows = list(csv.DictReader(io.StringIO(_download(page, "^Download corrected_labels.csv$"))))
    for i, r in enumerate(rows):
        if r["decision"] == "unreviewed":
            assert r["is_label_issue"] == str(int(i in set(queue))), i
        else:
            assert i in reviewed and (r["decision"], r["final_label"]) == reviewed[i], i
    assert {i for i, r in enumerate(rows) if r["decision"] != "unreviewed"} == set(reviewed)


def _decisions(run_dir: Path) -> dict[int, tuple[str, str]]:
    from turn_core.review import ReviewStore

    return {i: (d.decision, d.final_label or "") for i, d in ReviewStore(run_dir).latest().items()}


def test_cutoff_survives_reload_and_export_is_the_queue(server, browser):
    from fakerun import make_fake_run

    url, runs = server
    run_dir = make_fake_run(runs / "fin", n=60)
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    page.goto(f"{url}/losses?run=fin")
    wait_ready(page, "Suspicion cut-off")
    slider = page.get_by_test_id("stSlider").last.locator("input[type=range]")   # the cut-off
    before = float(slider.get_attribute("value"))
    slider.focus()
    page.keyboard.press("PageUp")                     # a tenth of the range up, twice
    page.keyboard.press("PageUp")
    deadline = time.time() + 30
    while not (run_dir / "review.json").exists() and time.time() < deadline:
        time.sleep(0.2)
    wait_ready(page)
    saved = json.loads((run_dir / "review.json").read_text())["cutoff"]
    cutoff = saved["value"]
    assert saved["table"] == "final" and abs(cutoff - before) > 0.05

    page.reload()                                     # a new session: nothing but the run folder
    wait_ready(page, "Suspicion cut-off")
    shown = page.get_by_test_id("stSlider").last.locator("input[type=range]").get_attribute("value")
    assert float(shown) == pytest.approx(cutoff, abs=1e-3)
    queue = _queue(run_dir, cutoff)
    assert 0 < len(queue) < 60
    page.get_by_text(f"Review these {len(queue)} suspects").first.wait_for(timeout=30_000)

    page.goto(f"{url}/review?run=fin")
    wait_ready(page, "suspects reviewed")
    assert _head(page) == (0, len(queue))
    page.get_by_role("button", name=re.compile(r"^Accept →")).first.click()
    _wait_head(page, 1, len(queue))
    wait_ready(page)
    page.get_by_role("button", name=re.compile(r"^Keep ")).first.click()
    _wait_head(page, 2, len(queue))
    reviewed = _decisions(run_dir)
    assert len(reviewed) == 2 and set(reviewed) <= set(queue)
    _check_export(page, url, run_dir, queue, reviewed)


def test_review_during_a_running_job_keeps_the_decisions(server, browser):
    url, runs = server
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    page.goto(f"{url}/data_run")
    wait_ready(page, "Start run")
    page.wait_for_function("!Array.from(document.querySelectorAll('button')).find("
                           "b => b.innerText.trim() === 'Start run').disabled", timeout=90_000)
    page.get_by_role("button", name="Start run").click()
    deadline = time.time() + 300
    run_dir = None
    while time.time() < deadline:
        dirs = [d for d in runs.iterdir() if (d / "status.json").exists()]
        status = json.loads((dirs[0] / "status.json").read_text()) if dirs else {}
        if status.get("provisional"):
            run_dir = dirs[0]
            break
        assert status.get("state") in (None, "running"), status
        time.sleep(0.5)
    assert run_dir is not None, "no provisional table within 300 s"

    page.goto(f"{url}/review?run={run_dir.name}")
    wait_ready(page, "suspects reviewed")
    page.get_by_text("Provisional suspects").first.wait_for(timeout=30_000)
    _, total = _head(page)
    page.get_by_role("button", name=re.compile(r"^Accept →")).first.click()
    _wait_head(page, 1, total)
    wait_ready(page)
    page.get_by_role("button", name=re.compile(r"^Keep ")).first.click()
    _wait_head(page, 2, total)
    during = _decisions(run_dir)
    status = json.loads((run_dir / "status.json").read_text())
    assert len(during) == 2
    assert status["state"] == "running" and status["provisional"] is True, "the run ended before the review"

    # The run finishes; the page switches to the final table by itself (no click).
    page.get_by_text("Provisional suspects").first.wait_for(state="hidden", timeout=600_000)
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "finished" and status["provisional"] is False
    wait_ready(page, "suspects reviewed")
    assert not exceptions(page), exceptions(page)
    assert _decisions(run_dir) == during             # kept, with the labels they gave
    shown = page.get_by_text(re.compile(r"image #\d+$")).first.inner_text()
    assert int(shown.rsplit("#", 1)[1]) not in during   # reviewed images stay out of the queue
    from turn_core.review import suspect_rule

    rule = suspect_rule(run_dir)
    assert (rule.source, rule.table) == ("flag count", "final")
    _check_export(page, url, run_dir, _queue(run_dir, rule.cutoff), during)
