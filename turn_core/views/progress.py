"""Where a run is, from its event log (``events.jsonl``): phase, epoch, speed, ETA and curves.

The Training page reads only this summary; the events themselves stay on disk and are read
incrementally (``EventTail``: only the bytes appended since the last poll are parsed).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

PHASE_NAMES = {"cache": "decoding images", "features": "extracting features",
               "lp": "linear probing", "fft": "full fine-tuning", "fft-loss": "loss pass after FFT epoch",
               "test": "testing", "score": "scoring", "done": "done", "data": "loading data",
               "backbone": "loading the model", "provisional": "scoring the first suspects"}


def _empty_summary(events: list[dict]) -> dict[str, Any]:
    return {"phase": None, "phase_name": "waiting", "epoch": None, "epochs": None, "step": None,
            "steps": None, "images_per_s": None, "fraction": None, "eta_s": None, "loss_steps": [],
            "loss_epochs": [], "clean": [], "kept": [], "tau": [], "warnings": [],
            "last": events[-1] if events else None, "timings": []}


def _on_step(out: dict, ev: dict, ph: str | None) -> None:
    out.update(epoch=ev.get("epoch"), epochs=ev.get("epochs"), step=ev.get("step"), steps=ev.get("steps"))
    if ev.get("images_per_s") is not None:
        out["images_per_s"] = ev["images_per_s"]
    if ev.get("loss") is not None and ev.get("steps"):
        x = (ev.get("epoch") or 1) - 1 + (ev.get("step") or 0) / max(ev["steps"], 1)
        out["loss_steps"].append({"phase": ph, "x": x, "loss": float(ev["loss"])})


def _on_epoch(out: dict, ev: dict, ph: str | None) -> None:
    out.update(epoch=ev.get("epoch"), epochs=ev.get("epochs"), step=None, steps=None)
    if ev.get("loss") is not None:
        out["loss_epochs"].append({"phase": ph, "epoch": ev.get("epoch"), "loss": float(ev["loss"])})
    if ev.get("tau") is not None:
        out["tau"].append({"epoch": ev.get("epoch"), "tau": ev["tau"]})
    cpc = ev.get("clean_per_class")
    if isinstance(cpc, dict):
        out["clean"] += [{"epoch": ev.get("epoch"), "class": str(c), "clean": n} for c, n in cpc.items()]


def _on_other(out: dict, ev: dict, ph: str | None) -> None:
    kind = ev.get("kind")
    if kind == "gmm" and isinstance(ev.get("kept_per_class"), dict):
        out["kept"] += [{"epoch": ev.get("epoch"), "class": str(c), "kept": n}
                        for c, n in ev["kept_per_class"].items()]
    elif kind == "start":
        out.update(epoch=None, epochs=ev.get("epochs"), step=None, steps=ev.get("steps"))
    elif kind == "warning":
        out["warnings"].append(str(ev.get("message") or ev.get("msg") or ""))
    elif kind == "timing":
        out["timings"].append({"phase": ph, "seconds": ev.get("seconds")})


# Event kind → how it changes the summary (kinds not listed: see _on_other).
_HANDLERS = {"step": _on_step, "epoch": _on_epoch}


def _phase_fraction(out: dict) -> float | None:
    """Fraction of the current phase done, from epoch/step counters (None when unknown)."""
    ep, eps, st_, sts = out["epoch"], out["epochs"], out["step"], out["steps"]
    if eps:
        done_epochs = (ep or 0) - (1 if st_ is not None and ep else 0)
        within = (st_ / sts) if (st_ is not None and sts) else 0.0
        frac = (max(done_epochs, 0) + within) / eps
    elif st_ is not None and sts:
        frac = st_ / sts
    else:
        return None
    return float(min(max(frac, 0.0), 1.0))


def progress_summary(events: list[dict], now: float | None = None) -> dict:
    """Where a run is, from its events: phase, epoch, step, images/s, ETA, curves.

    Returns a dict with ``phase``, ``phase_name``, ``epoch``, ``epochs``, ``step``, ``steps``,
    ``images_per_s``, ``fraction`` (of the current phase, 0..1), ``eta_s`` (of the current phase,
    None when unknown), ``loss_steps`` (list of dicts phase/x/loss for a curve),
    ``loss_epochs`` (phase/epoch/loss), ``clean`` (FFT epoch → clean count per class),
    ``kept`` (FFT epoch → samples per class whose clean posterior passed τ, before balancing),
    ``tau`` (epoch → τ), ``warnings`` (messages), ``timings`` (phase/seconds), ``last`` (the
    last event). ``EventTail.summary`` gives the same, updated by the new events only.
    """
    now = time.time() if now is None else now
    out, phase_start = _empty_summary(events), {}
    _fold(out, phase_start, events, now)
    return _finish(out, phase_start, now)


def _fold(out: dict, phase_start: dict[str, float], events: list[dict], now: float) -> None:
    """Add ``events`` (in order) to the running summary ``out`` and the phases' start times."""
    for ev in events:
        ph = ev.get("phase")
        if ph:
            phase_start.setdefault(ph, ev.get("t", now))
            out["phase"] = ph
        _HANDLERS.get(ev.get("kind"), _on_other)(out, ev, ph)
        out["last"] = ev


