#!/usr/bin/env bash
# `sbs train` on a Cloud TPU VM pod slice: compile the run for the slice here first (`sbs compile`, no TPU
# needed), create the slice (or reuse it), install this package on every worker, then run the same
# `sbs train` on all workers (--worker=all). Run it from a machine with gcloud configured and sbs-jax[tpu]
# installed (the preflight compile needs libtpu).
#
#   launch/tpu_pod.sh --tpu=sbs-v4-32 --zone=us-central2-b --accelerator_type=v4-32 \
#       --model_dir=gs://my-bucket/runs/cqa_base -- --gin_file=models/t5_1_1_base.gin \
#       --gin_file=runs/step_by_step.gin --gin_file=datasets/cqa.gin \
#       --gin.DATA_DIR="'gs://my-bucket/datasets'" --gin.SPIECE_MODEL="'gs://my-bucket/t5/spiece.model'"
#
# Everything after `--` goes to `sbs train` unchanged; MODEL_DIR is added from --model_dir (it must be on GCS:
# the workers share no disk). Data dirs (DATA_DIR, user task files, teacher outputs) may be gs:// too, so no
# worker needs a copy of the data. Workers initialise JAX's distributed runtime from the TPU metadata
# (SBS_COORDINATOR_ADDRESS=auto, see docs/export_and_launch.md).
#
# Preflight: before any gcloud command, `sbs compile --topology=<accelerator_type>` compiles the same gin
# files and bindings for the slice and the script stops (exit 2) when the plan does not fit in the chips' HBM
# or does not divide over the slice; nothing is created. It runs in --dry_run too (it is local); --skip_compile
# skips it.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: launch/tpu_pod.sh [options] -- [sbs train arguments]
  --tpu=NAME               TPU VM name (required)
  --zone=ZONE              GCP zone (required)
  --model_dir=gs://...     MODEL_DIR for the run (required)
  --accelerator_type=TYPE  the slice type, e.g. v4-32, v5litepod-16: the preflight compiles for it, and a
                           TPU that does not exist yet is created with it (required unless --skip_compile)
  --version=RUNTIME        TPU VM software version for a new slice (default tpu-ubuntu2204-base)
  --project=PROJECT        GCP project (default: gcloud's configured project)
  --spot                   create the slice as Spot VMs
  --package=SPEC           what to pip install on the workers: a pip requirement (e.g.
                           git+https://github.com/ORG/sbs-jax@v0.1.0) or a local checkout directory, whose
                           committed HEAD is archived and copied over (default: this checkout)
  --python=EXE             Python (>= 3.11) on the workers for the virtualenv (default python3.11; installed
                           with apt when missing)
  --env=KEY=VALUE          extra environment for `sbs train` on the workers (repeatable)
  --skip_install           reuse the workers' existing ~/sbs-venv
  --skip_compile           skip the preflight `sbs compile` for --accelerator_type
  --sbs=EXE                the local `sbs` for the preflight (default: sbs on PATH)
  --dry_run                print the commands and run nothing but the (local) preflight compile
EOF
}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tpu="" zone="" model_dir="" accelerator_type="" project="" package="$repo"
version=tpu-ubuntu2204-base python=python3.11 spot=0 skip_install=0 skip_compile=0 sbs=sbs dry_run=${DRY_RUN:-0}
extra_env=()
while (($#)); do
  case "$1" in
    --tpu=*) tpu=${1#*=} ;;
    --zone=*) zone=${1#*=} ;;
    --model_dir=*) model_dir=${1#*=} ;;
    --accelerator_type=*) accelerator_type=${1#*=} ;;
    --version=*) version=${1#*=} ;;
    --project=*) project=${1#*=} ;;
    --spot) spot=1 ;;
    --package=*) package=${1#*=} ;;
    --python=*) python=${1#*=} ;;
    --env=*=*) extra_env+=("${1#--env=}") ;;
    --skip_install) skip_install=1 ;;
    --skip_compile) skip_compile=1 ;;
    --sbs=*) sbs=${1#*=} ;;
    --dry_run) dry_run=1 ;;
    -h | --help) usage; exit 0 ;;
    --) shift; break ;;
    *) echo "tpu_pod.sh: unknown option '$1' (sbs train arguments go after --)" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

for required in tpu zone model_dir; do
  if [[ -z ${!required} ]]; then
    echo "tpu_pod.sh: --$required is required" >&2
    usage >&2
    exit 2
  fi
