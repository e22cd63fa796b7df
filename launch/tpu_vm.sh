#!/usr/bin/env bash
# Cloud TPU VM launcher: create a slice, put the code on every worker, install, train on all workers,
# delete the slice. Usage: launch/tpu_vm.sh --help (or launch/README.md).
# After a preemption (the workers get SIGTERM: each saves a checkpoint at an agreed step and exits 0)
# run the same command again, with `create` if the slice is gone: the run resumes from that
# checkpoint (launch/README.md, "Preemption and re-launching").
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu_vm.sh [options] [STEP...] [-- lion_jax.main args...]

Runs on your workstation (needs gcloud, authenticated). STEPs, in the order given (default: all):
  create    gcloud compute tpus tpu-vm create NAME --accelerator-type=TYPE --version=RUNTIME
  copy      copy the code to every worker: a `git archive HEAD` tarball of this repository (committed
            files only) by scp --worker=all, or `git clone` of --repo at --ref on every worker
  install   on every worker: venv ~/lion-venv (Python 3.11, apt-installed if missing),
            pip install -e '.[gcs]' (gcsfs for gs:// workdirs), then jax[tpu]==<jax pin from
            requirements.txt> (libtpu find-links)
  run       on every worker (--worker=all): python -m lion_jax.main ARGS --config.distributed=True,
            output streamed here and kept in ~/lion-run.log on each worker
  logs      tail -f ~/lion-run.log on worker --log-worker (for --detach runs)
  delete    gcloud compute tpus tpu-vm delete NAME
  all       create copy install run, then delete the slice (even when a step fails) unless --keep

Options (environment variable in brackets):
  --tpu NAME               TPU VM name [TPU_NAME] (required)
  --zone ZONE              e.g. us-west4-a [ZONE] (required)
  --project PROJECT        [PROJECT] (default: gcloud's configured project)
  --type TYPE              accelerator type [ACCELERATOR_TYPE] (default: v5litepod-16)
  --runtime-version V      TPU software version [RUNTIME_VERSION] (default by type: v5litepod-*
                           v2-alpha-tpuv5-lite, v5p-* v2-alpha-tpuv5, v6e-* v2-alpha-tpuv6e,
                           else tpu-ubuntu2204-base)
  --spot                   create a Spot slice
  --repo URL --ref REF     clone URL at REF on every worker instead of copying this checkout
  --jax-version V          jax[tpu] version to install (default: the jax== pin in requirements.txt)
  --python BIN             Python on the workers for the venv (default: python3.11)
  --port PORT              JAX coordinator port [LION_COORDINATOR_PORT] (default: 8482, the port
                           jax's TPU cluster auto-detection uses; exported as JAX_COORDINATOR_PORT)
  --detach                 run: start training under nohup and return (implies --keep); follow
                           it with the `logs` step
  --log-worker N           worker whose log `logs` follows (default: 0)
  --keep                   all: keep the slice at the end
  --dry-run                print every command (gcloud, git) instead of running it
  -h, --help               this text

Everything after `--` (and any --config..., --workdir... argument) goes to lion_jax.main. The
workdir must be storage every worker sees (every worker writes its part of each checkpoint): a
gs:// bucket path, a bucket mounted with gcsfuse, or Filestore/NFS (launch/README.md).

Example:
  launch/tpu_vm.sh --tpu lion-v5e --zone us-west4-a --project my-proj --type v5litepod-16 -- \
      --config=configs/stage1.py --workdir=gs://my-bucket/lion/run1
EOF
}

die() { echo "tpu_vm.sh: $*" >&2; exit 2; }

tpu=${TPU_NAME:-}
zone=${ZONE:-}
project=${PROJECT:-}
accelerator_type=${ACCELERATOR_TYPE:-v5litepod-16}
runtime_version=${RUNTIME_VERSION:-}
port=${LION_COORDINATOR_PORT:-8482}
repo_url=""
repo_ref=""
jax_version=""
remote_python=python3.11
spot=false
keep=false
detach=false
dry_run=false
log_worker=0
steps=()
main_args=()

need_value() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --tpu) need_value "$@"; tpu=$2; shift 2 ;;
    --tpu=*) tpu=${1#*=}; shift ;;
    --zone) need_value "$@"; zone=$2; shift 2 ;;
    --zone=*) zone=${1#*=}; shift ;;
    --project) need_value "$@"; project=$2; shift 2 ;;
    --project=*) project=${1#*=}; shift ;;
    --type) need_value "$@"; accelerator_type=$2; shift 2 ;;
    --type=*) accelerator_type=${1#*=}; shift ;;
    --runtime-version) need_value "$@"; runtime_version=$2; shift 2 ;;
    --runtime-version=*) runtime_version=${1#*=}; shift ;;
    --repo) need_value "$@"; repo_url=$2; shift 2 ;;
    --repo=*) repo_url=${1#*=}; shift ;;
    --ref) need_value "$@"; repo_ref=$2; shift 2 ;;
    --ref=*) repo_ref=${1#*=}; shift ;;
    --jax-version) need_value "$@"; jax_version=$2; shift 2 ;;
    --jax-version=*) jax_version=${1#*=}; shift ;;
    --python) need_value "$@"; remote_python=$2; shift 2 ;;
    --python=*) remote_python=${1#*=}; shift ;;
    --port) need_value "$@"; port=$2; shift 2 ;;
    --port=*) port=${1#*=}; shift ;;
    --log-worker) need_value "$@"; log_worker=$2; shift 2 ;;
    --log-worker=*) log_worker=${1#*=}; shift ;;
    --spot) spot=true; shift ;;
    --keep) keep=true; shift ;;
    --detach) detach=true; shift ;;
    --dry-run) dry_run=true; shift ;;
    --) shift; main_args+=("$@"); break ;;
    --config|--config=*|--config.*|--workdir|--workdir=*) main_args+=("$1"); shift ;;
    create|copy|install|run|logs|delete|all) steps+=("$1"); shift ;;
    *) die "unknown argument '$1' (lion_jax.main arguments go after --; see --help)" ;;
  esac
