"""turn_core.devices: device names and what this machine offers."""
from __future__ import annotations

import pytest

from turn_core.devices import (
    DeviceReport,
    describe_devices,
    is_device_name,
    resolve_device,
)
from turn_core.errors import InputError


@pytest.mark.parametrize("name,ok", [("auto", True), ("cpu", True), ("cuda", True), ("cuda:0", True),
                                     ("cuda:12", True), ("gpu", False), ("cuda:", False), ("cuda:x", False),
                                     ("mps", False), ("", False)])
def test_device_names(name, ok):
    assert is_device_name(name) is ok


def test_describe_devices_agrees_with_torch():
    import torch

    r = describe_devices()
    assert r.kind == ("cuda" if torch.cuda.is_available() else "cpu")
    assert len(r.gpus) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert r.text.startswith("GPU" if r.gpus else "CPU")


def test_resolve_device_on_a_cpu_and_a_two_gpu_machine():
    cpu = DeviceReport("cpu", "CPU")
    two = DeviceReport("cuda", "GPU", ("A", "B"))
    assert [resolve_device(n, cpu) for n in ("auto", "cpu")] == ["cpu", "cpu"]
    assert [resolve_device(n, two) for n in ("auto", "cpu", "cuda", "cuda:1")] == ["cuda", "cpu", "cuda", "cuda"]
    with pytest.raises(InputError, match="has none"):
        resolve_device("cuda", cpu)
    with pytest.raises(InputError, match="GPU 2, but this machine has 2"):
        resolve_device("cuda:2", two)
    with pytest.raises(InputError, match="auto, cpu, cuda"):
        resolve_device("gpu", two)
