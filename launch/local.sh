#!/usr/bin/env bash
# Run N `sbs train` processes on this machine as one multi-process JAX job (CPU or GPUs), to try a multi-host
# configuration without a cluster. Process 0 hosts the coordinator on 127.0.0.1.
#
#   launch/local.sh --num_processes=2 -- --gin_file=models/t5_1_1_tiny.gin --gin_file=runs/step_by_step.gin \
#       --gin_file=datasets/arith.gin --gin.MODEL_DIR="'/tmp/m'" --gin.TRAIN_STEPS=5
#
# Everything after `--` goes to `sbs train` unchanged. Each process learns its place in the job from
# SBS_COORDINATOR_ADDRESS, SBS_NUM_PROCESSES and SBS_PROCESS_ID (see docs/export_and_launch.md).
set -euo pipefail

usage() {
  cat <<'EOF'
usage: launch/local.sh [options] -- [sbs train arguments]
  --num_processes=N        processes to start (default 2)
  --platform=cpu|gpu       cpu: each process gets --devices_per_process fake CPU devices (default cpu);
                           gpu: each process sees --devices_per_process GPUs through CUDA_VISIBLE_DEVICES
  --devices_per_process=K  devices per process (default 1; more than 1 CPU device per process can deadlock
                           cross-process collectives on the gloo backend)
  --port=P                 coordinator port on 127.0.0.1 (default 12355)
  --log_dir=DIR            one log file per process, process_<i>.log (default ./local_logs)
  --sbs=CMD                the sbs executable (default: sbs)
  --dry_run                print the commands and run nothing
EOF
}

num_processes=2
platform=cpu
devices_per_process=1
port=12355
log_dir=./local_logs
sbs=sbs
dry_run=${DRY_RUN:-0}

while (($#)); do
  case "$1" in
    --num_processes=*) num_processes=${1#*=} ;;
    --platform=*) platform=${1#*=} ;;
    --devices_per_process=*) devices_per_process=${1#*=} ;;
    --port=*) port=${1#*=} ;;
    --log_dir=*) log_dir=${1#*=} ;;
    --sbs=*) sbs=${1#*=} ;;
    --dry_run) dry_run=1 ;;
    -h | --help) usage; exit 0 ;;
    --) shift; break ;;
    *) echo "local.sh: unknown option '$1' (sbs train arguments go after --)" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

for value in "$num_processes" "$devices_per_process" "$port"; do
  if ! [[ $value =~ ^[1-9][0-9]*$ ]]; then
    echo "local.sh: expected a positive integer, got '$value'" >&2
    exit 2
  fi
done
if [[ $platform != cpu && $platform != gpu ]]; then
  echo "local.sh: --platform must be cpu or gpu, got '$platform'" >&2
  exit 2
fi

# Prints a command exactly as it will run (shell-quoted), prefixed with '+ '.
show() {
  printf '+'
  printf ' %q' "$@"
  printf '\n'
}

# The environment of process $1: which devices it owns and where the coordinator is.
process_env() {
  local pid=$1 env=(env "JAX_PLATFORMS=$platform")
  if [[ $platform == cpu ]]; then
    env+=("JAX_NUM_CPU_DEVICES=$devices_per_process" "CUDA_VISIBLE_DEVICES=")
  else
    local first=$((pid * devices_per_process)) ids="" d
    for ((d = first; d < first + devices_per_process; d++)); do ids+="${ids:+,}$d"; done
    env+=("CUDA_VISIBLE_DEVICES=$ids")
  fi
  env+=("SBS_COORDINATOR_ADDRESS=127.0.0.1:$port" "SBS_NUM_PROCESSES=$num_processes" "SBS_PROCESS_ID=$pid")
  printf '%s\n' "${env[@]}"
}

if ((dry_run)); then
  show mkdir -p "$log_dir"
else
  mkdir -p "$log_dir"
fi

pids=()
for ((i = 0; i < num_processes; i++)); do
  mapfile -t cmd < <(process_env "$i")
  cmd+=("$sbs" train "$@")
  log="$log_dir/process_$i.log"
  if ((dry_run)); then
    show "${cmd[@]}"
    echo "  (stdout and stderr to $log, in the background)"
    continue
  fi
  "${cmd[@]}" >"$log" 2>&1 &
  pids+=("$!")
  echo "local.sh: started process $i (pid $!), log $log"
done
if ((dry_run)); then exit 0; fi

# A process stuck in a collective may ignore SIGTERM (gloo), hence the SIGKILL after a grace period.
stop_all() {
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  sleep 5
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
}
trap 'stop_all; exit 130' INT TERM

# Wait for whichever process ends first; on a failure, report it and stop the rest (they would wait on the
# failed one forever in their next collective).
declare -A index_of
for i in "${!pids[@]}"; do index_of[${pids[$i]}]=$i; done
running=("${pids[@]}")
status=0
while ((${#running[@]})); do
  done_pid=""
  if wait -n -p done_pid "${running[@]}"; then
    echo "local.sh: process ${index_of[$done_pid]} finished"
  else
    status=$?
    i=${index_of[$done_pid]}
    echo "local.sh: process $i failed (exit $status); last lines of $log_dir/process_$i.log:" >&2
    tail -n 30 "$log_dir/process_$i.log" >&2
    stop_all
    wait || true
    break
  fi
  for j in "${!running[@]}"; do [[ ${running[$j]} == "$done_pid" ]] && unset 'running[j]'; done
done
exit "$status"