done

[[ ${#steps[@]} -gt 0 ]] || steps=(all)
[[ -n "$tpu" ]] || die "--tpu NAME (or TPU_NAME) is required"
[[ -n "$zone" ]] || die "--zone ZONE (or ZONE) is required"
[[ "$port" =~ ^[0-9]+$ ]] || die "--port must be a number, got '$port'"
if [[ -n "$repo_url" && -z "$repo_ref" ]]; then repo_ref=HEAD; fi
if [[ -z "$repo_url" && -n "$repo_ref" ]]; then die "--ref needs --repo"; fi
if [[ -z "$runtime_version" ]]; then
  case "$accelerator_type" in
    v5litepod-*) runtime_version=v2-alpha-tpuv5-lite ;;
    v5p-*) runtime_version=v2-alpha-tpuv5 ;;
    v6e-*) runtime_version=v2-alpha-tpuv6e ;;
    *) runtime_version="tpu-ubuntu2204-base" ;;
  esac
fi
if $detach; then keep=true; fi

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -z "$jax_version" && -z "$repo_url" ]]; then
  jax_version=$(sed -n 's/^jax==\([^[:space:]#]*\).*/\1/p' "$repo_root/requirements.txt")
  [[ -n "$jax_version" ]] || die "no jax== pin in $repo_root/requirements.txt; pass --jax-version"
fi

gcloud_location=(--zone="$zone")
if [[ -n "$project" ]]; then gcloud_location+=(--project="$project"); fi
remote_dir=lion-jax          # relative to the home directory on every worker
remote_venv=lion-venv
remote_log=lion-run.log
libtpu_links=https://storage.googleapis.com/jax-releases/libtpu_releases.html

