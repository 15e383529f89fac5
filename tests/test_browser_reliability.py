"""Issue 5 in a real browser: review decisions survive kill -9 of the server; two browser
sessions reviewing the same run lose no update.

The real ``streamlit run`` process (tests/browser_util.py) on a loopback port, a synthetic
finished run (tests/fakerun.py), Debian's Chromium driven by Playwright. Skipped only when
/usr/bin/chromium is absent. ``pytest -m browser tests/test_browser_reliability.py``.
"""
from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from browser_util import exceptions, launch, require_browser, start_server, stop_server, wait_ready
from fakerun import make_fake_run

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

sync_api = require_browser()

COUNTER = re.compile(r"^(\d+) of (\d+) suspects reviewed$")
BUTTONS = {"accept": re.compile(r"^Accept →"), "keep": re.compile(r"^Keep "),
           "exclude": re.compile(r"^Exclude")}


@pytest.fixture()
def server(tmp_path):
    runs = tmp_path / "runs"
    run = make_fake_run(runs / "fin", n=60)
    proc, url = start_server(runs, extra_env={"TURN_AUDIT_DATA_ROOTS": str(tmp_path)},
                             log_path=tmp_path / "server.log")
    yield proc, url, run
    stop_server(proc)


@pytest.fixture()
def browser():
    with sync_api.sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


def open_review(page, url: str) -> int:
    """Open the Review page of run 'fin'; returns the number of suspects M.

    The app's root is opened first: on a server that has not yet run app.py, a deep link
    runs pages/review.py without the frame (intermittent: Streamlit's legacy pages/ auto-discovery)."""
    page.goto(url)
    wait_ready(page)
    page.goto(f"{url}/review?run=fin")
    wait_ready(page, "suspects reviewed")
    n, m = counter(page)
    assert n == 0 and m >= 5, (n, m)
    return m


def open_review_reviewed(page, url: str) -> tuple[int, int]:
    page.goto(url)
    wait_ready(page)
    page.goto(f"{url}/review?run=fin")
    wait_ready(page, "suspects reviewed")
    return counter(page)


def counter(page) -> tuple[int, int]:
    text = page.get_by_text(COUNTER).first.inner_text().strip()
    n, m = COUNTER.match(text).groups()
    return int(n), int(m)


def decide(page, action: str, expect_reviewed: int, total: int) -> None:
    """Click a decision button and wait until the page acknowledges it (the counter)."""
    page.get_by_role("button", name=BUTTONS[action]).first.click()
    page.get_by_text(f"{expect_reviewed} of {total} suspects reviewed", exact=True).first.wait_for(timeout=30_000)
    wait_ready(page)
    assert not exceptions(page), exceptions(page)


def set_reviewer(page, name: str) -> None:
    box = page.get_by_role("textbox", name="Reviewer name")
    box.fill(name)
    box.press("Enter")
    wait_ready(page)


def test_review_decisions_survive_kill_9_of_the_server(server, browser):
    proc, url, run = server
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    total = open_review(page, url)
    set_reviewer(page, "ann")
    actions = ["accept", "keep", "exclude", "accept", "keep"]
    for k, action in enumerate(actions, 1):
        decide(page, action, k, total)

    # Every decision above was acknowledged on screen. Kill the server like the OOM killer would.
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert proc.returncode == -signal.SIGKILL

    from turn_core.review import ReviewStore

    hist = ReviewStore(run).history()
    assert [d.decision for d in hist] == actions
    assert {d.reviewer for d in hist} == {"ann"}
    assert len(ReviewStore(run).latest()) == len(actions)  # five different images

    # A fresh server on the same runs folder shows them.
    proc2, url2 = start_server(run.parent, log_path=run.parent.parent / "server2.log")
    try:
        assert open_review_reviewed(page, url2) == (len(actions), total)
    finally:
        stop_server(proc2)


def test_two_browser_sessions_lose_no_update(server, browser):
    _, url, run = server
    a = browser.new_context(viewport={"width": 1300, "height": 1000}).new_page()
    b = browser.new_context(viewport={"width": 1300, "height": 1000}).new_page()
    total = open_review(a, url)
    assert open_review(b, url) == total
    set_reviewer(a, "ann")
    set_reviewer(b, "bob")

    # Both sessions show the same first suspect X. Ann accepts it; Bob, whose page has not
    # refreshed, keeps it a moment later: both rows are stored and Bob's, the latest, counts.
    decide(a, "accept", 1, total)
    decide(b, "keep", 1, total)
    # Both moved on to the next unreviewed suspect Y: Ann excludes it, then Bob accepts it.
    decide(a, "exclude", 2, total)
    decide(b, "accept", 2, total)

    from turn_core.review import ReviewStore

    store = ReviewStore(run)
    hist = store.history()
    assert [(d.reviewer, d.decision) for d in hist] == [("ann", "accept"), ("bob", "keep"),
                                                        ("ann", "exclude"), ("bob", "accept")]
    x, y = hist[0].index, hist[2].index
    assert x != y and hist[1].index == x and hist[3].index == y   # each image decided twice
    latest = store.latest()
    assert (latest[x].decision, latest[x].reviewer) == ("keep", "bob")     # the latest counts
    assert (latest[y].decision, latest[y].reviewer) == ("accept", "bob")
    assert store.count_reviewed() == 2
    # Both sessions agree after a refresh.
    for page in (a, b):
        page.reload()
        wait_ready(page, "suspects reviewed")
        assert counter(page) == (2, total)

