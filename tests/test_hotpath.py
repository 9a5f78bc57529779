"""The hot path: the batching primitive, and host syncs that do not grow with the chunks.

A host sync (``.item()``, ``float(t)``, ``bool(t)``...) goes through
``aten._local_scalar_dense``; on a GPU each one stalls the stream. A probe's count must not
depend on how many chunks its streams are cut into, i.e. on the batch size."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import analyze
from torch.utils._python_dispatch import TorchDispatchMode

from ckpt_analyzer.checkpoints import discover, load_state_into, read_state_dict
from ckpt_analyzer.checkpoints.run_data import load_run_data
from ckpt_analyzer.functional.batching import add_at, batched, chunks
from ckpt_analyzer.models import build_model
from ckpt_analyzer.probes import PROBES
from ckpt_analyzer.probes.base import Context

# enough points that batch size 64 cuts every stream into several chunks, 512 into few
SMALL = {
    "spectrum": {"points": 16, "n": 32, "subsets": ("train", "test")},
    "interpolation": {"pairs": 4},
    "sharpness": {"samples": 24, "paths": 2},
    "normalization": {"samples": 300},
    "hessian": {"points": 300, "iterations": 4, "trace_samples": 2, "subsets": ("train",)},
    "landscape": {"points": 300, "steps": 3, "barrier_steps": 2},
    "weights_spectrum": {"min_evals": 8},
}


class SyncCounter(TorchDispatchMode):
    """Counts ``aten._local_scalar_dense`` (every device-to-host scalar read)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


def test_chunks_and_batched() -> None:
    assert list(chunks(5, 2)) == [(0, 2), (2, 4), (4, 5)]
    assert list(chunks(0, 3)) == []
    with pytest.raises(ValueError):
        list(chunks(3, 0))
    x = torch.arange(10.0).view(5, 2)
    y = torch.arange(5)
    out = batched(lambda a, b: (a.sum(1), b * 2), x, y, batch_size=2)
    assert torch.equal(out[0], x.sum(1)) and torch.equal(out[1], y * 2)
    assert batched(lambda a: a, x[:0], batch_size=4) is None
    modes: list[bool] = []
    batched(lambda a: modes.append(torch.is_inference_mode_enabled()) or a, x, batch_size=2)
    assert modes == [True, True, True]  # forward-only chunks run under inference mode
    g = batched(lambda a: a * 1, x.clone().requires_grad_(), batch_size=2, grad=True)
    assert g.requires_grad
    with pytest.raises(ValueError):
        batched(lambda a, b: a, x, y[:3], batch_size=2)


@pytest.mark.parametrize("sorted_sums", [False, True])
def test_add_at_against_a_loop(sorted_sums: bool, device: str) -> None:
    g = torch.Generator().manual_seed(0)
    index = torch.randint(0, 7, (500,), generator=g)
    index[index == 3] = 4  # a bin that gets nothing keeps its start value
    values = torch.randn(500, generator=g, dtype=torch.float64)
    start = torch.randn(7, generator=g, dtype=torch.float64)
    want = start.clone()
    for i, v in zip(index.tolist(), values.tolist()):  # the slow, obvious reference
        want[i] += v
    dev = torch.device(device)
    out = add_at(start.clone().to(dev), index.to(dev), values.to(dev), sorted_sums=sorted_sums)
    assert torch.allclose(out.cpu(), want, rtol=1e-13, atol=1e-13)
    assert out[3].item() == start[3].item()
    again = add_at(start.clone().to(dev), index.to(dev), values.to(dev), sorted_sums=sorted_sums)
    assert torch.equal(out, again)  # the same bits on every run
    empty = add_at(start.clone().to(dev), index[:0].to(dev), values[:0].to(dev),
                   sorted_sums=sorted_sums)
    assert torch.equal(empty.cpu(), start)
    with SyncCounter() as counter:  # no device-to-host read: sizes never depend on the data
        add_at(start.clone().to(dev), index.to(dev), values.to(dev), sorted_sums=sorted_sums)
    assert counter.count == 0


