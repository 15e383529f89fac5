"""Cancellation token and progress events shared by the pipeline, the CLI and the job registry.

A progress callback receives dicts (the same objects appended to events.jsonl). Keys present on
every event: ``phase`` (cache | features | lp | fft | score | done), ``kind`` (start | step |
epoch | gmm | timing | info | warning), ``t`` (unix time). Step events add ``step``, ``steps``,
``epoch``, ``epochs``, ``loss``, ``images_per_s``; epoch events add ``epoch``, ``loss`` and for
FFT ``tau``, ``clean_per_class``, ``n_train``; timing events add ``seconds``.
"""
from __future__ import annotations

import threading
from collections.abc import Callable

from .errors import Cancelled

ProgressFn = Callable[[dict], None]


class CancelToken:
    """Thread-safe flag; the pipeline checks it between batches and raises ``Cancelled``."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled("the run was cancelled")


def check(cancel: CancelToken | None) -> None:
    """Raise ``Cancelled`` when ``cancel`` is set (None never cancels)."""
    if cancel is not None:
        cancel.raise_if_cancelled()
