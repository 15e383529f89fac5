"""Backbone factory: offline MobileNetV2, name checks, hub failure, local checkpoints (safe loads)."""
from __future__ import annotations

import builtins
from pathlib import Path

import pytest
import timm
import torch

from turn_core import backbones
from turn_core.backbones import create_backbone, load_state_dict_file, offline_weights_path
from turn_core.errors import InputError


@pytest.fixture(autouse=True)
def _one_torch_thread(one_torch_thread):
    return None


@pytest.fixture(scope="module")
def offline_model():
    return create_backbone("mobilenetv2_100", num_classes=3)


# --------------------------------------------------------------------------------- offline
def test_offline_mobilenet_loads_pretrained_weights(offline_model):
    model, data_cfg = offline_model
    assert model.get_classifier().out_features == 3
    assert data_cfg["input_size"] == (3, 224, 224)
    assert len(data_cfg["mean"]) == 3 and len(data_cfg["std"]) == 3
    # the first tensor of torchvision's file is the stem convolution: it must be in the model
    tv = torch.load(offline_weights_path(), map_location="cpu", weights_only=True)
    first = next(iter(tv.values()))
    assert torch.equal(model.conv_stem.weight, first)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 3)
    assert torch.isfinite(out).all()


def test_offline_weights_sha256_is_checked(monkeypatch):
    monkeypatch.setattr(backbones, "OFFLINE_SHA256", "0" * 64)
    with pytest.raises(InputError, match="sha256"):
        create_backbone("mobilenetv2_100", num_classes=3)


def test_offline_weights_missing_file(monkeypatch, tmp_path):
    monkeypatch.setattr(backbones, "offline_weights_path", lambda: tmp_path / "gone.pth")
    with pytest.raises(InputError, match="gone.pth"):
        create_backbone("mobilenetv2_100", num_classes=3)


def test_offline_weights_for_another_model_refused():
    with pytest.raises(InputError, match="resnet18") as e:
        create_backbone("resnet18", num_classes=3, weights="offline")
    assert "offline" in str(e.value)


def test_unknown_weight_source():
    with pytest.raises(InputError, match="bogus"):
        create_backbone("mobilenetv2_100", num_classes=3, weights="bogus")


def test_random_weights_source():
    model, _ = create_backbone("mobilenetv2_100", num_classes=4, weights="none")
    assert model.get_classifier().out_features == 4


# ------------------------------------------------------------------------------ model names
def test_unknown_timm_name_names_it():
    with pytest.raises(InputError, match="no_such_net_xyz"):
        create_backbone("no_such_net_xyz", num_classes=3)


def test_near_miss_name_gets_a_suggestion():
    with pytest.raises(InputError) as e:
        create_backbone("mobilenetv2_10", num_classes=3)
    msg = str(e.value)
    assert "'mobilenetv2_10'" in msg
    assert "did you mean" in msg and "mobilenetv2_100" in msg


# -------------------------------------------------------------------------------------- hub
@pytest.mark.parametrize("exc", [OSError("no route to host"), ConnectionError("connection refused")])
def test_hub_unreachable_is_an_input_error(monkeypatch, exc):
    real = timm.create_model

    def fake(name, pretrained=False, **kw):
        if pretrained:
            raise exc
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, "create_model", fake)
    with pytest.raises(InputError, match="hub") as e:
        create_backbone("mobilenetv2_100", num_classes=3, weights="hub")
    assert "mobilenetv2_100" in str(e.value)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------ checkpoints
@pytest.fixture(scope="module")
def trained_sd():
    """A mobilenetv2_100 state dict (5-class head) that differs from any fresh init."""
    torch.manual_seed(123)
    m = timm.create_model("mobilenetv2_100", pretrained=False, num_classes=5)
    with torch.no_grad():
        m.conv_stem.weight.mul_(0).add_(0.25)          # a recognisable value
    return {k: v.detach().clone().contiguous() for k, v in m.state_dict().items()}


def _body_equal(model, sd) -> bool:
    own = model.state_dict()
    body = [k for k in sd if not k.startswith("classifier")]
    return all(torch.equal(own[k], sd[k]) for k in body)


