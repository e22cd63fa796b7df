#!/usr/bin/env bash
# Simulated multi-host run on one machine: N CPU processes, each a JAX "host" with fake CPU devices.
# Usage: launch/local.sh N [lion_jax.main args...]   (see usage() below or launch/README.md)
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/local.sh N [lion_jax.main args...]

Starts N local CPU processes as a simulated multi-host run of
  ${PYTHON:-python} -m ${LION_MODULE:-lion_jax.main} [args...] --config.distributed=True
with LION_COORDINATOR=127.0.0.1:PORT, LION_NUM_PROCESSES=N, LION_PROCESS_ID=i (0..N-1) and
XLA_FLAGS=--xla_force_host_platform_device_count=D. Run it from the repository root.

Every output line of process i is printed to stdout prefixed with "[i] ". Waits for all processes;
when one fails the others are stopped; the exit status is the first failure's (0 if all succeed).

Environment:
  PYTHON                    interpreter (default: python)
  LION_MODULE               the command to run (default: lion_jax.main; lion_jax.evaluate for a
                            multi-host evaluation, with its own flags)
  LION_PORT                 coordinator port (default: a free port picked at start, else 12355)
  LION_DEVICES_PER_PROCESS  fake CPU devices per process, D above (default: 2)
  LION_LOG_DIR              if set, each process's output (unprefixed) is also written to
                            LION_LOG_DIR/process_i.log (overwritten at each launch)
  JAX_PLATFORMS             default: cpu

Example (3 demo steps of stage 1 on 2 processes x 2 devices):
  launch/local.sh 2 --config=configs/demo.py:steps=3,images=40 --workdir=/tmp/lion-2p \
      --config.run_stages=stage1
EOF
}

if [[ $# -eq 0 || "$1" == "-h" || "$1" == "--help" ]]; then
  if [[ $# -eq 0 ]]; then usage >&2; exit 2; fi
  usage
  exit 0
fi
if ! [[ "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "local.sh: N must be a positive integer, got '$1'" >&2
  usage >&2
  exit 2
fi
num_processes=$1
shift

python_bin=${PYTHON:-python}
devices=${LION_DEVICES_PER_PROCESS:-2}
if [[ -n "${LION_PORT:-}" ]]; then
  port=$LION_PORT
else
  port=$("$python_bin" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' \
         2>/dev/null || echo 12355)
fi
if [[ -n "${LION_LOG_DIR:-}" ]]; then
  mkdir -p "$LION_LOG_DIR"
fi

# XLA_FLAGS from the caller, minus any device count of its own, plus ours.
xla_flags=""
for flag in ${XLA_FLAGS:-}; do
  [[ "$flag" == --xla_force_host_platform_device_count=* ]] || xla_flags+="$flag "
done
xla_flags+="--xla_force_host_platform_device_count=$devices"

# One process group per background job, so stopping a process stops its whole pipeline.
set -m

prefix_output() {  # stdin -> stdout with "[i] " prefixes (and LION_LOG_DIR/process_i.log)
  local i=$1 line
  if [[ -n "${LION_LOG_DIR:-}" ]]; then
    : >"$LION_LOG_DIR/process_$i.log"
    while IFS= read -r line || [[ -n "$line" ]]; do
      printf '%s\n' "$line" >>"$LION_LOG_DIR/process_$i.log"
      printf '[%s] %s\n' "$i" "$line"
    done
  else
    while IFS= read -r line || [[ -n "$line" ]]; do printf '[%s] %s\n' "$i" "$line"; done
  fi
}

run_process() {
  local i=$1
  shift
  LION_COORDINATOR="127.0.0.1:$port" LION_NUM_PROCESSES="$num_processes" LION_PROCESS_ID="$i" \
    XLA_FLAGS="$xla_flags" JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}" PYTHONUNBUFFERED=1 \
    "$python_bin" -m "${LION_MODULE:-lion_jax.main}" "$@" --config.distributed=True 2>&1 | prefix_output "$i"
}

pids=()
stop_all() {
  local pid
  for pid in "${pids[@]}"; do
    kill -TERM -- "-$pid" 2>/dev/null || true
  done
}
trap 'echo "local.sh: interrupted, stopping all processes" >&2; stop_all; exit 130' INT TERM

echo "local.sh: $num_processes processes, coordinator 127.0.0.1:$port, $devices CPU devices each" >&2
for ((i = 0; i < num_processes; i++)); do
  run_process "$i" "$@" &
  pids+=("$!")
done

# Poll (rather than `wait -n`, whose job table loses jobs that monitor mode already reported):
# `wait PID` on an exited child returns its saved status.
status=0
running=("${!pids[@]}")
while ((${#running[@]} > 0)); do
  still=()
  for i in "${running[@]}"; do
    if kill -0 "${pids[$i]}" 2>/dev/null; then still+=("$i"); continue; fi
    rc=0
    wait "${pids[$i]}" 2>/dev/null || rc=$?
    if ((rc != 0 && status == 0)); then
      status=$rc
      echo "local.sh: process $i exited with status $rc; stopping the others" >&2
      stop_all
    fi
  done
  running=("${still[@]}")
  if ((${#running[@]} > 0)); then sleep 0.5; fi
done
if ((status == 0)); then echo "local.sh: all $num_processes processes finished" >&2; fi
exit "$status"