done
if [[ $model_dir != gs://* ]]; then
  echo "tpu_pod.sh: --model_dir must be a gs:// path (the workers share no disk), got '$model_dir'" >&2
  exit 2
fi

show() {
  printf '+'
  printf ' %q' "$@"
  printf '\n'
}
run() {
  show "$@"
  if ((dry_run)); then return 0; fi
  "$@"
}

# 0. Preflight: the run compiled for the slice on this machine; a plan that does not fit stops here.
if ((!skip_compile)); then
  if [[ -z $accelerator_type ]]; then
    echo "tpu_pod.sh: --accelerator_type is required for the preflight compile (or pass --skip_compile)" >&2
    exit 2
  fi
  preflight=("$sbs" compile --topology="$accelerator_type" "$@")
  show "${preflight[@]}"
  status=0
  "${preflight[@]}" || status=$?
  if ((status == 2)); then
    echo "tpu_pod.sh: preflight: the run does not fit or does not divide on $accelerator_type (sbs compile" \
      "exit 2, above); nothing was created. Change the plan (BATCH_SIZE, PARTITIONING, MESH_MODEL," \
      "remat) or the slice, or pass --skip_compile" >&2
    exit 2
  elif ((status != 0)); then
    echo "tpu_pod.sh: preflight: '$sbs compile' failed (exit $status, above); nothing was created." \
      "Install sbs-jax with the TPU extra here (pip install -e '.[tpu]'), point --sbs at it, or pass --skip_compile" >&2
    exit 1
  fi
fi

location=(--zone="$zone")
if [[ -n $project ]]; then location+=(--project="$project"); fi
tpu_vm=(gcloud compute tpus tpu-vm)

# 1. The slice: reuse it when it exists, create it otherwise.
create=("${tpu_vm[@]}" create "$tpu" "${location[@]}" --accelerator-type="$accelerator_type" --version="$version")
if ((spot)); then create+=(--spot); fi
if ((dry_run)); then
  show "${tpu_vm[@]}" describe "$tpu" "${location[@]}" --format=value\(state\)
  echo "# only when the describe above finds no TPU named $tpu:"
  show "${create[@]}"
elif "${tpu_vm[@]}" describe "$tpu" "${location[@]}" --format='value(state)' >/dev/null 2>&1; then
  echo "tpu_pod.sh: reusing TPU $tpu"
else
  if [[ -z $accelerator_type ]]; then
    echo "tpu_pod.sh: TPU $tpu not found in $zone; pass --accelerator_type to create it" >&2
    exit 2
  fi
  run "${create[@]}"
fi

# 2. The package, in a virtualenv on every worker (TPU VM images ship an older system Python).
if ((!skip_install)); then
  requirement=$package
  if [[ -d $package ]]; then
    archive="${TMPDIR:-/tmp}/sbs-jax-$tpu.tar.gz"
    run git -C "$package" archive --format=tar.gz --prefix=sbs-jax/ -o "$archive" HEAD
    run "${tpu_vm[@]}" scp "$archive" "$tpu":sbs-jax.tar.gz --worker=all "${location[@]}"
    requirement='./sbs-jax.tar.gz'
  fi
  printf -v quoted_requirement '%q' "$requirement"
  printf -v quoted_python '%q' "$python"
  install="set -e; cd ~; if ! command -v $quoted_python >/dev/null; then sudo apt-get -qq update"
  install+=" && sudo apt-get -qq install -y $quoted_python $quoted_python-venv; fi"
  install+="; $quoted_python -m venv ~/sbs-venv && ~/sbs-venv/bin/pip install -q --upgrade pip"
  install+=" && ~/sbs-venv/bin/pip install -q 'jax[tpu]' $quoted_requirement"
  echo "# on every worker: $install"
  run "${tpu_vm[@]}" ssh "$tpu" --worker=all "${location[@]}" --command="$install"
fi

# 3. The same training command on every worker; JAX finds its peers from the TPU metadata.
train=(env SBS_COORDINATOR_ADDRESS=auto "${extra_env[@]}" ./sbs-venv/bin/sbs train "$@"
  "--gin.MODEL_DIR='$model_dir'")
printf -v remote ' %q' "${train[@]}"
echo "# on every worker: cd ~ &&$remote"
run "${tpu_vm[@]}" ssh "$tpu" --worker=all "${location[@]}" --command="cd ~ &&$remote"
