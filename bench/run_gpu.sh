#!/usr/bin/env bash
# One-shot GPU comparison (H100/H200): our step vs the reference PyTorch/HF step (fp32, bf16, torch.compile),
# MFU, label-only decoding vs `generate`, a kernel profile, and the host input pipeline where seqio exists.
#
# Needs only what the GPU machines have preinstalled (Python 3.12, jax[cuda], flax, optax, orbax, torch,
# transformers): the timed path imports neither seqio, TensorFlow, gin nor sentencepiece.
#
# Safe on first try:
# - $OUT receives at most 4 files: SUMMARY.md (every table so far, rebuilt after each stage), stages.txt (stage
#   log with exit codes and times), env.txt, details.tar.gz (logs, JSON, per-stage tables; rebuilt after each
#   stage). Everything else lives in $WORK.
# - A 10-second preflight aborts unless JAX (JAX_PLATFORMS=cuda) and torch both see the GPU: no silent CPU run.
# - Each benchmark rewrites its table after every variant, ours before the reference's, torch.compile last (its
#   own final stage), so a stage killed at its limit keeps what finished.
# - One persistent JAX compilation cache (and one inductor cache) across stages: a program compiled by one
#   stage is not compiled again by a later one.
# - Stage limits leave the slowest compile room; the total stays under TOTAL_S (default 480 s, 8 min): a
#   stage gets min(its limit, time left).
#
#   OUT=/tmp/out PEAK_TFLOPS=989 BENCH_COMMIT=<short hash> bash bench/run_gpu.sh
# (BENCH_COMMIT names the measured commit when the tree was copied without .git.)
# SIMULATE_CPU=1 runs the same stages on CPU with small shapes, no GPU preflight and 4x the time limits
# (tests/test_run_gpu.py; PY=<a Python 3.12 without seqio/TF> simulates the GPU image).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
PY=${PY:-python3}
OUT=${OUT:-/tmp/bench_out}
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/bench_work.XXXXXX")}
PEAK_TFLOPS=${PEAK_TFLOPS:-989}   # dense bf16 peak of an H100/H200 SXM
SIMULATE_CPU=${SIMULATE_CPU:-0}
# Stage limits and the total are multiplied by LIMIT_SCALE (default 1; 4 when simulating on a slow CPU).
LIMIT_SCALE=${LIMIT_SCALE:-$([ "$SIMULATE_CPU" = 1 ] && echo 4 || echo 1)}
TOTAL_S=${TOTAL_S:-$(( 480 * LIMIT_SCALE ))}
mkdir -p "$OUT" "$WORK/tables" "$WORK/logs"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" XLA_PYTHON_CLIENT_PREALLOCATE=false HF_HUB_OFFLINE=1 \
  TF_CPP_MIN_LOG_LEVEL=3 TOKENIZERS_PARALLELISM=false \
  JAX_COMPILATION_CACHE_DIR="$WORK/jax_cache" JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 \
  JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0 TORCHINDUCTOR_CACHE_DIR="$WORK/inductor_cache"
if [ "$SIMULATE_CPU" = 1 ]; then
  export JAX_PLATFORMS=cpu CUDA_VISIBLE_DEVICES=""
  PAPER=${PAPER:-cpu_tiny} LARGE=${LARGE:-cpu_tiny} STEPS="--warmup 1 --steps 1 --windows 1"
else
  export JAX_PLATFORMS=cuda
  PAPER=${PAPER:-paper} LARGE=${LARGE:-large} STEPS=""
fi

start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }
log() { echo "$*" | tee -a "$OUT/stages.txt"; }