readable_quote() {  # one argument as a shell word: bare when safe, else in single quotes
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@%+,~-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Runs (or with --dry-run prints) a command, echoed as "+ command" (to stderr when run).
cmd() {
  local line="+" arg
  for arg in "$@"; do line+=" $(readable_quote "$arg")"; done
  if $dry_run; then
    printf '%s\n' "$line"
  else
    printf '%s\n' "$line" >&2
    "$@"
  fi
}

# Runs a shell command on every worker (or on --worker=$2 when given).
on_workers() {
  local command=$1 worker=${2:-all}
  cmd gcloud compute tpus tpu-vm ssh "$tpu" "${gcloud_location[@]}" --worker="$worker" --command="$command"
}

quote_args() {  # the arguments, shell-quoted for the remote shell
  local out="" arg
  for arg in "$@"; do out+=" $(printf '%q' "$arg")"; done
  printf '%s' "$out"
}

step_create() {
  local spot_flag=()
  if $spot; then spot_flag=(--spot); fi
  cmd gcloud compute tpus tpu-vm create "$tpu" "${gcloud_location[@]}" \
    --accelerator-type="$accelerator_type" --version="$runtime_version" "${spot_flag[@]}"
}

step_copy() {
  if [[ -n "$repo_url" ]]; then
    on_workers "set -e; rm -rf ~/$remote_dir; git clone --quiet --no-checkout$(quote_args "$repo_url") ~/$remote_dir; \
cd ~/$remote_dir; git checkout --quiet$(quote_args "$repo_ref"); git log -1 --oneline"
    return
  fi
  local tarball="${TMPDIR:-/tmp}/lion-jax-$$.tar.gz"
  if ! $dry_run && [[ -n "$(git -C "$repo_root" status --porcelain --untracked-files=no)" ]]; then
    echo "tpu_vm.sh: warning: uncommitted changes are not copied (git archive HEAD)" >&2
  fi
  cmd git -C "$repo_root" archive --format=tar.gz --output="$tarball" HEAD
  cmd gcloud compute tpus tpu-vm scp "$tarball" "$tpu:$remote_dir.tar.gz" "${gcloud_location[@]}" --worker=all
  if ! $dry_run; then rm -f "$tarball"; fi
  on_workers "set -e; rm -rf ~/$remote_dir; mkdir -p ~/$remote_dir; tar -xzf ~/$remote_dir.tar.gz -C ~/$remote_dir; rm ~/$remote_dir.tar.gz"
}

step_install() {
  local python_pkg=${remote_python##*/} jax_spec
  if [[ -n "$jax_version" ]]; then
    jax_spec="jax[tpu]==$jax_version"
  else  # cloned code: the pin in its own requirements.txt
    jax_spec="jax[tpu]==\$(sed -n 's/^jax==\\([^[:space:]#]*\\).*/\\1/p' requirements.txt)"
  fi
  on_workers "set -e; cd ~/$remote_dir; \
if ! command -v $python_pkg >/dev/null; then sudo apt-get update -qq; sudo apt-get install -y -qq $python_pkg $python_pkg-venv; fi; \
$remote_python -m venv ~/$remote_venv; \
~/$remote_venv/bin/pip install --quiet --upgrade pip; \
~/$remote_venv/bin/pip install --quiet -e '.[gcs]'; \
~/$remote_venv/bin/pip install --quiet \"$jax_spec\" -f $libtpu_links; \
~/$remote_venv/bin/python -c 'import jax; print(jax.__version__, jax.device_count(), jax.local_device_count())'"
}

step_run() {
  local python_cmd
  python_cmd="cd ~/$remote_dir && JAX_COORDINATOR_PORT=$port ~/$remote_venv/bin/python -m lion_jax.main$(quote_args "${main_args[@]}" --config.distributed=True)"
  if $detach; then
    on_workers "setsid nohup bash -c $(printf '%q' "$python_cmd") > ~/$remote_log 2>&1 < /dev/null & echo \"started, log: ~/$remote_log\""
  else
    on_workers "set -o pipefail; $python_cmd 2>&1 | tee ~/$remote_log"
  fi
}

step_logs() { on_workers "tail -n 100 -F ~/$remote_log" "$log_worker"; }

step_delete() { cmd gcloud compute tpus tpu-vm delete "$tpu" "${gcloud_location[@]}" --quiet; }

delete_at_exit() {
  local rc=$?
  echo "tpu_vm.sh: deleting $tpu (pass --keep to keep it)" >&2
  step_delete || echo "tpu_vm.sh: deleting $tpu failed; delete it by hand" >&2
  exit "$rc"
}

for step in "${steps[@]}"; do
  case "$step" in
    all)
      step_create
      if ! $keep; then trap delete_at_exit EXIT; fi
      step_copy
      step_install
      step_run
      ;;
    *) "step_$step" ;;
  esac
done
