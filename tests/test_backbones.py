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


# ------------------------------------------------------------------- batch-norm folding (FFT)
def test_fold_batchnorm_keeps_the_pretrained_function():
    import copy

    from turn_core.train import fold_batchnorm

    ref, _ = create_backbone("mobilenetv2_100", num_classes=3)
    folded = copy.deepcopy(ref)
    n = fold_batchnorm(folded)
    bns = [m for m in ref.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert n == len(bns) == 52                          # every BN in MobileNetV2 follows a conv
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    ref.eval()
    folded.eval()
    with torch.no_grad():
        a = ref.forward_head(ref.forward_features(x), pre_logits=True)
        b = folded.forward_head(folded.forward_features(x), pre_logits=True)
    assert torch.allclose(a, b, rtol=1e-3, atol=1e-3 * float(a.abs().max()))
    assert not torch.equal(ref.conv_stem.weight, folded.conv_stem.weight)   # the scale moved


def _conv_bn(tiny_var: float):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1, bias=True), torch.nn.BatchNorm2d(3),
                              torch.nn.ReLU(), torch.nn.Conv2d(3, 2, 1), torch.nn.BatchNorm2d(2))
    with torch.no_grad():
        for bn in (net[1], net[4]):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
        net[1].running_var[0] = tiny_var                # a near-dead channel, as in MobileNetV2
    return net.eval()


def test_fold_batchnorm_on_a_small_net_is_exact_and_counts_pairs():
    from turn_core.train import fold_batchnorm

    net = _conv_bn(1e-8)
    x = torch.randn(5, 2, 6, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = net(x)
        assert fold_batchnorm(net) == 2
        after = net(x)
    assert torch.allclose(before, after, atol=1e-4, rtol=1e-4)
    assert float(net[0].bias.detach().abs().max()) == 0.0        # the conv's own bias moved into the BN shift


def test_fold_batchnorm_stops_tiny_variance_amplifying_a_gradient_step():
    """Why bn_mode="fold": one SGD step moves eval-mode outputs ~1/sqrt(var + eps) times more
    through a near-dead BN channel than through the folded one."""
    from turn_core.train import fold_batchnorm

    x = torch.randn(8, 2, 6, 6, generator=torch.Generator().manual_seed(2))

    def output_change(fold: bool) -> float:
        net = _conv_bn(1e-8)
        if fold:
            fold_batchnorm(net)
        with torch.no_grad():
            before = net(x).clone()
        opt = torch.optim.SGD(net.parameters(), lr=1e-3)
        net(x).square().mean().backward()
        opt.step()
        with torch.no_grad():
            return float((net(x) - before).abs().max())

    assert output_change(fold=False) > 20 * output_change(fold=True)
