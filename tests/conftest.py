"""Shared fixtures: a small real digits run trained once per session."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")

#: where the device-agnostic tests (marked ``device``) run: ``CKPT_TEST_DEVICE=cuda pytest -m
#: device`` runs them on a GPU (benchmarks/gpu_check.sh); the default is the CPU.
TEST_DEVICE = os.environ.get("CKPT_TEST_DEVICE", "cpu")


def pytest_configure(config: pytest.Config) -> None:
    if TEST_DEVICE != "cpu":
        import torch

        if TEST_DEVICE.startswith("cuda") and not torch.cuda.is_available():
            raise pytest.UsageError(f"CKPT_TEST_DEVICE={TEST_DEVICE}: CUDA is not available")
        from ckpt_analyzer.device import set_precision

        # as the analyzer does: the reference tests check float32 maths to ~1e-4, and
        # TensorFloat-32 convolutions (cuDNN's default) would be off by ~1e-3
        set_precision(torch.device(TEST_DEVICE))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test that takes the ``device`` fixture is marked ``device``."""
    for item in items:
        if "device" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.device)


@pytest.fixture(scope="session")
def device() -> str:
    """The device of the device-agnostic tests (``CKPT_TEST_DEVICE``, default ``cpu``)."""
    return TEST_DEVICE


def tolerance(device: str, cpu: float, other: float = 1e-4) -> float:
    """A relative tolerance: ``cpu`` on the CPU, ``other`` elsewhere (float32 GPU kernels sum
    in other orders; convolutions may use other algorithms)."""
    return cpu if device == "cpu" else max(cpu, other)


def assert_same(device: str, actual: Any, expected: Any, rtol: float = 1e-4, atol: float = 0.0,
                err_msg: str = "") -> None:
    """Two computations on ``device`` give the same numbers: bit for bit on the CPU (NaN equal
    to NaN), within ``rtol``/``atol`` elsewhere (the same kernels may reduce in another order
    from one call to the next, e.g. atomic adds). Tensors are brought to the CPU first."""
    import numpy as np

    def host(v: Any) -> Any:
        return v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)

    a, b = host(actual), host(expected)
    if device == "cpu":
        np.testing.assert_array_equal(a, b, err_msg=err_msg)
    else:
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, equal_nan=True, err_msg=err_msg)


def on_device(ctx: Any, device: str) -> Any:
    """The same probe :class:`~ckpt_analyzer.probes.base.Context` with its data, its device and
    the models of its factory on ``device`` (built on the CPU, then moved, as
    ``contract_context`` does)."""
    import dataclasses

    import torch

    dev = torch.device(device)
    build = ctx.build_model
    return dataclasses.replace(ctx, data=ctx.data.to(dev), device=dev,
                               build_model=None if build is None else lambda w: build(w).to(dev))


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mcnn widths 1 and 4, 20% symmetric noise, 4 epochs on digits, every epoch saved."""
    import torch

    from ckpt_analyzer.train.loop import TrainConfig, Trainer

    out = tmp_path_factory.mktemp("runs") / "digits"
    cfg = TrainConfig(widths=(1, 4), epochs=4, label_noise=0.2, lr=1e-3, seed=3)
    trainer = Trainer(cfg, out, torch.device("cpu"))
    trainer.prepare()
    trainer.run()
    return out
