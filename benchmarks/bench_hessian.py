"""Hessian-vector products per second against the raw forward+backward rate.

Run from the repo root::

    python benchmarks/bench_hessian.py [--width 8] [--points 256] [--batch-size 512]
        [--device cpu|cuda] [--repeats 7] [--threads 1] [--wall] [--probe]

Times :meth:`HessianOperator.matvec` (what the ``hessian`` probe calls for every Lanczos step
and Hutchinson sample: the double backward of ``gᵀv`` summed over batches of the fixed points,
on the first-order graphs the operator keeps) on an mcnn of the given width on digits, and a
bare loop over the same points at the same batch size: forward, summed cross-entropy,
``loss.backward()`` w.r.t. the parameters. The ratio is products per second over raw
forward+backward passes per second (each over all the points). Target >= 0.4: an HVP is a
double backward, about 2.5 forward+backward passes.

Three rates, interleaved in one run so that load drift hits them alike:

* ``steady``: one product on an operator whose graphs are kept (what most of a probe call is);
* ``per subset``: a fresh operator and the ``--products`` products the probe's defaults make
  per subset (40 Lanczos steps + 32 Hutchinson samples), graph building included;
* ``no cache``: one product rebuilding the forward and first backward (``cache_bytes=0``, as
  when the points' graphs exceed the budget).

``--probe`` also times one whole ``HessianProbe`` call with its defaults (the per-checkpoint
cost). ``--spectrum`` times the density and the per-layer curvature as ratios to the
whole-model Lanczos (``iterations`` steps on a fresh operator, graph building included):
the broadening of the default density (its run is the eigenvalue run), an extra SLQ run of
PyHessian's 100 steps, and the per-layer blocks (block Lanczos of the same steps + one
residual product + the block Hutchinson trace) against the whole-model Lanczos + Hutchinson.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from _timing import interleaved
from bench_sharpness import build_model, digits_data

from ckpt_analyzer.functional.hessian import HessianOperator
from ckpt_analyzer.probes.base import Context
from ckpt_analyzer.probes.hessian import HessianProbe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--points", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--wall", action="store_true", help="wall-clock instead of CPU time")
    ap.add_argument("--products", type=int, default=72,
                    help="products per fresh operator in the per-subset rate")
    ap.add_argument("--probe", action="store_true", help="also time one default probe call")
    ap.add_argument("--spectrum", action="store_true",
                    help="also time the density and the per-layer curvature")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = digits_data(device)
    model = build_model(args.width).to(device).eval()
    x, y = data.x_train[:args.points], data.y_train[:args.points]
    op = HessianOperator(model, x, y, args.batch_size)
    bare = HessianOperator(model, x, y, args.batch_size, cache_bytes=0)
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(0)).to(device)
    bs = args.batch_size

    def hvp() -> None:
        op.matvec(v)

    def subset() -> None:
        fresh = HessianOperator(model, x, y, args.batch_size)
        for _ in range(args.products):
            fresh.matvec(v)

    def rebuild() -> None:
        bare.matvec(v)

    def raw() -> None:
        with torch.enable_grad():
            model.zero_grad(set_to_none=True)
            for lo in range(0, len(x), bs):
                F.cross_entropy(model(x[lo:lo + bs]), y[lo:lo + bs], reduction="sum").backward()
        model.zero_grad(set_to_none=True)

    for fn in (hvp, rebuild, raw):  # warm-up
        fn()
    clock = time.perf_counter if device.type == "cuda" or args.wall else time.process_time
    t_hvp, t_sub, t_bare, t_raw = interleaved([hvp, subset, rebuild, raw], args.repeats,
                                              device, clock)
    t_sub /= args.products
    print(f"model mcnn width {args.width} ({op.dim} parameters) on {device}, {len(x)} points, "
          f"batch {bs}, threads {torch.get_num_threads()}, "
          f"{'wall' if clock is time.perf_counter else 'CPU'} time; graphs kept: "
          f"{op.cached_bytes / 2**20:.1f} MiB")
    print(f"raw fwd + loss.backward : {1 / t_raw:10.1f} passes/s  ({t_raw * 1e3:.2f} ms)")
    for label, t in (("HVP, steady", t_hvp), (f"HVP, per subset ({args.products})", t_sub),
                     ("HVP, no cache", t_bare)):
        print(f"{label:<24}: {1 / t:10.1f} HVPs/s    ({t * 1e3:.2f} ms)  "
              f"ratio {t_raw / t:.3f}")
    print("target: ratio >= 0.4")
    if args.probe:
        ctx = Context(data=data, device=device, batch_size=bs, seed=0, widths=(args.width,),
                      build_model=lambda w: build_model(w).to(device).eval())
        probe = HessianProbe()
        probe.prepare(ctx)
        t0 = clock()
        probe(model, ctx)
        print(f"HessianProbe() defaults : {clock() - t0:.2f} s per checkpoint "
              f"({op.calls} HVPs above; probe: {probe.cost(op.dim, 1)[1]} per checkpoint)")
    if args.spectrum:
        spectrum_costs(model, x, y, bs, args.repeats, device, clock)


def spectrum_costs(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, bs: int,
                   repeats: int, device: torch.device, clock: Callable[[], float]) -> None:
    """Density and per-layer curvature against the whole-model Lanczos (see the docstring)."""
    from ckpt_analyzer.functional.hessian import hutchinson_trace, lanczos_decomposition
    from ckpt_analyzer.functional.hessian_spectrum import (
        block_hutchinson,
        block_lanczos,
        block_residuals,
        broadened_density,
        layer_blocks,
        slq_nodes_weights,
    )

    cfg = HessianProbe.Config()
    blocks = [ix for _, ix in layer_blocks(model)]

    def whole() -> None:
        op = HessianOperator(model, x, y, bs)
        lanczos_decomposition(op.matvec, op.dim, cfg.iterations,
                              torch.Generator().manual_seed(0), device=device)

    def whole_trace() -> None:
        op = HessianOperator(model, x, y, bs)
        lanczos_decomposition(op.matvec, op.dim, cfg.iterations,
                              torch.Generator().manual_seed(0), device=device)
        hutchinson_trace(op.matvec, op.dim, cfg.trace_samples,
                         torch.Generator().manual_seed(1), device=device)

    op0 = HessianOperator(model, x, y, bs)
    kr = lanczos_decomposition(op0.matvec, op0.dim, cfg.iterations,
                               torch.Generator().manual_seed(0), device=device)

    def density_default() -> None:
        nodes, weights = slq_nodes_weights(kr)
        broadened_density(nodes[None], weights[None], cfg.density_bins, cfg.density_sigma)

    def density_pyhessian() -> None:  # one more run of PyHessian's 100 steps
        op = HessianOperator(model, x, y, bs)
        nodes, weights = slq_nodes_weights(lanczos_decomposition(
            op.matvec, op.dim, 100, torch.Generator().manual_seed(2), device=device))
        broadened_density(nodes[None], weights[None], cfg.density_bins, cfg.density_sigma)

    def layers() -> None:
        op = HessianOperator(model, x, y, bs)
        sizes = [sum(op.sizes[i] for i in ix) for ix in blocks]

        def mv(vs: Any) -> Any:
            return op.block_matvec(blocks, vs)

        top, _, vecs = block_lanczos(mv, sizes, cfg.iterations,
                                     torch.Generator().manual_seed(3), device=device)
        block_residuals(mv, sizes, top, vecs)
        block_hutchinson(mv, sizes, cfg.trace_samples, torch.Generator().manual_seed(4),
                         device=device)

    fns = [whole, whole_trace, density_default, density_pyhessian, layers]
    t_w, t_wt, t_dd, t_dp, t_l = interleaved(fns, repeats, device, clock)
    print(f"whole-model Lanczos ({cfg.iterations} steps, fresh operator): {t_w * 1e3:.1f} ms; "
          f"+ Hutchinson ({cfg.trace_samples}): {t_wt * 1e3:.1f} ms")
    print(f"density, default (1 run = the eigenvalue run; broadening only): "
          f"{t_dd * 1e3:.2f} ms  ratio {t_dd / t_w:.4f}")
    print(f"density, one more SLQ run of 100 steps (PyHessian's iter): {t_dp * 1e3:.1f} ms  "
          f"ratio {t_dp / t_w:.2f}")
    print(f"per-layer ({len(blocks)} blocks: Lanczos {cfg.iterations} + residual + "
          f"Hutchinson {cfg.trace_samples}): {t_l * 1e3:.1f} ms  ratio {t_l / t_w:.2f} to the "
          f"Lanczos, {t_l / t_wt:.2f} to Lanczos + Hutchinson")


if __name__ == "__main__":
    main()