@pytest.mark.parametrize("fmt", ["safetensors", "pth", "pth-wrapped"])
def test_checkpoint_round_trip(tmp_path, trained_sd, fmt):
    if fmt == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "ckpt.safetensors"
        save_file(trained_sd, str(path))
    else:
        path = tmp_path / "ckpt.pth"
        torch.save({"state_dict": trained_sd} if fmt == "pth-wrapped" else trained_sd, path)
    model, _ = create_backbone("mobilenetv2_100", num_classes=3, checkpoint=str(path))
    assert model.get_classifier().out_features == 3        # own head, checkpoint's 5-class head ignored
    assert _body_equal(model, trained_sd)
    assert float(model.conv_stem.weight.detach().flatten()[0]) == pytest.approx(0.25)


def test_checkpoint_with_other_key_names_maps_in_order():
    # torchvision's own file: same tensors, other names, 1000-class head
    model, _ = create_backbone("mobilenetv2_100", num_classes=3, checkpoint=str(offline_weights_path()))
    ref, _ = create_backbone("mobilenetv2_100", num_classes=3)
    assert _body_equal(model, {k: v for k, v in ref.state_dict().items()})


def test_checkpoint_of_wrong_architecture(tmp_path):
    other = timm.create_model("test_resnet", pretrained=False)
    path = tmp_path / "resnet.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    with pytest.raises(InputError, match="wrong architecture") as e:
        create_backbone("mobilenetv2_100", num_classes=3, checkpoint=str(path))
    assert str(path) in str(e.value)


def test_checkpoint_with_wrong_shape_same_names(tmp_path, trained_sd):
    sd = dict(trained_sd)
    sd["conv_stem.weight"] = torch.zeros(8, 3, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(InputError, match="wrong architecture"):
        create_backbone("mobilenetv2_100", num_classes=3, checkpoint=str(path))


class _Payload:
    """Unpickling this runs code (writes a marker file): a stand-in for a malicious checkpoint."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({self.marker!r}, 'w').write('pwned')",))


class _Plain:
    def __init__(self):
        self.w = torch.zeros(2)


def test_malicious_pickle_is_refused_and_never_executed(tmp_path, trained_sd):
    marker = tmp_path / "marker.txt"
    path = tmp_path / "evil.pth"
    torch.save({**trained_sd, "evil": _Payload(str(marker))}, path)
    with pytest.raises(InputError, match="evil.pth"):
        create_backbone("mobilenetv2_100", num_classes=3, checkpoint=str(path))
    assert not marker.exists()
    with pytest.raises(InputError):
        load_state_dict_file(path)
    assert not marker.exists()
    # control: the payload is live — an unrestricted load would have run it
    control = tmp_path / "control.txt"
    torch.save(_Payload(str(control)), tmp_path / "control.pth")
    torch.load(tmp_path / "control.pth", weights_only=False)
    assert control.read_text() == "pwned"


def test_pickle_of_custom_class_is_refused(tmp_path):
    path = tmp_path / "obj.pt"
    torch.save({"model": _Plain()}, path)
    with pytest.raises(InputError, match="cannot read checkpoint"):
        load_state_dict_file(path)


@pytest.mark.parametrize("name,content", [("junk.safetensors", b"not a safetensors file"),
                                          ("junk.pth", b"\x00\x01garbage")])
def test_corrupt_checkpoint(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError, match=name):
        create_backbone("mobilenetv2_100", num_classes=3, checkpoint=str(path))


def test_empty_state_dict(tmp_path):
    path = tmp_path / "empty.pth"
    torch.save({}, path)
    with pytest.raises(InputError, match="no state dict"):
        load_state_dict_file(path)


def test_missing_checkpoint(tmp_path):
    path = tmp_path / "nope" / "ckpt.safetensors"
    with pytest.raises(InputError, match="does not exist") as e:
        create_backbone("mobilenetv2_100", num_classes=3, checkpoint=str(path))
    assert str(path) in str(e.value)


def test_checkpoint_that_is_a_folder(tmp_path):
    with pytest.raises(InputError):
        load_state_dict_file(tmp_path)
    assert Path(tmp_path).is_dir()