collect() {  # SUMMARY.md from every table so far; details.tar.gz of the rest
  { echo "# GPU benchmark summary ($(date -u '+%Y-%m-%d %H:%M') UTC, commit ${BENCH_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)})"
    echo; cat "$OUT/stages.txt"; echo
    for t in "$WORK"/tables/*.md; do [ -f "$t" ] && { cat "$t"; echo; }; done; } > "$OUT/SUMMARY.md.tmp"
  mv "$OUT/SUMMARY.md.tmp" "$OUT/SUMMARY.md"
  tar -czf "$OUT/details.tar.gz.tmp" -C "$WORK" tables logs 2>/dev/null && mv "$OUT/details.tar.gz.tmp" "$OUT/details.tar.gz"
}

stage() {  # stage NAME LIMIT_S COMMAND...: run under min(limit, time left), log, collect, keep going
  local name=$1 limit=$(( $2 * LIMIT_SCALE )); shift 2
  local left=$(( TOTAL_S - $(elapsed) ))
  if [ "$left" -lt 15 ]; then log "== $name: skipped, ${left}s left of TOTAL_S=${TOTAL_S}"; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  log "== $name ($(elapsed)s elapsed, limit ${limit}s)"
  timeout -s KILL "$limit" "$@" > "$WORK/logs/$name.log" 2>&1
  local rc=$?
  log "   $name: exit $rc$([ $rc = 137 ] && echo ' (killed at its limit)') after $(elapsed)s"
  tail -n 15 "$WORK/logs/$name.log"
  collect
}

# Preflight: both frameworks must see the GPU within 10 s (run side by side), else stop before any stage.
if [ "$SIMULATE_CPU" != 1 ]; then
  timeout -s KILL 10 "$PY" -c "import jax; d = jax.devices(); assert d[0].platform == 'gpu', d; print('jax', d)" \
    > "$WORK/logs/preflight_jax.log" 2>&1 & jpid=$!
  timeout -s KILL 10 "$PY" -c "import torch; assert torch.cuda.is_available(); print('torch', torch.cuda.get_device_name(0))" \
    > "$WORK/logs/preflight_torch.log" 2>&1 & tpid=$!
  wait $jpid; jrc=$?; wait $tpid; trc=$?
  if [ $jrc != 0 ] || [ $trc != 0 ]; then
    log "PREFLIGHT FAILED (jax exit $jrc, torch exit $trc): no GPU for both frameworks; nothing was run"
    cat "$WORK/logs/preflight_jax.log" "$WORK/logs/preflight_torch.log" | tail -n 20 | tee -a "$OUT/stages.txt"
    collect
    exit 2
  fi
  log "preflight ok: $(tail -n 1 "$WORK/logs/preflight_jax.log"); $(tail -n 1 "$WORK/logs/preflight_torch.log")"
else
  log "SIMULATE_CPU=1: CPU run with shapes $PAPER/$LARGE, no GPU preflight"
fi

{ nvidia-smi 2>&1 | head -n 20; "$PY" -c "import jax, torch, transformers, flax, optax, sys; print(sys.version); \
print(jax.devices(), jax.__version__, flax.__version__, optax.__version__, torch.__version__, transformers.__version__)"; \
  echo "commit ${BENCH_COMMIT:-$(git rev-parse HEAD 2>/dev/null)}"; } > "$OUT/env.txt" 2>&1

T="$WORK/tables"
# In order of what the issue's targets need; ours before the reference in every stage, torch.compile last.
stage step_paper 150 "$PY" -m bench.step_bench --shape "$PAPER" --ours ours_bf16_fused,ours_bf16_packed,ours_bf16 \
  --reference bf16 --peak_tflops "$PEAK_TFLOPS" $STEPS --out "$T"
stage infer_paper 50 "$PY" -m bench.infer_bench --shape "$PAPER" --ours bf16,fp32 --hf bf16,fp32 $STEPS --out "$T"
stage step_large 110 "$PY" -m bench.step_bench --shape "$LARGE" --ours ours_bf16_fused,ours_bf16_packed_remat \
  --reference bf16 --peak_tflops "$PEAK_TFLOPS" ${STEPS:---warmup 2 --steps 5} --tag large --out "$T"
stage step_paper_fp32 45 "$PY" -m bench.step_bench --shape "$PAPER" --ours ours_fp32 --reference fp32 \
  --peak_tflops "$PEAK_TFLOPS" $STEPS --tag fp32 --out "$T"
stage profile_paper 35 "$PY" -m bench.profile --shape "$PAPER" --variant ours_bf16_fused --reference bf16 \
  --steps $([ "$SIMULATE_CPU" = 1 ] && echo 1 || echo 3) --out "$WORK/profile"
cp "$WORK"/profile/profile_*.md "$T/" 2>/dev/null; collect
stage step_paper_compile 90 "$PY" -m bench.step_bench --shape "$PAPER" --ours "" --reference compile_bf16 \
  --peak_tflops "$PEAK_TFLOPS" $STEPS --tag compile --out "$T"
if "$PY" -c "import seqio" > /dev/null 2>&1; then
  stage pipeline 60 "$PY" -m bench.pipeline_bench --task arith --variants unpacked,packed --cores 1 --batches 100 \
    --out "$T"
else
  log "== pipeline: skipped (no seqio/TensorFlow in this image; the input pipeline needs them)"
fi
log "total $(elapsed)s; summary in $OUT/SUMMARY.md"
collect
