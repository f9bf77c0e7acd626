"""Shared fixtures: tiny deterministic networks in 2D and 3D."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from torch import nn

DIMS = [2, 3]


def pytest_configure(config):
    """Declare pytest-xdist's `xdist_group` mark, so runs without xdist (`-p no:xdist`) do not warn about it."""
    config.addinivalue_line("markers", "xdist_group(name): tests that share a fixture run on one xdist worker")


@contextmanager
def torch_threads(count: int):
    """Run a block on `count` torch threads, then restore the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def run_cache(tmp_path_factory) -> Path:
    """A folder shared by every xdist worker of this test run, for results too costly to compute twice
    (trained models). Grouping tests on one worker (`xdist_group` with `--dist loadgroup`) cannot be relied on
    for that: with pytest 9.2 it silently stops grouping (pytest-xdist issue 1386)."""
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "run-cache"
    folder.mkdir(exist_ok=True)
    return folder


def build_once(cache: Path, key: str, build: Callable[[], Any], save: Callable[[Path, Any], Any],
               load: Callable[[Path], Any]) -> Any:
    """`build()` once per test run, whichever worker asks first: it `save`s the result to `cache / key`, and
    the other workers wait for it and `load` it. `key` names the settings (other settings, another key)."""
    from filelock import FileLock

    path = cache / key
    done = Path(f"{path}.done")
    with FileLock(f"{path}.lock"):
        if done.exists():
            return load(path)
        value = build()
        save(path, value)
        done.touch()
        return value


@pytest.fixture(scope="module")
def one_thread():
    """Run a module on one thread: tiny networks run fastest, and identically, without thread start-up and
    contention on shared cores. Use with `pytestmark = pytest.mark.usefixtures("one_thread")`. A session
    fixture is built before any module fixture, so it uses `torch_threads(1)` itself."""
    with torch_threads(1):
        yield


def conv(dims: int, *args, **kwargs) -> nn.Module:
    return (nn.Conv2d if dims == 2 else nn.Conv3d)(*args, **kwargs)


def pointwise_net(dims: int, in_channels: int = 2, classes: int = 3, seed: int = 0) -> nn.Module:
    """A linear per-voxel network: logits_k(p) = sum_c W[k, c] x_c(p) + b_k."""
    torch.manual_seed(seed)
    return conv(dims, in_channels, classes, kernel_size=1)


def threshold_net(dims: int) -> nn.Module:
    """A 1x1 two-class network predicting class 1 exactly where the single input channel is positive."""
    net = pointwise_net(dims, in_channels=1, classes=2)
    with torch.no_grad():
        net.weight.zero_()
        net.bias.zero_()
        net.weight[1, 0] = 1.0
    return net


def conv_stack(dims: int, layers: int = 3, in_channels: int = 1, classes: int = 2, norm: bool = False, seed: int = 0) -> nn.Module:
    """`layers` 3-wide convolutions with padding: receptive-field radius = `layers`."""
    torch.manual_seed(seed)
    modules: list[nn.Module] = []
    width = in_channels
    for _ in range(layers - 1):
        modules += [conv(dims, width, 4, kernel_size=3, padding=1), nn.Tanh()]
        if norm:
            modules.append((nn.InstanceNorm2d if dims == 2 else nn.InstanceNorm3d)(4))
        width = 4
    modules.append(conv(dims, width, classes, kernel_size=3, padding=1))
    return nn.Sequential(*modules)


def grid(dims: int, size: int = 16) -> tuple[int, ...]:
    return (size,) * dims


def cube(dims: int, start: int, stop: int, size: int = 16) -> torch.Tensor:
    """A boolean mask on a `size`^dims grid that is True on [start, stop) along every axis."""
    mask = torch.zeros(grid(dims, size), dtype=torch.bool)
    mask[(slice(start, stop),) * dims] = True
    return mask


@pytest.fixture(params=DIMS, ids=["2d", "3d"])
def dims(request) -> int:
    return request.param
