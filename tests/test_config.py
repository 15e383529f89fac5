"""turn_core.config: every setting describes itself; validate() reads that description."""
from __future__ import annotations

import dataclasses
import json

import pytest

from turn_core.config import GROUPS, NOISE_KINDS, SETTINGS, RunConfig, setting_help
from turn_core.errors import InputError


def test_every_field_has_short_help_a_group_and_a_kind():
    assert list(SETTINGS) == [f.name for f in dataclasses.fields(RunConfig)]
    for s in SETTINGS.values():
        assert s.help and len(s.help) <= 260, (s.name, len(s.help))
        assert s.help.endswith("."), s.name       # whole sentences, for --help and tooltips
        assert s.group in GROUPS and isinstance(s.advanced, bool) and s.label
        assert s.kind in ("str", "int", "float", "bool", "triple")
        assert not (s.choices and s.registry), s.name
        s.check(s.default)                     # every default passes its own checks
    assert setting_help() == {n: s.help for n, s in SETTINGS.items()}
    assert setting_help()["seed"] and setting_help()["batch_size"]


def test_kinds_and_optional_read_from_the_annotations():
    k = {n: (s.kind, s.optional) for n, s in SETTINGS.items()}
    assert k["image_size"] == ("int", True) and k["batch_size"] == ("int", False)
    assert k["mean"] == ("triple", True) and k["fft_augment"] == ("bool", False)
    assert k["tau"] == ("float", False) and k["checkpoint"] == ("str", True)


def test_noise_choices_are_noise_kinds():
    from turn_core.noise import NOISE_KINDS as REGISTRY

    assert set(NOISE_KINDS) <= set(REGISTRY)
    assert set(SETTINGS["demo_noise"].choices) <= set(REGISTRY)


def test_hugging_face_columns_exist_unset():
    cfg = RunConfig()
    for name in ("image_column", "label_column", "truth_column"):
        s = SETTINGS[name]
        assert getattr(cfg, name) is None and s.group == "data" and s.advanced and "Hugging Face" in s.help


@pytest.mark.parametrize("changes,needle", [
    ({"method": "bogus"}, "turn, ce-lp, gce-lp, ce-fft"),
    ({"bn_mode": "x"}, "fold, frozen, recalibrate"),
    ({"empty_class_policy": "skip"}, "fallback, error"),
    ({"demo_noise": "gaussian"}, "symmetric, asymmetric, instance"),
    ({"inject_noise": "gaussian"}, "symmetric, asymmetric, instance"),
    ({"tau": 1.5}, "tau=1.5 must lie in [0, 1]"),
    ({"lp_epochs": -1}, "lp_epochs=-1 must be >= 0"),
    ({"batch_size": 0}, "batch_size=0 must be >= 1"),
    ({"image_size": 4}, "image_size=4"),
    ({"gce_q": 0.0}, "gce_q"),
    ({"demo_n": 5}, "demo_n=5"),
    ({"batch_size": "64"}, "batch_size='64' is not a whole number"),
    ({"fft_augment": "yes"}, "fft_augment='yes' is not true or false"),
    ({"batch_size": True}, "batch_size=True"),
    ({"mean": (0.5, 0.5)}, "mean=(0.5, 0.5)"),
    ({"std": (0.2, 0.0, 0.2)}, "above 0"),
    ({"demo_noise_rate": 1.0}, "noise rates"),
    ({"seed": None}, "seed must be set"),
])
def test_validate_names_the_setting(changes, needle):
    with pytest.raises(InputError) as e:
        RunConfig(**changes).validate()
    assert needle in str(e.value)


def test_validate_accepts_what_the_paper_and_users_set():
    RunConfig().validate()
    RunConfig(inject_noise="instance", inject_noise_rate=0.3, image_size=32, mean=(0.5, 0.5, 0.5),
              std=(0.2, 0.2, 0.2), lp_lr=1, method="ce-fft", demo_noise="none").validate()


@pytest.mark.parametrize("name,text,value", [
    ("image_size", "none", None), ("image_size", " 48 ", 48), ("tau", "0.3", 0.3),
    ("fft_augment", "Off", False), ("gmm_per_class", "yes", True), ("mean", "0.1,0.2,0.3", (0.1, 0.2, 0.3)),
    ("inject_noise", "", None), ("model", "resnet18", "resnet18"),
])
def test_parse_text(name, text, value):
    assert SETTINGS[name].parse(text) == value


@pytest.mark.parametrize("name,text", [("batch_size", "1.5"), ("fft_augment", "maybe"), ("mean", "1,2"),
                                       ("tau", "high"), ("batch_size", "none")])
def test_parse_refuses_with_the_flag(name, text):
    with pytest.raises(InputError, match="--" + name.replace("_", "-")):
        SETTINGS[name].parse(text)


def test_json_round_trip_and_old_files(tmp_path):
    cfg = RunConfig(mean=(0.1, 0.2, 0.3), tau=0.4, image_column="img")
    p = tmp_path / "config.json"
    p.write_text(json.dumps({"format": 1, "settings": cfg.to_dict()}))
    assert RunConfig.from_json(p) == cfg
    # written by an older version: no Hugging Face columns; by a newer one: keys we do not know
    old = {k: v for k, v in RunConfig().to_dict().items() if not k.endswith("_column")}
    assert RunConfig.from_dict({**old, "someday": 1}) == RunConfig()
    assert set(cfg.to_dict()) == set(SETTINGS)


def test_precision_names_are_the_trains_registry():
    from turn_core.config import PRECISIONS
    from turn_core.train import PRECISIONS as REGISTRY

    assert set(PRECISIONS) == set(REGISTRY)
    assert RunConfig().precision == "auto" and RunConfig().compile is False
    assert RunConfig().loader_workers is None
    assert SETTINGS["precision"].choices == PRECISIONS and SETTINGS["precision"].advanced
    with pytest.raises(InputError, match="precision='fp16' is not one of auto, fp32, bf16"):
        RunConfig(precision="fp16").validate()
    with pytest.raises(InputError, match="loader_workers=-1 must be >= 0"):
        RunConfig(loader_workers=-1).validate()


def test_knn_method_names_are_the_search_registry():
    from turn_core import knn
    from turn_core.config import KNN_METHODS

    assert KNN_METHODS == knn.CHOICES
    s = SETTINGS["knn_method"]
    assert s.choices == KNN_METHODS and s.default == "auto" and s.group == "scores" and s.advanced
    assert f"{knn.EXACT_MAX:,}" in s.help                    # the help states today's switch-over size
    assert RunConfig(knn_method="hnsw").validate().knn_method == "hnsw"
    with pytest.raises(InputError, match="knn_method='ivf' is not one of auto, exact, bf16-rerank, hnsw"):
        RunConfig(knn_method="ivf").validate()
    old = {k: v for k, v in RunConfig().to_dict().items() if k != "knn_method"}
    assert RunConfig.from_dict(old).knn_method == "auto"     # a run from before the setting opens
