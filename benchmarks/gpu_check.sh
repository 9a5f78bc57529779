#!/usr/bin/env bash
# The prepared GPU session (benchmarks/README.md, "On a GPU"): one call of the device tool,
#   bash benchmarks/gpu_check.sh            (writes into $OUT, or benchmarks/gpu-out here)
# in about 8 minutes of an H200 once the machine is up. Each step has its own time limit, and a
# failed step does not stop the next; every step's output lands in $OUT:
#   1. the package installed from this tree without the network (the image has its needs);
#   2. device_check.md: each registered probe on CUDA against the CPU on the same checkpoints
#      (default configs), determinism on the GPU, seconds per checkpoint and the ratio to the
#      model's raw forward (+backward) rate; then TF32 on, for the probes it could touch;
#   3. device_tests.txt: the suite's device-agnostic tests (pytest -m device) on cuda;
#   4. bench.txt: Hessian-vector products, sharpness and interpolation throughput over the raw
#      rates on the GPU (bench_hessian.py, bench_sharpness.py, bench_interpolation.py);
#   5. bench_big.md: every probe on preact_resnet18 width 64 (11.2M parameters, 32x32 inputs)
#      within --max-memory 16G, seconds per checkpoint extrapolated to the defaults, CUDA peak
#      memory (bench_big.py; one process per probe, 30 s each at most).
set -uo pipefail
OUT=${OUT:-benchmarks/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}  # DEVICE=cpu LIGHT=--light: a smoke run of this script on a CPU
LIGHT=${LIGHT:-}
step() {  # step NAME SECONDS FILE CMD...: run CMD with a limit, output to FILE and the log
  local name=$1 limit=$2 file=$3; shift 3
  echo "== $name ($(date +%T), limit ${limit}s)" | tee -a "$OUT/log.txt"
  timeout "$limit" "$@" > >(tee -a "$OUT/$file") 2>&1
  echo "== $name: rc $?" | tee -a "$OUT/log.txt"
}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } \
  | tee "$OUT/log.txt"
step install 120 install.txt $PY -m pip install -q --no-deps --no-build-isolation --no-index \
  -e . -e plugins/ckpt-analyzer-weights
step device-check 300 device_check.md $PY benchmarks/device_check.py --device $DEVICE $LIGHT \
  --out "$OUT/device_check_table.md"
step device-check-tf32 90 device_check.md $PY benchmarks/device_check.py --device $DEVICE $LIGHT --tf32 \
  --probes sharpness,hessian,spectrum,landscape --out "$OUT/device_check_tf32.md"
step device-tests 200 device_tests.txt env CKPT_TEST_DEVICE=$DEVICE $PY -m pytest -m device -q \
  -p no:cacheprovider --no-header -rfE
step bench-hessian 60 bench.txt $PY benchmarks/bench_hessian.py --device $DEVICE --width 32 \
  --points 512 --batch-size 512 --probe
step bench-sharpness 60 bench.txt $PY benchmarks/bench_sharpness.py --device $DEVICE --width 16
step bench-interpolation 60 bench.txt $PY benchmarks/bench_interpolation.py --device $DEVICE
step bench-big 270 bench_big.md $PY benchmarks/bench_big.py --device $DEVICE --max-memory 16G \
  --train 8192 --test 2048 --grow 16 --timeout 30 --json "$OUT/bench_big.json"
echo "done; files in $OUT" | tee -a "$OUT/log.txt"
