"""The settings of a new run, checked before any work starts, and its folder name.

``RunConfig.validate`` checks what needs nothing but the config (types, ranges, fixed choice
lists, read from each field's metadata). The names that live in registries further up (scores,
flag rules, weight sources, devices) are checked here, so a typo in ``--flag-rule`` fails before
the data is loaded rather than after fine-tuning. This module sits in the engine layer: it may
import the method modules. The CLI calls ``check_names`` before a run, the app on Start.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from .config import SETTINGS, RunConfig
from .devices import DEVICE_NAMES, describe_devices, is_device_name, resolve_device
from .errors import InputError
from .rundir import new_run_name

DEVICES = DEVICE_NAMES


def registry_choices() -> dict[str, tuple[str, ...]]:
    """Registry name (a setting's ``registry`` metadata) → the names it accepts, for messages,
    the CLI's choices and the app's lists. "device" also accepts "cuda:N"."""
    from .backbones import WEIGHT_SOURCES
    from .scores import FLAG_RULES, SCORES

    return {"score": tuple(SCORES), "flag_rule": tuple(FLAG_RULES), "weights": tuple(WEIGHT_SOURCES),
            "device": DEVICE_NAMES}


def _device_usable(name: str) -> bool:
    if not is_device_name(name):
        return False
    if name.startswith("cuda"):  # only then ask torch: "auto" and "cpu" need no import
        resolve_device(name, describe_devices())  # InputError: no such GPU here
    return True


# Registries whose names are not a plain list: how to accept one ("cuda:1" is a device).
_ACCEPTS: dict[str, Callable[[str], bool]] = {"device": _device_usable}


def check_names(config: RunConfig) -> RunConfig:
    """Raise ``InputError`` naming the valid choices when a registry name is unknown, or when
    the device asks for a GPU this machine lacks.

    Runs ``config.validate()`` first. Loads no data and no model."""
    config.validate()
    choices = registry_choices()
    for s in SETTINGS.values():
        if s.registry is None:
            continue
        value = getattr(config, s.name)
        accepts = _ACCEPTS.get(s.registry, choices[s.registry].__contains__)
        if not accepts(value):
            extra = ", cuda:N" if s.registry == "device" else ""
            raise InputError(f"{s.flag} {value!r} is not one of {', '.join(choices[s.registry])}{extra}")
    return config


def name_new_run(runs_root: str | Path, typed: str, method: str, data: str) -> Path:
    """The folder of a new run under ``runs_root``: ``typed`` made a safe folder name (characters
    other than letters, digits, ``. _ -`` become "-"), or ``rundir.new_run_name(method, data)``
    when nothing usable was typed. ``InputError`` when a folder of that name exists already."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", str(typed).strip()).strip("-.") or new_run_name(method, data)
    out = Path(runs_root) / name
    if out.exists():
        raise InputError(f"a run named {name} exists already: choose another name")
    return out


__all__ = ["DEVICES", "check_names", "name_new_run", "registry_choices"]
