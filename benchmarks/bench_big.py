"""Every probe on a big model (issue 22 part 4): ``preact_resnet18`` at width 64 (11.2M
parameters) on 32x32x3 inputs, within a memory budget (``Context.max_memory``).

Each probe runs in its own process (so its peak RSS is its own) on a random-init model and a
synthetic 32x32 dataset (``--train`` training images with 25% marked noisy, ``--test`` test
images, 1/f-spectrum pixels), at *reduced* settings that keep the whole run to a few minutes on
a CPU; the seconds per checkpoint at the probe's default (or recommended, for ``hessian``)
settings on CIFAR-10 are extrapolated linearly in the number of model evaluations, by the
factor printed per probe (``scale``). Prints a markdown table (seconds measured, scale,
extrapolated seconds, the batches the budget chose, peak RSS of the process and of the model
and data alone).

    OMP_NUM_THREADS=2 python benchmarks/bench_big.py                 # CPU, --max-memory 1G
    python benchmarks/bench_big.py --device cuda --max-memory 16G    # on a GPU (gpu_check.sh)
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from typing import Any

#: (reduced settings, scale to the default/recommended run on CIFAR-10) per probe.
#: The scale is the ratio of model evaluations (rows; Hessian-vector products x points).
PLANS: dict[str, tuple[dict[str, Any], float, str]] = {
    "metrics": ({}, math.nan, "50k train + 10k test rows over --train + --test"),
    "spectrum": ({"points": 4}, 500 / 4, "500 points x 128 samples over 4 x 128"),
    "interpolation": ({"pairs": 1, "kinds": ("within",)}, math.nan,
                      "rows counted; default 11,000 paths x ~70 steps"),
    "sharpness": ({"samples": 4}, 1024 / 4, "1024 points x 49 anchors x 5 over 4 points"),
    "normalization": ({}, math.nan, "f and f~ on 60k rows over --train + --test"),
    "hessian": ({"points": 32, "subsets": ("train",), "k": 1, "iterations": 2,
                 "trace_samples": 1, "density_runs": 0},
                # recommended at 11M parameters: iterations=20 (1.8 GB basis), k=3,
                # trace_samples=32, points=256, train+test: 2 x (20+3+32) HVPs of 256 points
                2 * (20 + 3 + 32) * 256 / ((2 + 1 + 1) * 32),
                "2 subsets x 55 HVPs x 256 points over 4 HVPs x 32"),
    "landscape": ({"steps": 3, "points": 16, "bn_samples": 64, "barrier_steps": 2},
                  (21 + 11) * (4 * 512 + 1024) / ((3 + 2) * (4 * 16 + 64)),
                  "32 grid points x (2048 + 1024 BN) rows over 5 x (64 + 64)"),
    "weights_spectrum": ({}, 1.0, "no data"),
}

#: rows per checkpoint of the default interpolation run on CIFAR-10 (an estimate: 200 pairs
#: per class and per class pair, 10 classes, ~70 unit steps of a test pair's distance in the
#: normalized input space)
INTERPOLATION_ROWS = (200 * 10 + 200 * 45) * 70


def parse_size(text: str) -> int:
    from ckpt_analyzer.selection import parse_size as size

    return 0 if text.strip() == "0" else size(text)


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from ckpt_analyzer.checkpoints.run_data import RunData
    from ckpt_analyzer.models import build_model
    from ckpt_analyzer.probes import make_probes
    from ckpt_analyzer.probes.base import Context

    torch.manual_seed(0)
    dev = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    n = args.train + args.test
    f = torch.fft.fftfreq(32)
    r = (f[:, None] ** 2 + f[None] ** 2).sqrt()
    r[0, 0] = 1.0
    img = torch.fft.ifft2(torch.complex(torch.randn(n, 3, 32, 32, generator=g),
                                        torch.randn(n, 3, 32, 32, generator=g)) / r).real
    img = img - img.amin(dim=(2, 3), keepdim=True)
    x01 = (img / img.amax(dim=(2, 3), keepdim=True)).float()
    mean, std = x01.mean(dim=(0, 2, 3)), x01.std(dim=(0, 2, 3))
    x = (x01 - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    y = torch.arange(n) % 10
    tr, te = slice(0, args.train), slice(args.train, n)
    data = RunData(x_train=x[tr], y_train=y[tr], clean_labels=y[tr],
                   noisy_mask=torch.arange(args.train) % 4 == 0, x_test=x[te], y_test=y[te],
                   mean=mean, std=std, num_classes=10).to(dev)

    def build(width: int) -> torch.nn.Module:
        torch.manual_seed(width)
        return build_model("preact_resnet18", width, 10, 3).to(dev)

    model = build(args.width).eval()
    last = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
            for k, v in model.state_dict().items()}
    ctx = Context(data=data, device=dev, batch_size=args.batch_size, seed=0,
                  widths=(args.width,), epochs=(0,), build_model=build,
                  final_state=lambda w: (1, last), max_memory=args.max_memory)
    settings, scale, _ = PLANS[args.child]
    settings = dict(settings)
    for key in ("points", "samples", "pairs"):  # --grow: larger runs, the same extrapolation
        if key in settings:
            settings[key] = settings[key] * args.grow
            scale /= args.grow
    if args.child in ("metrics", "normalization"):  # every image of the splits
        scale = 60000 / (args.train + args.test)
    (probe,) = make_probes([args.child], {args.child: settings})
    base_rss = rss_mib()
    rows = 0

    def count(_m: Any, inputs: Any) -> None:
        nonlocal rows
        rows += len(inputs[0])

    from ckpt_analyzer.checkpoints import CheckpointRef

    ref = CheckpointRef(width=args.width, epoch=0, path="synthetic")
    ctx = ctx.with_checkpoint(ref)
    probe.ensure_prepared(ctx)
    from ckpt_analyzer.probes._budget import within_budget

    order = {"sharpness": 1, "hessian": 2}.get(args.child, 0)
    fitted = within_budget(probe, model, ctx, order)  # the batches the probe will use
    handle = model.register_forward_pre_hook(count)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(dev)
    t0, c0 = time.perf_counter(), time.process_time()
    probe.measure(model, ctx)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    handle.remove()
    if args.child == "interpolation":
        scale = INTERPOLATION_ROWS / max(1, rows)
    return {"probe": args.child, "seconds": seconds, "cpu_seconds": cpu, "scale": scale, "rows": rows,
            "batch": fitted.batch_size, "forward_batch": fitted.forward_batch,
            "rss_mib": rss_mib(), "base_rss_mib": base_rss,
            "cuda_peak_mib": (torch.cuda.max_memory_allocated(dev) / 2**20
                              if dev.type == "cuda" else math.nan),
            "params": sum(p.numel() for p in model.parameters())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--max-memory", type=parse_size, default=parse_size("1G"),
                    help="Context.max_memory, e.g. 1G (0: no budget)")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--train", type=int, default=512)
    ap.add_argument("--test", type=int, default=128)
    ap.add_argument("--probes", default=",".join(PLANS))
    ap.add_argument("--grow", type=int, default=1,
                    help="multiply the reduced points / samples / pairs by this (a GPU)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per probe")
    ap.add_argument("--json", default=None, help="also write the rows here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.max_memory == 0:
        args.max_memory = None
    if args.child:
        print(json.dumps(child(args)))
        return
    rows = []
    budget = "none" if args.max_memory is None else f"{args.max_memory / 2**30:g} GiB"
    print(f"preact_resnet18 w{args.width} on {args.device}, max_memory {budget}, batch "
          f"{args.batch_size}, {args.train} + {args.test} synthetic 32x32 images\n")
    print("| probe | wall s | CPU s | scale | wall s per checkpoint (defaults) | batch / "
          "forward batch | peak RSS MiB (model + data) | CUDA peak MiB |")
    print("|---|---:|---:|---:|---:|---|---:|---:|")
    cmd = [sys.executable, __file__, "--device", args.device, "--width", str(args.width),
           "--max-memory", str(args.max_memory or 0), "--batch-size", str(args.batch_size),
           "--train", str(args.train), "--test", str(args.test), "--grow", str(args.grow)]
    for name in args.probes.split(","):
        try:
            done = subprocess.run([*cmd, "--child", name], capture_output=True, text=True,
                                  timeout=args.timeout)
        except subprocess.TimeoutExpired:
            print(f"| {name} | timeout {args.timeout:g} s | | | | | | |", flush=True)
            continue
        if done.returncode:
            tail = (done.stderr.strip().splitlines() or ["?"])[-1]
            print(f"| {name} | failed: {tail} | | | | | | |", flush=True)
            continue
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"| {name} | {row['seconds']:.2f} | {row['cpu_seconds']:.1f} | {row['scale']:.4g} | "
              f"{row['seconds'] * row['scale']:.4g} | {row['batch']} / {row['forward_batch']} | "
              f"{row['rss_mib']:.0f} ({row['base_rss_mib']:.0f}) | {row['cuda_peak_mib']:.0f} |",
              flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
