#!/usr/bin/env bash
# The embedded default, end to end on a CPU: a digits width sweep with 20% label noise
# (mcnn widths 1..16, Adam lr 1e-3, 300 epochs, 20 log-spaced checkpoints per width), every
# probe, the report and the figures. Re-running resumes whatever is unfinished.
# Training and the probes use two worker processes (--workers 2, one torch thread each): on a
# 2-core machine that is 1.5-1.8x faster than one process (benchmarks/README.md, "Scaling out").
#   bash examples/demo.sh [OUT]        (default OUT: demo-run)
set -euo pipefail
OUT=${1:-demo-run}
CUBE="$OUT/analysis.h5"

ckpt-train "$OUT" --dataset digits --arch mcnn --widths 1,2,3,4,6,8,16 --epochs 300 \
  --label-noise 0.2 --lr 1e-3 --save log:20 --workers 2

# cheap probes on every checkpoint (fewer points/pairs than the papers' defaults, for a CPU)
ckpt-analyze run "$OUT" -o "$CUBE" --workers 2 --probe metrics --probe spectrum --probe interpolation \
  --probe normalization --set spectrum.points=100 --set spectrum.subsets=train,test,noisy \
  --set interpolation.pairs=20
# the peer probes, lighter than their defaults: Hessian top eigenvalue and trace, loss slices
# and the barrier to each width's last checkpoint, weight spectra
ckpt-analyze run "$OUT" -o "$CUBE" --workers 2 --probe hessian --probe landscape \
  --probe weights_spectrum --set hessian.points=64 --set hessian.subsets=train --set hessian.k=1 \
  --set hessian.iterations=12 --set hessian.trace_samples=8 --set landscape.points=128 \
  --set landscape.steps=11 --set landscape.subsets=train,test --set landscape.barrier_steps=6
# the expensive one on a few epochs: initialization, early, interpolation time, the end
ckpt-analyze run "$OUT" -o "$CUBE" --workers 2 --probe sharpness --epochs 0,9,45,300 \
  --set sharpness.samples=256 --set sharpness.paths=4

ckpt-analyze inspect "$CUBE"
ckpt-analyze report "$CUBE" | tee "$OUT/report.txt"
mkdir -p "$OUT/figures"
for kind in double-descent spectrum sharpness interpolation normalization hessian landscape \
    weights-spectrum; do
  ckpt-analyze plot "$CUBE" --kind "$kind" -o "$OUT/figures/$kind.png"
done
echo "figures in $OUT/figures/, report in $OUT/report.txt, cube $CUBE"
