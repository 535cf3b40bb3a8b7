#!/usr/bin/env bash
# N CPU processes on this machine, joined over loopback into one multi-process JAX run: the
# multi-host code path (coordinator, per-process data, global arrays, collective
# checkpoints) without a cluster. Needs bash >= 5.1.
#
#   N=2 DEVICES=4 launch/local_multiprocess.sh --config=configs/clip.py:tiny,runlocal \
#       --workdir=workdirs/clip_2proc
#
# Arguments go to every `python -m eclip_jax.main`, after --coordinator_address,
# --num_processes and --process_id. Environment: N (processes, default 2), DEVICES
# (simulated CPU devices per process, default 4), PORT (coordinator port, default a free
# one), PYTHON (default python3), DRY_RUN=1 or a first argument --dry_run (print the
# commands, run nothing).
#
# Waits for every process and exits with the first failure's code, killing the others
# (they would otherwise wait in a collective for the dead one). A SIGTERM/SIGINT to the
# script is passed on to every process: they save a checkpoint at a step they agree on and
# exit 75; run the same command again to resume.
set -euo pipefail

if [[ "${1:-}" == "--dry_run" ]]; then
  DRY_RUN=1
  shift
fi
N="${N:-2}"
DEVICES="${DEVICES:-4}"
PYTHON="${PYTHON:-python3}"
PORT="${PORT:-$("${PYTHON}" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
EXIT_PREEMPTED=75  # eclip_jax.main: stopped by a signal after saving a checkpoint

# Sets `cmd` to process $1's command line; the remaining arguments are the binary's.
command_for() {
  local process_id="$1"
  shift
  cmd=(env JAX_PLATFORMS=cpu "XLA_FLAGS=--xla_force_host_platform_device_count=${DEVICES}"
    "${PYTHON}" -m eclip_jax.main "--coordinator_address=127.0.0.1:${PORT}"
    "--num_processes=${N}" "--process_id=${process_id}" "$@")
}

if [[ "${DRY_RUN:-0}" == "1" ]]; then
  for ((i = 0; i < N; i++)); do
    command_for "${i}" "$@"
    line="$(printf '%q ' "${cmd[@]}")"
    echo "${line% }"
  done
  exit 0
fi

pids=()
signal_all() {
  for pid in "${pids[@]}"; do
    kill "-$1" "${pid}" 2>/dev/null || true
  done
}
# Background processes of a script start with SIGINT ignored: pass both on as SIGTERM.
trap 'signal_all TERM' TERM INT

for ((i = 0; i < N; i++)); do
  command_for "${i}" "$@"
  "${cmd[@]}" &
  pids+=("$!")
done

status=0
running=("${pids[@]}")
while ((${#running[@]} > 0)); do
  # A short poll rather than `wait -n`, which misses processes bash reaped in the meantime;
  # `wait` (unlike a foreground sleep) returns at once when a trapped signal arrives.
  sleep 0.2 &
  wait "$!" || true
  still_running=()
  for pid in "${running[@]}"; do
    if kill -0 "${pid}" 2>/dev/null; then
      still_running+=("${pid}")
      continue
    fi
    code=0
    wait "${pid}" || code=$?
    if ((code != 0 && status == 0)); then
      status="${code}"
      if ((code != EXIT_PREEMPTED)); then
        signal_all KILL
      fi
    fi
  done
  running=("${still_running[@]}")
done
exit "${status}"
