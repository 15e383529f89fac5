"""Fixtures shared by several test files."""
from __future__ import annotations

import pytest


@pytest.fixture
def app_runs_root(tmp_path, monkeypatch):
    """An empty runs folder for the app (``TURN_AUDIT_RUNS``), server data limited to
    ``tmp_path``, no form defaults, and Streamlit's caches cleared before and after (they outlive
    a test inside one pytest process)."""
    import streamlit as st

    root = tmp_path / "runs"
    root.mkdir()
    monkeypatch.setenv("TURN_AUDIT_RUNS", str(root))
    monkeypatch.setenv("TURN_AUDIT_DATA_ROOTS", str(tmp_path))
    monkeypatch.delenv("TURN_AUDIT_DEFAULTS", raising=False)
    st.cache_resource.clear()
    st.cache_data.clear()
    yield root
    st.cache_resource.clear()
    st.cache_data.clear()


@pytest.fixture
def one_torch_thread():
    """Tiny tensors: a second intra-op thread only adds spin-wait overhead (50x slower on a
    loaded 2-core host). Restored afterwards so other test files see the default."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def fake_run(tmp_path):
    """The synthetic finished run of tests/fakerun.py (80 samples, seed 3), opened as a ``Run``."""
    from fakerun import make_fake_run

    from turn_core.rundir import Run

    return Run(make_fake_run(tmp_path / "r", n=80, seed=3))


@pytest.fixture
def fake_df(fake_run):
    """``fake_run``'s samples table."""
    return fake_run.samples()


@pytest.fixture
def browser():
    """Headless Chromium for the browser tests (tests/browser_util.py)."""
    from browser_util import chromium

    with chromium() as b:
        yield b


@pytest.fixture
def server(tmp_path, request):
    """The real app on an empty runs folder, with the test module's ``APP_DEFAULTS`` as form
    defaults: (url, runs folder)."""
    from browser_util import demo_server

    with demo_server(tmp_path, request.module.APP_DEFAULTS) as running:
        yield running