def _finish(out: dict, phase_start: dict[str, float], now: float) -> dict:
    """The summary as ``progress_summary`` returns it: ``out`` plus the phase's name, fraction
    and ETA at ``now`` (a new dict; the curve lists are ``out``'s own: read, never modify)."""
    res = dict(out, phase_name=PHASE_NAMES.get(out["phase"], out["phase"] or "waiting"))
    frac = _phase_fraction(res)
    if frac is not None:
        res["fraction"] = frac
        started = phase_start.get(res["phase"])
        if started is not None and 0 < frac < 1:
            # Linear ETA: the rest of the phase takes as long per unit as the part done so far.
            res["eta_s"] = max(now - started, 0.0) * (1 - frac) / frac
    return res


def loss_curve_rows(progress: dict) -> list[dict]:
    """Rows (panel, x, loss) for the Training page's loss chart, one panel per phase: LP's GCE
    loss per epoch, and FFT's CE loss per step (x in epochs) or, without steps, per epoch. The
    two losses are different functions, so they get separate panels rather than one axis."""
    rows = [{"panel": "LP (GCE, per epoch)", "x": r["epoch"], "loss": r["loss"]}
            for r in progress["loss_epochs"] if r["phase"] == "lp"]
    fft_steps = [r for r in progress["loss_steps"] if r["phase"] == "fft"]
    if fft_steps:
        rows += [{"panel": "FFT (CE, per step)", "x": r["x"], "loss": r["loss"]} for r in fft_steps]
    else:
        rows += [{"panel": "FFT (CE, per epoch)", "x": r["epoch"], "loss": r["loss"]}
                 for r in progress["loss_epochs"] if r["phase"] == "fft"]
    return rows


SPREAD = ("fewest", "median", "most")   # what per_class_spread draws instead of one line per class


def per_class_spread(rows: list[dict], value: str) -> list[dict]:
    """Per epoch, the fewest / median / most of ``value`` over the classes of ``rows`` (dicts
    with epoch, class, ``value``, as ``progress_summary``'s ``clean`` and ``kept``): three lines
    a chart can show where one line per class (1,000 classes) would be unreadable. Rows
    (epoch, class = a ``SPREAD`` name, ``value``)."""
    import numpy as np

    by_epoch: dict = {}
    for r in rows:
        by_epoch.setdefault(r.get("epoch"), []).append(float(r[value]))
    out = []
    for epoch, values in by_epoch.items():
        v = np.asarray(values)
        for name, x in zip(SPREAD, (v.min(), float(np.median(v)), v.max())):
            out.append({"epoch": epoch, "class": name, value: float(x)})
    return out


class EventTail:
    """The events of one ``events.jsonl``, read incrementally: each ``read`` parses only the
    complete lines appended since the byte ``offset`` it last read to.

    A last line without its newline is a line the writer is still writing (or a process killed
    mid-write tore): it is left for the next read, unless ``final`` says nothing more will come.
    A file that shrank or was replaced (a new run in the same folder) is read again from its
    start. Unreadable lines are skipped, as ``Run.events`` skips them. ``events``: every event
    read so far, oldest first; not thread-safe (one per browser session).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.offset = 0                  # bytes of the file parsed so far (always a line end)
        self.events: list[dict] = []
        self._restart(None)

    def read(self, final: bool = False) -> list[dict]:
        """Parse what was appended since the last read; returns the new events (also added to
        ``events``). ``final``: parse a last line without newline too (the run has ended)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._restart(None)
            return []
        if st.st_ino != self._inode or st.st_size < self.offset:
            self._restart(st.st_ino)
        if st.st_size == self.offset:
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(st.st_size - self.offset)   # not past the size seen: a line may be growing
        end = len(data) if final else data.rfind(b"\n") + 1
        self.offset += end
        new = [ev for ev in map(_parse_line, data[:end].splitlines()) if ev is not None]
        self.events.extend(new)
        _fold(self._summary, self._phase_start, new, time.time())
        return new

    def summary(self, now: float | None = None) -> dict:
        """``progress_summary(self.events, now)``, kept up to date by each ``read`` from the new
        events alone: a poll of a long run costs its new lines, not the whole log again."""
        return _finish(self._summary, self._phase_start, time.time() if now is None else now)

    def _restart(self, inode: int | None) -> None:
        self.offset, self.events, self._inode = 0, [], inode
        self._summary, self._phase_start = _empty_summary([]), {}


def _parse_line(line: bytes) -> dict | None:
    try:
        ev = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return ev if isinstance(ev, dict) else None
