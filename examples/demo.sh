#!/usr/bin/env bash
# The embedded default, end to end on a CPU, as a small study: three seeds of a digits width
# sweep with 20% label noise (mcnn widths 1, 2, 3, 4, 8; Adam lr 1e-3; 300 epochs, 16
# log-spaced checkpoints per width), every probe on every run, the study report (text and a
# self-contained HTML page) and the figures. Two worker processes (one torch thread each) train
# and measure in parallel. Re-running resumes whatever is unfinished.
#   bash examples/demo.sh [OUT]        (default OUT: demo-run)
set -euo pipefail
OUT=${1:-demo-run}

ckpt-train "$OUT" --dataset digits --arch mcnn --widths 1,2,3,4,8 --epochs 300 \
  --label-noise 0.2 --seeds 0,1,2 --lr 1e-3 --save log:16 --workers 2

# every run folder under $OUT gets its own cube ($OUT/noise0.2-seed<S>/analysis.h5)
# cheap probes on every checkpoint (fewer points/pairs than the papers' defaults, for a CPU)
ckpt-analyze run "$OUT" --workers 2 --quiet --probe metrics --probe spectrum --probe interpolation \
  --probe normalization --set spectrum.points=100 --set spectrum.subsets=train,test,noisy \
  --set interpolation.pairs=20
# the peer probes, lighter than their defaults: Hessian top eigenvalue and trace, loss slices
# and the barrier to each width's last checkpoint, weight spectra
ckpt-analyze run "$OUT" --workers 2 --quiet --probe hessian --probe landscape \
  --probe weights_spectrum --set hessian.points=64 --set hessian.subsets=train --set hessian.k=1 \
  --set hessian.iterations=12 --set hessian.trace_samples=8 --set landscape.points=128 \
  --set landscape.steps=11 --set landscape.subsets=train,test --set landscape.barrier_steps=6
# the expensive one on a few epochs: initialization, early, interpolation time, the end
ckpt-analyze run "$OUT" --workers 2 --quiet --probe sharpness --epochs 0,8,39,300 \
  --set sharpness.samples=256 --set sharpness.paths=4

# the study: events per run with mean ± std over seeds, agreement, the fit with its CI
mkdir -p "$OUT/figures"
ckpt-analyze report "$OUT" --html "$OUT/report.html" | tee "$OUT/report.txt"
for kind in double-descent spectrum sharpness interpolation normalization landscape \
    hessian; do   # bands (or pooled points) over the seeds
  ckpt-analyze plot "$OUT" --kind "$kind" -o "$OUT/figures/study-$kind.png"
done
# one run's figures of every kind (seed 0)
RUN0="$OUT/noise0.2-seed0"
ckpt-analyze report "$RUN0/analysis.h5" > "$OUT/report-seed0.txt"
# its per-layer table (module names; alpha, spectral norm, layer norms) at width 8, epoch 300
ckpt-analyze report "$RUN0/analysis.h5" --layers > "$OUT/layers-seed0.txt"
for kind in double-descent spectrum sharpness interpolation normalization hessian landscape \
    weights-spectrum; do
  ckpt-analyze plot "$RUN0/analysis.h5" --kind "$kind" -o "$OUT/figures/$kind.png"
done
echo "report: $OUT/report.html ($OUT/report.txt, per layer $OUT/layers-seed0.txt), figures in $OUT/figures/"
