#!/usr/bin/env bash
# Runs the eclip_jax binary on a Cloud TPU VM slice: create it (directly or through a queued
# resource), copy this checkout to every worker, install, run on all workers at once while
# their output streams here, delete the slice.
#
#   launch/tpu_vm.sh --name=clip-b16 --zone=us-east5-b --accelerator_type=v5litepod-64 \
#       --config=configs/clip.py:b16 --workdir=gs://BUCKET/clip_b16 \
#       -- --config.input.data_dir=gs://BUCKET/data
#
# Flags (the environment variable in brackets is the default):
#   --name=N              [TPU_NAME]     slice (and queued resource) name; default eclip-$USER
#   --zone=Z              [TPU_ZONE]     default: gcloud's compute/zone
#   --project=P           [TPU_PROJECT]  default: gcloud's core/project
#   --accelerator_type=T  [TPU_TYPE]     default v5litepod-16 (4 hosts)
#   --version=V           [TPU_VERSION]  runtime image; default: the one Google lists for T
#   --config=F[:ARG]      [CONFIG]       required, as for the binary
#   --workdir=gs://...    [WORKDIR]      required; gs:// so every worker shares it
#   --queued                             create through a queued resource, wait until ACTIVE
#   --spot                               spot capacity (runs resume from their checkpoints)
#   --existing                           run on a slice that exists: no create, no delete
#   --keep                               do not delete the slice at the end
#   --dry_run                            print every command instead of running it
#   -- ARGS                              passed on to the binary (e.g. --config.x=y)
#
# No coordinator flags are needed: on TPU VMs `jax.distributed.initialize()` finds its peers
# from the slice's metadata. The slice is deleted on any exit (failure and Ctrl-C included)
# unless --keep or --existing, because an idle slice costs as much as a busy one.
# Needs bash >= 4.4 (on macOS: `brew install bash`).
set -euo pipefail

name="${TPU_NAME:-eclip-${USER:-user}}"
zone="${TPU_ZONE:-}"
project="${TPU_PROJECT:-}"
accelerator_type="${TPU_TYPE:-v5litepod-16}"
version="${TPU_VERSION:-}"
config="${CONFIG:-}"
workdir="${WORKDIR:-}"
queued=0 spot=0 existing=0 keep=0 dry_run=0
binary_args=()

die() { echo "tpu_vm.sh: $*" >&2; exit 2; }

while (($#)); do
  case "$1" in
    --name=*) name="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --accelerator_type=*) accelerator_type="${1#*=}" ;;
    --version=*) version="${1#*=}" ;;
    --config=*) config="${1#*=}" ;;
    --workdir=*) workdir="${1#*=}" ;;
    --queued) queued=1 ;;
    --spot) spot=1 ;;
    --existing) existing=1 ;;
    --keep) keep=1 ;;
    --dry_run) dry_run=1 ;;
    --) shift; binary_args=("$@"); break ;;
    *) die "unknown flag $1 (binary flags go after --)" ;;
  esac
  shift
done
[[ -n "${config}" ]] || die "set --config (or CONFIG), e.g. --config=configs/clip.py:b16"
[[ -n "${workdir}" ]] || die "set --workdir (or WORKDIR), e.g. --workdir=gs://BUCKET/run"
[[ "${workdir}" == gs://* ]] \
  || echo "tpu_vm.sh: warning: --workdir=${workdir} is not gs://; each worker writes its own" >&2

# Google's recommended runtime image per TPU generation (cloud.google.com/tpu/docs/runtimes).
if [[ -z "${version}" ]]; then
  case "${accelerator_type}" in
    v6e-*) version=v2-alpha-tpuv6e ;;
    v5p-*) version=v2-alpha-tpuv5 ;;
    v5litepod-*) version=v2-alpha-tpuv5-lite ;;
    *) version=tpu-ubuntu2204-base ;;
  esac
fi

