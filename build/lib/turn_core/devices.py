"""The devices a run can compute on: the names the ``device`` setting accepts, and what this
machine has (the only place outside the engine that imports torch, so pages need not)."""
from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import InputError

# "auto" picks a GPU when there is one (turn_core.train.pick_device); "cuda:N" is accepted too.
DEVICE_NAMES = ("auto", "cpu", "cuda")


def is_device_name(name: str) -> bool:
    """True for "auto", "cpu", "cuda" and "cuda:N" (N a whole number)."""
    if name in DEVICE_NAMES:
        return True
    head, _, tail = str(name).partition(":")
    return head == "cuda" and tail.isdigit()


@dataclass(frozen=True)
class DeviceReport:
    """What this machine offers: ``kind`` is what "auto" runs on here ("cuda" or "cpu"),
    ``gpus`` the CUDA device names in index order, ``text`` one line for people."""

    kind: str
    text: str
    gpus: tuple[str, ...] = ()


def describe_devices() -> DeviceReport:
    """Ask torch which CUDA GPUs there are (imports torch; a few hundred ms the first time)."""
    import torch

    if torch.cuda.is_available():
        gpus = tuple(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        more = f" (+{len(gpus) - 1} more)" if len(gpus) > 1 else ""
        return DeviceReport("cuda", f"GPU: {gpus[0]}{more}", gpus)
    return DeviceReport("cpu", f"CPU ({os.cpu_count()} cores) — no CUDA GPU found")


def resolve_device(name: str, report: DeviceReport) -> str:
    """"cuda" or "cpu": where a run with ``device=name`` computes on the machine ``report``
    describes. ``InputError`` for a name that is not a device, or a GPU the machine lacks."""
    if not is_device_name(name):
        raise InputError(f"device {name!r} is not one of {', '.join(DEVICE_NAMES)}, cuda:N")
    if name == "auto":
        return report.kind
    if name == "cpu":
        return "cpu"
    index = int(name.partition(":")[2] or 0)
    if index >= len(report.gpus):
        have = f"this machine has {len(report.gpus)}" if report.gpus else "this machine has none"
        raise InputError(f"device {name!r} asks for CUDA GPU {index}, but {have}")
    return "cuda"


__all__ = ["DEVICE_NAMES", "DeviceReport", "describe_devices", "is_device_name", "resolve_device"]
