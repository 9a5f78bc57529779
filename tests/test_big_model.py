"""Big models within a memory budget (issue 22 part 4): the footprint line, the batches a
budget chooses, that a budget only chooses the batch (the numbers of that batch size, bit for
bit), that no probe writes the model's weights or deep-copies it per checkpoint, and that the
per-width caches of normalization and landscape hold one width."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch

from ckpt_analyzer.checkpoints import CheckpointRef
from ckpt_analyzer.checkpoints.run_data import RunData
from ckpt_analyzer.functional.memory import Footprint, fit_batch, graph_bytes, per_sample_bytes
from ckpt_analyzer.models import build_model
from ckpt_analyzer.probes import make_probes
from ckpt_analyzer.probes._budget import footprint, within_budget
from ckpt_analyzer.probes.base import Context

#: small settings of every probe (the probe contract tests cover the defaults)
SMALL: dict[str, dict[str, Any]] = {
    "metrics": {},
    "spectrum": {"points": 3, "n": 8},
    "interpolation": {"pairs": 1},
    "sharpness": {"samples": 4, "paths": 2, "svd_path": (2, 4)},
    "normalization": {},
    "hessian": {"points": 12, "k": 1, "iterations": 3, "trace_samples": 2, "density_runs": 0},
    "landscape": {"steps": 3, "points": 6, "bn_samples": 8, "barrier_steps": 2},
    "weights_spectrum": {},
}


def build(width: int) -> torch.nn.Module:
    torch.manual_seed(width)
    return build_model("preact_resnet18", width, 10, 3)


def make_ctx(max_memory: int | None = None, batch_size: int = 512, widths: tuple[int, ...] = (2,),
             forward_batch_size: int | None = None) -> Context:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(56, 3, 16, 16, generator=g)
    y = torch.arange(56) % 10
    data = RunData(x_train=x[:40], y_train=y[:40], clean_labels=y[:40],
                   noisy_mask=torch.arange(40) % 4 == 0, x_test=x[40:], y_test=y[40:],
                   mean=torch.full((3,), 0.5), std=torch.full((3,), 0.25), num_classes=10)
    finals = {}
    for w in widths:
        torch.manual_seed(100 + w)  # another draw of the same architecture: the segment's end
        end = build_model("preact_resnet18", w, 10, 3).state_dict()
        finals[w] = (3, end)
    return Context(data=data, device=torch.device("cpu"), batch_size=batch_size, seed=0,
                   widths=widths, epochs=(0,), build_model=build,
                   final_state=lambda w: finals[w], max_memory=max_memory,
                   forward_batch_size=forward_batch_size)


def at(ctx: Context, width: int) -> Context:
    return ctx.with_checkpoint(CheckpointRef(width=width, epoch=0, path=f"w{width}"))


def measure(name: str, ctx: Context, width: int = 2) -> dict[str, np.ndarray]:
    (probe,) = make_probes([name], {name: dict(SMALL[name])})
    return probe.measure(build(width).eval(), at(ctx, width))


# ---------------------------------------------------------------- the footprint and the fit

@pytest.mark.parametrize("order", [0, 1, 2])
def test_footprint_is_the_line_through_batches_of_one_and_two(order: int) -> None:
    model = build(2).eval()
    x = torch.randn(5, 3, 16, 16)
    line = per_sample_bytes(model, x, order)
    assert line.per_sample > 0
    for b in (3, 5):  # batches the fit never saw: the same line (samples do not interact)
        assert graph_bytes(model, x[:b], order) == line.at(b)
    if order == 2:  # the first-order graph saves the weights and returns the gradients
        params = sum(p.numel() * 4 for p in model.parameters())
        assert line.fixed >= 2 * params


def test_fit_batch() -> None:
    f = Footprint(fixed=100, per_sample=10)
    assert fit_batch(512, f, None) == 512
    assert fit_batch(512, f, 100 + 15 * 7, headroom=1.5) == 7
    assert fit_batch(512, f, 100 + 15 * 7 - 1, headroom=1.5) == 6
    assert fit_batch(4, f, 10**9) == 4  # never above the batch given
    assert fit_batch(512, f, 0) == 1  # below one sample: one at a time
    with pytest.raises(ValueError):
        fit_batch(0, f, None)


def test_no_budget_leaves_the_context_as_it_is() -> None:
    ctx = make_ctx()
    (probe,) = make_probes(["hessian"], {})
    assert within_budget(probe, build(2), ctx, order=2) is ctx
    assert "_budget/2" not in "".join(probe._cache)  # nothing measured


def test_budget_chooses_batches_that_fit() -> None:
    model = build(2).eval()
    (probe,) = make_probes(["hessian"], {})
    big = make_ctx()
    f2 = footprint(probe, model, big, 2)
    budget = f2.fixed + int(7.5 * f2.per_sample * 1.5)
    ctx = within_budget(probe, model, make_ctx(max_memory=budget), order=2)
    assert ctx.batch_size == 7
    f0 = footprint(probe, model, big, 0)
    assert ctx.forward_batch == fit_batch(512, f0, budget)
    assert f0.at(ctx.forward_batch) * 1.5 <= budget + f0.fixed


# ---------------------------------------------------------------- a budget only chooses the batch

@pytest.mark.parametrize("name", ["hessian", "sharpness", "spectrum", "landscape", "metrics"])
def test_budget_gives_the_numbers_of_its_batch_size(name: str) -> None:
    model = build(2).eval()
    (probe,) = make_probes([name], {name: dict(SMALL[name])})
    order = {"sharpness": 1, "hessian": 2}.get(name, 0)
    f = footprint(probe, model, make_ctx(), max(order, 0))
    budget = f.fixed + int(5.5 * f.per_sample * 1.5)  # a batch of 5 for the gradient probes
    fitted = within_budget(probe, model, make_ctx(max_memory=budget), order)
    if name == "hessian":  # its vectors come off the budget before the batches are fitted
        dim = sum(p.numel() for p in model.parameters())
        budget += probe.cost(dim, 1)[0] + 4 * dim * 8  # type: ignore[attr-defined]
    assert fitted.batch_size == (5 if order else 512)
    assert fitted.forward_batch < 40  # the budget binds: several batches
    got = measure(name, make_ctx(max_memory=budget))
    want = measure(name, make_ctx(batch_size=fitted.batch_size,
                                  forward_batch_size=fitted.forward_batch))
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=f"{name}.{k}")


# ---------------------------------------------------------------- weights never written or copied

@pytest.mark.parametrize("name", sorted(SMALL))
def test_probe_writes_no_weight_and_deep_copies_nothing_per_checkpoint(
        name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = make_ctx(max_memory=2**30)
    (probe,) = make_probes([name], {name: dict(SMALL[name])})
    model = build(2).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = probe.measure(model, at(ctx, 2))  # may fold / trace once per width
    copies = []
    real = copy.deepcopy

    def counted(obj: Any, *args: Any) -> Any:
        if isinstance(obj, torch.nn.Module):
            copies.append(type(obj).__name__)
        return real(obj, *args)

    monkeypatch.setattr(copy, "deepcopy", counted)
    second = probe.measure(model, at(ctx, 2))
    assert copies == []
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), name
    for k in first:
        np.testing.assert_array_equal(first[k], second[k], err_msg=f"{name}.{k}")


def test_normalization_in_place_is_the_copy_bit_for_bit() -> None:
    from ckpt_analyzer.functional.normalization import FoldedNetwork, layer_norms

    x = torch.randn(6, 3, 16, 16)
    net = FoldedNetwork(build(2).eval(), example=x[:1])
    for seed in (3, 4):
        torch.manual_seed(seed)
        m = build_model("preact_resnet18", 2, 10, 3).eval()
        norms = layer_norms(net.refill(m))
        copied = net.normalized(norms)(x)
        norms_again = layer_norms(net.refill(m))
        assert torch.equal(norms, norms_again)
        assert torch.equal(net.normalized(norms_again, in_place=True)(x), copied)


def test_per_width_caches_hold_one_width() -> None:
    ctx = make_ctx(widths=(2, 3))
    cfg = {"normalization": {}, "landscape": SMALL["landscape"]}
    norm, land = make_probes(["normalization", "landscape"], cfg)
    first = {}
    for w in (2, 3, 2):
        for probe in (norm, land):
            out = probe.measure(build(w).eval(), at(ctx, w))
            if (probe.name, w) in first:  # measured again after another width: the same
                for k, v in first[probe.name, w].items():
                    np.testing.assert_array_equal(out[k], v, err_msg=f"{probe.name}.{k}")
            first[probe.name, w] = out
        assert [k for k in norm._cache if k.startswith("folded/")] == [f"folded/{w}"]
        assert list(land._dirs) == [w]


def test_landscape_directions_are_redrawn_on_a_new_seed() -> None:
    (probe,) = make_probes(["landscape"], {"landscape": SMALL["landscape"]})
    one = probe.prepare(make_ctx())["w2/direction"]
    ctx = make_ctx()
    other = probe.prepare(Context(**{**ctx.__dict__, "seed": 1}))["w2/direction"]
    assert not np.array_equal(one, other)
    assert np.array_equal(probe._draw(2, build(2))[1], other)