# Quotes only what needs it (the value of --flag=value), so printed commands read cleanly
# and still paste into a shell.
quote() {
  local arg flag out=()
  for arg in "$@"; do
    flag=""
    if [[ "${arg}" =~ ^--[A-Za-z0-9_.-]+= ]]; then
      flag="${BASH_REMATCH[0]}"
      arg="${arg#"${flag}"}"
    fi
    if [[ "${arg}" =~ ^[A-Za-z0-9_./:=@,+%-]*$ ]]; then
      out+=("${flag}${arg}")
    else
      out+=("${flag}'${arg//\'/\'\\\'\'}'")
    fi
  done
  echo "${out[*]}"
}

run() {
  if ((dry_run)); then
    echo "+ $(quote "$@")"
  else
    "$@"
  fi
}

location=()
[[ -n "${zone}" ]] && location+=("--zone=${zone}")
[[ -n "${project}" ]] && location+=("--project=${project}")
capacity=()
((spot)) && capacity+=(--spot)

create() {
  if ((queued)); then
    run gcloud compute tpus queued-resources create "${name}" --node-id="${name}" \
      --accelerator-type="${accelerator_type}" --runtime-version="${version}" \
      "${location[@]}" "${capacity[@]}"
    delete_on_exit
    wait_until_active
  else
    run gcloud compute tpus tpu-vm create "${name}" --accelerator-type="${accelerator_type}" \
      --version="${version}" "${location[@]}" "${capacity[@]}"
    delete_on_exit
  fi
}

# Armed only once the create succeeded: a failed create (the name is taken, say) must not
# delete a slice that this script did not make.
delete_on_exit() {
  if ((!keep)); then
    trap delete EXIT
    trap 'exit 130' INT TERM  # through the EXIT trap, so an interrupted run still deletes
  fi
}

# A queued resource waits for capacity (minutes to hours); the slice exists once it is ACTIVE.
wait_until_active() {
  local describe=(gcloud compute tpus queued-resources describe "${name}" "${location[@]}"
                  --format='value(state.state)')
  if ((dry_run)); then
    run "${describe[@]}"
    return
  fi
  local state
  while state="$("${describe[@]}")"; [[ "${state}" != ACTIVE ]]; do
    case "${state}" in
      FAILED|SUSPENDED) die "queued resource ${name} is ${state}" ;;
    esac
    echo "tpu_vm.sh: queued resource ${name} is ${state}; waiting" >&2
    sleep 30
  done
}

delete() {
  if ((queued)); then
    run gcloud compute tpus queued-resources delete "${name}" "${location[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "${name}" "${location[@]}" --quiet
  fi
}

on_all_workers() {
  run gcloud compute tpus tpu-vm ssh "${name}" "${location[@]}" --worker=all --command="$1"
}

# Tracked files as they are in this working tree (uncommitted edits included); data,
# workdirs and virtualenvs are untracked and stay here.
pack() {
  local repo
  repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  if ((dry_run)); then
    echo "+ git -C $(quote "${repo}") ls-files -z" \
         "| tar -czf $(quote "$1") -C $(quote "${repo}") --null -T -"
  else
    git -C "${repo}" ls-files -z | tar -czf "$1" -C "${repo}" --null --ignore-failed-read -T -
  fi
}

((existing)) || create

tarball="${TMPDIR:-/tmp}/eclip_jax-${name}.tar.gz"
pack "${tarball}"
run gcloud compute tpus tpu-vm scp "${tarball}" "${name}:eclip_jax.tar.gz" "${location[@]}" \
  --worker=all
# Runtime images ship the OS's Python (3.10 on Ubuntu 22.04), older than the package needs:
# uv provides 3.11 in a virtualenv, into which pip installs the package with jax[tpu].
on_all_workers "export PATH=\$HOME/.local/bin:\$PATH \
&& rm -rf ~/eclip_jax && mkdir ~/eclip_jax && tar -xzf ~/eclip_jax.tar.gz -C ~/eclip_jax \
&& (command -v uv || curl -LsSf https://astral.sh/uv/install.sh | sh) \
&& (test -x ~/eclip_venv/bin/python || uv venv --seed --python=3.11 ~/eclip_venv) \
&& cd ~/eclip_jax && ~/eclip_venv/bin/pip install -q -e '.[tpu]'"
on_all_workers "cd ~/eclip_jax && ~/eclip_venv/bin/python -m eclip_jax.main \
$(quote "--config=${config}" "--workdir=${workdir}" "${binary_args[@]}")"
