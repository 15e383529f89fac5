"""Check a ``RunConfig``'s names against the registries before any work starts.

``RunConfig.validate`` checks values that need nothing but the config (ranges, fixed choice
lists). The names that live in registries further up (scores, flag rules, weight sources,
devices) are checked here, so a typo in ``--flag-rule`` fails before the data is loaded rather
than after fine-tuning. This module sits in the engine layer: it may import the method modules.
"""
from __future__ import annotations

from .config import RunConfig
from .errors import InputError

DEVICES = ("auto", "cpu", "cuda")


def _device_ok(name: str) -> bool:
    if name in DEVICES:
        return True
    head, _, tail = name.partition(":")  # "cuda:1"
    return head == "cuda" and tail.isdigit()


def registry_choices() -> dict[str, tuple[str, ...]]:
    """Setting name → the names its registry accepts (for messages, the CLI and the app)."""
    from .backbones import WEIGHT_SOURCES
    from .scores import FLAG_RULES, SCORES

    return {"score": tuple(SCORES), "flag_rule": tuple(FLAG_RULES), "weights": tuple(WEIGHT_SOURCES),
            "device": DEVICES}


def check_names(config: RunConfig) -> RunConfig:
    """Raise ``InputError`` naming the valid choices when a registry name is unknown.

    Runs ``config.validate()`` first. Loads no data and no model."""
    config.validate()
    choices = registry_choices()
    for name in ("score", "flag_rule", "weights"):
        value = getattr(config, name)
        if value not in choices[name]:
            flag = "--" + name.replace("_", "-")
            raise InputError(f"{flag} {value!r} is not one of {', '.join(choices[name])}")
    if not _device_ok(str(config.device)):
        raise InputError(f"--device {config.device!r} is not one of auto, cpu, cuda, cuda:N")
    return config
