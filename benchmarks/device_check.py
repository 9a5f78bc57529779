"""Every registered probe on a device against the CPU, on the same checkpoints, and its speed.

Run from the repo root (part of ``benchmarks/gpu_check.sh``)::

    python benchmarks/device_check.py --device cuda [--run RUN] [--out FILE.md] [--light]

For each probe (built-in and plugin; default configs, or small ones with ``--light``) and each
width of the run (without ``--run``: a small digits run trained here first, mcnn widths 2 and 8,
5 epochs), the probe measures the last checkpoint on the CPU and on ``--device``, each prepared
from the same seed. Printed per metric: the largest absolute and relative difference between the
devices (relative to the larger magnitude; NaN where either is), cells whose NaN-ness differs,
and whether a second measurement on the device gave the same bits.

Speed per probe on the device: its seconds per checkpoint (after one warm-up call), the model
points it evaluated (a forward pre-hook on the model counts rows, with and without autograd),
and ``ratio`` = the time those evaluations take in a bare loop at the same batch size (inference
forward; forward + ``loss.backward()``) over the probe's time: 1 means the probe runs at the
model's raw rate. ``hessian`` is counted in Hessian-vector products: each product over N
points counts as N forward+backward rows, so its ratio is HVPs/s over raw passes/s (target
>= 0.4, as ``bench_hessian.py``). ``normalization`` evaluates a folded network of its own,
which the hook does not see; its ratio is marked.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from _timing import sync

from ckpt_analyzer.device import set_precision
from ckpt_analyzer.probes import PROBES
from ckpt_analyzer.testing import contract_context

# --light: small settings (a CPU smoke run); every other parameter keeps its default
LIGHT = {
    "spectrum": {"points": 24, "n": 16},
    "interpolation": {"pairs": 3},
    "sharpness": {"samples": 24, "paths": 2},
    "normalization": {"samples": 64},
    "hessian": {"points": 24, "iterations": 6, "trace_samples": 3},
    "landscape": {"points": 24, "steps": 5, "barrier_steps": 3},
    "weights_spectrum": {"min_evals": 8},
}
UNCOUNTED = {"normalization"}


def train_run(out: Path) -> Path:
    from ckpt_analyzer.train.loop import TrainConfig, Trainer

    cfg = TrainConfig(widths=(2, 8), epochs=5, label_noise=0.2, lr=1e-3, seed=0)
    trainer = Trainer(cfg, out, torch.device("cpu"))
    trainer.prepare()
    trainer.run()
    return out


class Counter:
    """Rows of the model's input, with and without autograd, from a forward pre-hook."""

    def __init__(self) -> None:
        self.forward = 0
        self.grad = 0

    def __call__(self, module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        n = len(args[0]) if args and isinstance(args[0], torch.Tensor) else 0
        if torch.is_grad_enabled() and not torch.is_inference_mode_enabled():
            self.grad += n
        else:
            self.forward += n


def raw_seconds(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int,
                rows: int, grad: bool, device: torch.device, repeats: int = 3) -> float:
    """Seconds a bare loop takes for ``rows`` rows of ``x`` (cycled) at ``batch``."""
    if rows == 0:
        return 0.0
    xb = x[:batch].repeat(-(-batch // len(x)), 1, 1, 1)[:batch]
    yb = y[:batch].repeat(-(-batch // len(y)))[:batch]
    steps = max(1, min(-(-rows // batch), 50))

    def loop() -> None:
        for _ in range(steps):
            if grad:
                with torch.enable_grad():
                    F.cross_entropy(model(xb), yb).backward()
            else:
                with torch.inference_mode():
                    model(xb)

    loop()
    best = math.inf
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        loop()
        sync(device)
        best = min(best, time.perf_counter() - t)
    model.zero_grad(set_to_none=True)
    return best / steps * rows / batch


def measure(name: str, config: Any, run: Path, device: torch.device, batch: int, tf32: bool
            ) -> tuple[dict[int, dict[str, np.ndarray]], dict[int, dict[str, np.ndarray]],
                       dict[int, tuple[float, Counter, Any]]]:
    """Two measurements of each width's last checkpoint on ``device``, and the second's time."""
    set_precision(device, tf32)
    cls = PROBES.get(name)
    ctx, models = contract_context(run, device=device, batch_size=batch)
    probe = cls(config)
    probe.prepare(ctx)
    first, second, speed = {}, {}, {}
    for w, (model, ref) in models.items():
        c = ctx.with_checkpoint(ref)
        first[w] = probe.measure(model, c)
        count = Counter()
        handle = model.register_forward_pre_hook(count)
        sync(device)
        t = time.perf_counter()
        with count_hvps(count):
            second[w] = probe.measure(model, c)
        sync(device)
        speed[w] = (time.perf_counter() - t, count, (model, ctx))
        handle.remove()
    return first, second, speed


@contextlib.contextmanager
def count_hvps(count: Counter) -> Iterator[None]:
    """While inside, every Hessian-vector product counts its points as forward+backward rows
    (and the forward pre-hook's own rows for building graphs are dropped afterwards)."""
    from ckpt_analyzer.functional.hessian import HessianOperator

    real, real_mm = HessianOperator.matvec, HessianOperator.matmat
    rows = [0]

    def matvec(self: HessianOperator, v: torch.Tensor) -> torch.Tensor:
        rows[0] += len(self.x)
        return real(self, v)

    def matmat(self: HessianOperator, vs: torch.Tensor) -> torch.Tensor:
        rows[0] += len(self.x) * len(vs)  # b products (matmat does not call matvec)
        return real_mm(self, vs)

    HessianOperator.matvec = matvec  # type: ignore[method-assign]
    HessianOperator.matmat = matmat  # type: ignore[method-assign]
    try:
        yield
    finally:
        HessianOperator.matvec = real  # type: ignore[method-assign]
        HessianOperator.matmat = real_mm  # type: ignore[method-assign]
        if rows[0]:
            count.forward, count.grad = 0, rows[0]


def differences(a: np.ndarray, b: np.ndarray) -> tuple[float, float, int]:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    nan_mismatch = int((np.isnan(a) != np.isnan(b)).sum())
    both = ~(np.isnan(a) | np.isnan(b))
    if not both.any():
        return 0.0, 0.0, nan_mismatch
    d = np.abs(a[both] - b[both])
    scale = np.maximum(np.maximum(np.abs(a[both]), np.abs(b[both])), 1e-30)
    return float(d.max()), float((d / scale).max()), nan_mismatch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--run", default=None, help="run folder [a small digits run trained here]")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--light", action="store_true", help="small probe settings (CPU smoke run)")
    ap.add_argument("--probes", default=None, help="comma-separated names [every registered]")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 on CUDA (default: off)")
    ap.add_argument("--tol", type=float, default=1e-3, help="relative difference flagged")
    ap.add_argument("--out", default=None, help="also write the tables here (markdown)")
    args = ap.parse_args()
    device = torch.device(args.device)
    cpu = torch.device("cpu")
    tmp = tempfile.TemporaryDirectory()
    run = Path(args.run) if args.run else train_run(Path(tmp.name) / "run")
    names = args.probes.split(",") if args.probes else PROBES.names()
    lines = [f"device {device}"
             + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
             + f", torch {torch.__version__}, TF32 {'on' if args.tf32 else 'off'}, "
             f"batch {args.batch_size}, {'light' if args.light else 'default'} configs, "
             f"run {run if args.run else 'digits mcnn w2, w8, 5 epochs'}", "",
             "| probe | metric | max abs diff | max rel diff | NaN mismatch | same bits twice |",
             "|---|---|---:|---:|---:|---|"]
    speed_lines = ["", "| probe | width | cpu s | device s | fwd rows | grad rows | ratio |",
                   "|---|---:|---:|---:|---:|---:|---:|"]
    flagged = []
    for name in names:
        cls = PROBES.get(name)
        fields = {f.name for f in dataclasses.fields(cls.Config)}
        settings = LIGHT.get(name, {}) if args.light else {}
        config = cls.Config(**{k: v for k, v in settings.items() if k in fields})
        _, ref, cpu_speed = measure(name, config, run, cpu, args.batch_size, args.tf32)
        first, second, speed = measure(name, config, run, device, args.batch_size, args.tf32)
        for metric in next(iter(ref.values())):
            worst = (0.0, 0.0, 0)
            for w in ref:
                d = differences(ref[w][metric], second[w][metric])
                worst = (max(worst[0], d[0]), max(worst[1], d[1]), worst[2] + d[2])
            same = all(np.array_equal(first[w][metric], second[w][metric], equal_nan=True)
                       for w in ref)
            mark = " **!**" if worst[1] > args.tol or worst[2] else ""
            if mark:
                flagged.append(f"{name}.{metric}")
            lines.append(f"| {name} | {metric} | {worst[0]:.3g} | {worst[1]:.3g}{mark} | "
                         f"{worst[2]} | {'yes' if same else 'NO'} |")
        for w, (secs, count, (model, ctx)) in speed.items():
            x, y = ctx.data.x_train, ctx.data.y_train
            ideal = (raw_seconds(model, x, y, ctx.forward_batch, count.forward, False, device)
                     + raw_seconds(model, x, y, ctx.batch_size, count.grad, True, device))
            ratio = f"{ideal / secs:.2f}" + (" (partial count)" if name in UNCOUNTED else "")
            speed_lines.append(f"| {name} | {w} | {cpu_speed[w][0]:.3f} | {secs:.3f} | "
                               f"{count.forward} | {count.grad} | {ratio} |")
        print(f"{name}: done", flush=True)
    text = "\n".join(lines + speed_lines)
    text += f"\n\nflagged (relative difference > {args.tol:g} or NaN mismatch): " \
            f"{', '.join(flagged) or 'none'}\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
