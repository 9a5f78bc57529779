"""How the analyzer computes on CUDA: full float32 and deterministic cuDNN unless --tf32.

The flags are process-wide backend settings that can be set without a GPU, so this runs here;
benchmarks/gpu_check.sh measures what they change on a real device."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from helpers import analyze

from ckpt_analyzer.device import set_precision

FLAGS = [(torch.backends.cuda.matmul, "allow_tf32"), (torch.backends.cudnn, "allow_tf32"),
         (torch.backends.cudnn, "deterministic"), (torch.backends.cudnn, "benchmark")]


@pytest.fixture
def flags() -> Iterator[None]:
    saved = [getattr(m, a) for m, a in FLAGS]
    yield
    for (m, a), v in zip(FLAGS, saved):
        setattr(m, a, v)


def state() -> list[bool]:
    return [bool(getattr(m, a)) for m, a in FLAGS]


def test_cuda_gets_full_float32_and_deterministic_cudnn(flags: None) -> None:
    torch.backends.cudnn.allow_tf32 = True  # PyTorch's default for convolutions
    torch.backends.cudnn.benchmark = True
    set_precision(torch.device("cuda"))
    assert state() == [False, False, True, False]
    set_precision(torch.device("cuda:1"), tf32=True)
    assert state() == [True, True, True, False]


def test_other_devices_are_left_alone(flags: None) -> None:
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    before = state()
    set_precision(torch.device("cpu"), tf32=False)
    assert state() == before


def test_tf32_flag_reaches_the_workers_plan(digits_run: object, tmp_path: object,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from ckpt_analyzer.runner import core

    plans = []
    real = core.with_probes

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        plan = real(*args, **kwargs)
        plans.append(plan)
        return plan

    monkeypatch.setattr(core, "with_probes", spy)
    out = f"{tmp_path}/a.h5"
    analyze("run", str(digits_run), "--probe", "metrics", "--tf32", "--workers", "1",
                  "--device", "cpu", "-o", out, "--quiet")
    assert plans and all(p.tf32 for p in plans)
