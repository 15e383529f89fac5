"""turn_core.settings: registry names checked before any work, and the name of a new run."""
from __future__ import annotations

import pytest

from turn_core import settings
from turn_core.backbones import WEIGHT_SOURCES
from turn_core.config import SETTINGS, RunConfig
from turn_core.errors import InputError
from turn_core.scores import FLAG_RULES, SCORES


def test_registry_choices_are_the_registries():
    c = settings.registry_choices()
    assert c["score"] == tuple(SCORES) and c["flag_rule"] == tuple(FLAG_RULES)
    assert c["weights"] == tuple(WEIGHT_SOURCES) and c["device"] == ("auto", "cpu", "cuda")
    # every registry a setting names exists
    assert {s.registry for s in SETTINGS.values() if s.registry} == set(c)


@pytest.mark.parametrize("name,registry", [("score", SCORES), ("flag_rule", FLAG_RULES),
                                           ("weights", WEIGHT_SOURCES)])
def test_unknown_registry_name_names_the_choices(name, registry):
    with pytest.raises(InputError) as e:
        settings.check_names(RunConfig(**{name: "nope"}))
    msg = str(e.value)
    assert msg.startswith("--" + name.replace("_", "-") + " 'nope'")
    assert all(k in msg for k in registry)


def test_every_registered_name_passes():
    for name in SCORES:
        settings.check_names(RunConfig(score=name))
    for name in FLAG_RULES:
        settings.check_names(RunConfig(flag_rule=name))
    for name in ("auto", "cpu"):
        settings.check_names(RunConfig(device=name))


def test_device_checked_against_this_machine():
    import torch

    with pytest.raises(InputError, match="cuda:N"):
        settings.check_names(RunConfig(device="gpu"))
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no"):
            settings.check_names(RunConfig(device="cuda"))
    with pytest.raises(InputError, match="GPU 99"):
        settings.check_names(RunConfig(device="cuda:99"))


def test_check_names_runs_validate_first():
    with pytest.raises(InputError, match="tau"):
        settings.check_names(RunConfig(tau=2.0, flag_rule="nope"))


def test_name_new_run(tmp_path):
    out = settings.name_new_run(tmp_path, "  my run/../x  ", "turn", "demo")
    assert out.parent == tmp_path and out.name == "my-run-..-x"
    blank = settings.name_new_run(tmp_path, " ../ ", "ce-lp", "/data/pets.csv")
    assert blank.parent == tmp_path and blank.name.endswith("-ce-lp-pets")
    (tmp_path / "taken").mkdir()
    with pytest.raises(InputError, match="taken exists already"):
        settings.name_new_run(tmp_path, "taken", "turn", "demo")