@pytest.mark.parametrize("name", ["interpolation", "landscape"])
def test_sorted_sums_give_the_probes_numbers(name: str, setting: tuple,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """What a probe gets on CUDA (sums by index in sorted runs) equals what it gets from
    index_add_ on the CPU, to float64 rounding."""
    import numpy as np

    from ckpt_analyzer.functional import batching

    ctx, model, ref = setting
    cls = PROBES.get(name)
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    config = cls.Config(**{k: v for k, v in SMALL[name].items() if k in fields})
    plain = cls(config).measure(model, ctx.with_checkpoint(ref))
    real = batching.add_at
    calls: list[int] = []

    def sorted_add_at(o: torch.Tensor, i: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        calls.append(len(i))
        return real(o, i, v, sorted_sums=True)

    module = __import__(f"ckpt_analyzer.functional.{name}", fromlist=["add_at"])
    monkeypatch.setattr(module, "add_at", sorted_add_at)
    sorted_ = cls(config).measure(model, ctx.with_checkpoint(ref))
    assert calls and sum(calls) > 0
    for metric, value in plain.items():
        assert np.allclose(sorted_[metric], value, rtol=1e-12, atol=1e-14, equal_nan=True), metric


@pytest.fixture(scope="module")
def setting(digits_run: Path) -> tuple[Any, torch.nn.Module, Any]:
    data = load_run_data(digits_run)
    refs = {(r.width, r.epoch): r for r in discover(digits_run)}

    def build(width: int) -> torch.nn.Module:
        return build_model("mcnn", width, 10, 1).eval()

    ctx = Context(data=data, device=torch.device("cpu"), batch_size=64, seed=5,
                  widths=(1, 4), epochs=(0, 4), build_model=build,
                  initial_state=lambda w: read_state_dict(refs[(w, 0)].path),
                  final_state=lambda w: (4, read_state_dict(refs[(w, 4)].path)))
    model = build(4)
    load_state_into(model, read_state_dict(refs[(4, 4)].path), refs[(4, 4)].path)
    return ctx, model, refs[(4, 4)]


def syncs(name: str, ctx: Context, model: torch.nn.Module, ref: Any) -> int:
    cls = PROBES.get(name)
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    probe = cls(cls.Config(**{k: v for k, v in SMALL.get(name, {}).items() if k in fields}))
    ctx = ctx.with_checkpoint(ref)
    probe.measure(model, ctx)  # prepare and warm caches outside the count
    with SyncCounter() as counter:
        probe.measure(model, ctx)
    return counter.count


@pytest.mark.parametrize("name", PROBES.names())
def test_syncs_independent_of_chunks(name: str, setting: tuple) -> None:
    ctx, model, ref = setting
    counts = [syncs(name, dataclasses.replace(ctx, batch_size=bs), model, ref) for bs in (64, 512)]
    print(f"SYNCS {name} {counts}")
    assert counts[0] == counts[1], f"{name}: host syncs at batch 64 vs 512: {counts}"


class _Mixed(torch.nn.Module):
    """conv->BN (fused), BN after a pool (ChannelAffine), convT->BN, linear->BN1d (fused)."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.conv = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.pool = nn.MaxPool2d(2)
        self.bn2 = nn.BatchNorm2d(4)
        self.up = nn.ConvTranspose2d(4, 3, 2, stride=2)
        self.bn3 = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 8 * 8, 6)
        self.bn4 = nn.BatchNorm1d(6)
        self.out = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn2(self.pool(torch.relu(self.bn1(self.conv(x)))))
        x = torch.relu(self.bn3(self.up(torch.relu(x))))
        return self.out(torch.relu(self.bn4(self.fc(x.flatten(1)))))


def _randomized(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = _Mixed()
    for mod in m.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            assert mod.running_mean is not None and mod.running_var is not None
            mod.running_mean.normal_()
            mod.running_var.uniform_(0.5, 2.0)
            torch.nn.init.normal_(mod.weight)
            torch.nn.init.normal_(mod.bias)
    return m.eval()


def test_folded_network_refill_is_bitwise_a_fresh_fold() -> None:
    from ckpt_analyzer.functional.normalization import (
        FoldedNetwork,
        fold_batchnorm,
        layer_norms,
        normalized_network,
    )

    x = torch.randn(7, 1, 8, 8)
    network = FoldedNetwork(_randomized(0), example=x[:1])
    kinds = sorted(k for k, _, _ in network._actions)
    assert kinds == ["affine", "conv", "conv_transpose", "linear"]
    for seed in (1, 2):
        m = _randomized(seed)
        fresh = fold_batchnorm(m, example=x[:1])
        cached = network.refill(m)
        a, b = fresh.state_dict(), cached.state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert torch.equal(fresh(x), cached(x))
        norms = layer_norms(cached)
        assert torch.equal(normalized_network(fresh, norms)(x), network.normalized(norms)(x))
    assert not network.fits(build_model("mcnn", 2, 10, 1))


def test_cli_maps_functional_value_and_type_errors(capsys: pytest.CaptureFixture[str]) -> None:
    from ckpt_analyzer.errors import handle_errors
    from ckpt_analyzer.functional.normalization import layer_norms
    from ckpt_analyzer.functional.sharpness import input_gradients

    @handle_errors
    def bad_order() -> None:
        layer_norms(build_model("mcnn", 1, 10, 1), p=0.0)

    @handle_errors
    def blocked() -> None:
        class Detach(torch.nn.Module):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return x.detach()

        model = torch.nn.Sequential(Detach(), torch.nn.Linear(4, 2)).eval()
        input_gradients(model, torch.zeros(2, 4), torch.zeros(2, dtype=torch.long), 2)

    for fn, text in ((bad_order, "norm order p must be > 0"), (blocked, "blocks gradients")):
        with pytest.raises(SystemExit) as exit_info:
            fn()
        assert exit_info.value.code == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and text in err and err.count("\n") == 1

    @handle_errors
    def bug() -> None:
        raise ValueError("a bug outside functional/ keeps its traceback")

    with pytest.raises(ValueError, match="keeps its traceback"):
        bug()

    @handle_errors
    def too_big() -> None:
        import numpy as np

        np.empty((2**24, 2**24))  # 2 PiB: numpy refuses at once with a MemoryError

    with pytest.raises(SystemExit) as exit_info:
        too_big()
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: out of memory (") and err.count("\n") == 1


def test_forward_batch_size_is_opt_in(setting: tuple, tmp_path: Path) -> None:
    ctx, model, ref = setting
    assert ctx.forward_batch_size is None and ctx.forward_batch == ctx.batch_size
    big = dataclasses.replace(ctx, forward_batch_size=4 * ctx.batch_size)
    assert big.forward_batch == 4 * ctx.batch_size
    calls: list[int] = []
    hook = model.register_forward_pre_hook(lambda m, args: calls.append(len(args[0])))
    try:
        x = ctx.data.x_train[:300]
        assert torch.equal(ctx.forward(model, x), big.forward(model, x))  # mcnn on this CPU
    finally:
        hook.remove()
    assert calls == [64, 64, 64, 64, 44, 256, 44]
    result = analyze("run", str(tmp_path), "--probe", "metrics",
                     "--forward-batch-size", "zero", code=2)
    assert "--forward-batch-size" in result.output
