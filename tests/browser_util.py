"""Helpers for tests that drive the real ``streamlit run`` server in headless Chromium.

Pattern from Streamlit's own e2e suite (see /work/shared/notes/streamlit.md): start the server
on a free loopback port with the file watcher and telemetry off, poll ``/_stcore/health``,
then wait for the app to be connected and idle before acting. Debian's Chromium is used
(``apt-get install -y chromium``); tests skip when it is absent.
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def have_chromium() -> bool:
    return Path(CHROMIUM).exists()


def require_browser():
    """playwright.sync_api, or skip the calling test module (Chromium or Playwright missing).
    Call at module level."""
    import pytest

    if not have_chromium():
        pytest.skip(f"{CHROMIUM} not found (apt-get install -y chromium)", allow_module_level=True)
    return pytest.importorskip("playwright.sync_api", reason="pip install playwright")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(runs: Path, port: int | None = None, extra_env: dict | None = None,
                 log_path: Path | None = None, timeout: float = 90) -> tuple[subprocess.Popen, str]:
    """``streamlit run app.py`` (the real process: ``proc.pid`` is the server itself) with
    ``TURN_AUDIT_RUNS=runs``; returns ``(proc, base url)`` once /_stcore/health says ok."""
    port = port or free_port()
    env = dict(os.environ, TURN_AUDIT_RUNS=str(runs), **(extra_env or {}))
    cmd = [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"),
           "--server.headless", "true", "--server.port", str(port), "--server.address", "127.0.0.1",
           "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"]
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115 - closed below, the child keeps its copy
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    if log_path:
        log.close()  # the child holds its own descriptor
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read().decode().strip() == "ok":
                    return proc, url
        except OSError:
            time.sleep(0.3)
    stop_server(proc)
    raise RuntimeError(f"streamlit did not become healthy in {timeout:.0f} s")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def wait_ready(page, text: str | None = None, timeout_ms: int = 90_000) -> None:
    """Connected, script idle, no skeleton/spinner left (and ``text`` shown, when given)."""
    page.wait_for_selector('[data-testid="stApp"][data-test-connection-state="CONNECTED"]',
                           timeout=timeout_ms)
    if text:
        page.get_by_text(text).first.wait_for(timeout=timeout_ms)
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]',
                           timeout=timeout_ms)
    page.wait_for_function(
        "document.querySelectorAll('[data-testid=\"stSkeleton\"], [data-testid=\"stSpinner\"]').length === 0",
        timeout=timeout_ms)


def exceptions(page) -> list[str]:
    """Texts of the exception boxes Streamlit drew on the page (empty: none)."""
    loc = page.locator('[data-testid="stException"]')
    return [loc.nth(i).inner_text() for i in range(loc.count())]


def launch(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


@contextlib.contextmanager
def chromium():
    """A headless Debian Chromium through Playwright, closed afterwards."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


@contextlib.contextmanager
def demo_server(tmp_path: Path, defaults: dict):
    """The real app on an empty runs folder under ``tmp_path`` with form ``defaults``
    (TURN_AUDIT_DEFAULTS) and server data limited to ``tmp_path``: yields (url, runs folder)."""
    import json

    runs = tmp_path / "runs"
    runs.mkdir()
    proc, url = start_server(runs, extra_env={"TURN_AUDIT_DEFAULTS": json.dumps(defaults),
                                              "TURN_AUDIT_DATA_ROOTS": str(tmp_path)},
                             log_path=tmp_path / "server.log")
    try:
        yield url, runs
    finally:
        stop_server(proc)
