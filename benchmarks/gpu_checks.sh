#!/usr/bin/env bash
# The accelerator checks in one go, for a machine with one GPU and JAX, flax and
# equinox installed (no venv needed: the package is read from src/).
#
#   bash benchmarks/gpu_checks.sh [OUT_DIR]     (default: benchmarks/results)
#
# 1. benchmarks.gpu_mc: the Monte Carlo table (the project's LeNet at 100 to
#    10,000 trials, the four user-written LeNets, ResNet-18), `auto` against the
#    im2col and xla conv paths, the matmul rate and the memory roofline;
#    -> mc_gpu_h200.json (written after every model).
# 2. benchmarks.conv_paths: every conv-path policy on the seven models;
#    -> conv_paths_h200.json (written after every model).
# Each step has its own time limit, so that the first one's results survive the
# second one running long; the logs go beside the JSON files. About 9 minutes
# in all; the limits can be set with GPU_MC_LIMIT and CONV_PATHS_LIMIT (seconds),
# conv_paths' arguments with CONV_PATHS_ARGS (default: --repeats 2
# --min-call-s 0.3; split on spaces, so case names for --only cannot be passed
# this way).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 - <<'EOF'
import jax, uswim_jax
print("jax", jax.__version__, jax.devices(), "uswim_jax from", uswim_jax.__file__)
EOF
smoke=()  # GPU_CHECKS_SMOKE=1: tiny sizes, to try the script on a CPU
[[ -n "${GPU_CHECKS_SMOKE:-}" ]] && smoke=(--smoke)
timeout "${GPU_MC_LIMIT:-300}" python3 -m benchmarks.gpu_mc "${smoke[@]}" \
  --out "$out/mc_gpu_h200.json" 2>&1 | tee "$out/gpu_mc.log"
echo "gpu_mc exit ${PIPESTATUS[0]}"
conv_args=${CONV_PATHS_ARGS:---repeats 2 --min-call-s 0.3}
# the smoke: --quick sizes, one call a sample (its 240 s are for the sizes)
[[ -n "${GPU_CHECKS_SMOKE:-}" ]] && smoke=(--quick) && conv_args=${CONV_PATHS_ARGS:---repeats 2}
timeout "${CONV_PATHS_LIMIT:-240}" python3 -m benchmarks.conv_paths "${smoke[@]}" \
  --output "$out/conv_paths_h200.json" $conv_args 2>&1 | tee "$out/conv_paths_gpu.log"
echo "conv_paths exit ${PIPESTATUS[0]}"
