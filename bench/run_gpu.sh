#!/usr/bin/env bash
# One-shot GPU comparison (H100/H200): reference PyTorch/HF step vs ours, paper and large shapes, and
# label-only inference; writes markdown + JSON tables and a kernel-time profile under $OUT.
#
# Needs only what the GPU machines have preinstalled (Python 3.12, jax[cuda], flax, optax, orbax, torch,
# transformers): the timed path imports neither seqio, TensorFlow, gin nor sentencepiece. Budget ~8 minutes;
# each stage has its own timeout, so one slow stage cannot eat the others' time, and every stage that
# finishes leaves its table even if a later one fails.
#
#   OUT=/tmp/out PEAK_TFLOPS=989 BENCH_COMMIT=<short hash> bash bench/run_gpu.sh
# (BENCH_COMMIT names the measured commit in the tables when the tree was copied without .git.)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-/tmp/bench_out}
PEAK_TFLOPS=${PEAK_TFLOPS:-989}   # dense bf16 peak of an H100/H200 SXM
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" XLA_PYTHON_CLIENT_PREALLOCATE=false HF_HUB_OFFLINE=1 \
  TF_CPP_MIN_LOG_LEVEL=3 TOKENIZERS_PARALLELISM=false

start=$(date +%s)
stage() {  # stage NAME TIMEOUT_S COMMAND...: run, log, record the exit status, keep going
  local name=$1 limit=$2; shift 2
  echo "== $name ($(( $(date +%s) - start ))s elapsed, limit ${limit}s)" | tee -a "$OUT/stages.txt"
  timeout -s KILL "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "   $name: exit $rc after $(( $(date +%s) - start ))s" | tee -a "$OUT/stages.txt"
  tail -n 25 "$OUT/$name.log"
}

{ nvidia-smi; python -c "import jax, torch, transformers, flax, optax; print(jax.devices(), jax.__version__, \
  flax.__version__, optax.__version__, torch.__version__, transformers.__version__)"; git rev-parse HEAD; } \
  > "$OUT/env.txt" 2>&1

# In order of what the issue's targets need; each stage writes its own table.
stage step_paper 210 python -m bench.step_bench --shape paper --reference bf16,compile_bf16 \
  --ours ours_bf16_fused,ours_bf16_packed,ours_bf16 --peak_tflops "$PEAK_TFLOPS" --out "$OUT"
stage infer_paper 55 python -m bench.infer_bench --shape paper --hf bf16,fp32 --ours bf16,fp32 --out "$OUT"
stage step_large 125 python -m bench.step_bench --shape large --reference bf16 \
  --ours ours_bf16_fused,ours_bf16_packed_remat --peak_tflops "$PEAK_TFLOPS" --warmup 2 --steps 5 --out "$OUT"
stage step_paper_fp32 50 python -m bench.step_bench --shape paper --reference fp32 --ours ours_fp32 \
  --peak_tflops "$PEAK_TFLOPS" --tag fp32 --out "$OUT"
stage profile_paper 40 python -m bench.profile --shape paper --variant ours_bf16_fused --reference bf16 --steps 3 \
  --out "$OUT"

cat "$OUT"/step_paper.md "$OUT"/infer_paper.md "$OUT"/step_large.md "$OUT"/step_paper_fp32.md \
  "$OUT"/profile_paper.md > "$OUT/RESULTS_gpu.md" 2>/dev/null
echo "total $(( $(date +%s) - start ))s; tables in $OUT/RESULTS_gpu.md" | tee -a "$OUT/stages.txt"
