#!/usr/bin/env bash
#SBATCH --job-name=lion-jax
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --output=lion-jax-%j.out
#SBATCH --signal=TERM@120
#
# Multi-node GPU training under SLURM: one process per GPU (default) or one per node.
#
# Usage (from the repository root, with the project's venv activated or PYTHON set):
#   sbatch [sbatch options] launch/slurm_gpu.sh [lion_jax.main args...]
#   bash launch/slurm_gpu.sh --dry-run [lion_jax.main args...]   # print the srun command, run nothing
#   bash launch/slurm_gpu.sh --help
#
#   sbatch --nodes=4 --time=48:00:00 launch/slurm_gpu.sh \
#       --config=configs/stage1.py --workdir=/shared/lion/run1
#   LION_PROCESS_PER=host sbatch --ntasks-per-node=1 --cpus-per-task=64 launch/slurm_gpu.sh ...
#
# The #SBATCH lines above are defaults: options given to sbatch override them. The launcher options
# (--dry-run, --help) come first; everything else goes to lion_jax.main, followed by
# --config.distributed=True. The workdir must be on storage every node sees (or gs://).
#
# Preemption: SLURM sends SIGTERM 120 s before the time limit (--signal above) and on scancel or
# preemption; every process then saves a checkpoint at a step they agree on and exits 0. Re-launch
# (sbatch the same command again, or submit with --requeue) and it resumes from that checkpoint, on
# any number of nodes (launch/README.md, "Preemption and re-launching").
#
# Environment (sbatch passes the submitting shell's environment to the job):
#   PYTHON            interpreter (default: python)
#   LION_PROCESS_PER  gpu (default): srun --ntasks-per-node=GPUS_PER_NODE, each task sees one GPU
#                     (CUDA_VISIBLE_DEVICES picked by SLURM_LOCALID); host: one task per node
#                     using all of the node's GPUs
#   GPUS_PER_NODE     default: SLURM_GPUS_PER_NODE (from --gpus-per-node), else 8
#   LION_PORT         coordinator port on the first node (default: 12355)
#   LION_REPO         directory to run in (default: the directory sbatch was called from)
#
# Every task gets LION_COORDINATOR=<first node of the job>:LION_PORT, LION_NUM_PROCESSES=$SLURM_NTASKS
# and LION_PROCESS_ID=$SLURM_PROCID, which lion_jax.main passes to jax.distributed.initialize(). Each
# task also gets JAX_LOCAL_DEVICE_IDS: without it jax would still auto-detect SLURM for the device
# list and restrict every process to GPU number SLURM_LOCALID (wrong after the CUDA_VISIBLE_DEVICES
# remapping, and only GPU 0 in per-host mode).
set -euo pipefail

usage() { sed -n '10,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

dry_run=false
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dry-run) dry_run=true; shift ;;
    --) shift; break ;;
    *) break ;;
  esac
done

sbatch_default() {  # the value of an #SBATCH --NAME=VALUE header of this script
  sed -n "s/^#SBATCH --$1=//p" "${BASH_SOURCE[0]}" | head -n 1
}

if [[ -z "${SLURM_JOB_ID:-}" ]] && ! $dry_run; then
  echo "slurm_gpu.sh: not inside a SLURM job: submit it with sbatch (or use --dry-run)" >&2
  exit 2
fi

process_per=${LION_PROCESS_PER:-gpu}
gpus_per_node=${GPUS_PER_NODE:-${SLURM_GPUS_PER_NODE:-}}
if [[ -z "$gpus_per_node" ]]; then
  if [[ -n "${SLURM_JOB_ID:-}" ]]; then gpus_per_node=8; else gpus_per_node=$(sbatch_default gpus-per-node); fi
fi
gpus_per_node=${gpus_per_node##*:}  # --gpus-per-node=a100:8 -> 8
num_nodes=${SLURM_JOB_NUM_NODES:-$(sbatch_default nodes)}
port=${LION_PORT:-12355}
case "$process_per" in
  gpu) tasks_per_node=$gpus_per_node ;;
  host) tasks_per_node=1 ;;
  *) echo "slurm_gpu.sh: LION_PROCESS_PER must be gpu or host, got '$process_per'" >&2; exit 2 ;;
esac

if [[ -n "${SLURM_JOB_NODELIST:-}" ]] && command -v scontrol >/dev/null; then
  mapfile -t hosts < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
  coordinator_host=${hosts[0]}
else  # --dry-run outside SLURM
  coordinator_host=FIRST_NODE
fi
export LION_COORDINATOR="$coordinator_host:$port" LION_PROCESS_PER="$process_per" GPUS_PER_NODE="$gpus_per_node"

# Run by every task: rank variables from SLURM, then this task's GPUs.
# shellcheck disable=SC2016  # expanded by the task's shell, not here
task_script='export LION_PROCESS_ID=$SLURM_PROCID LION_NUM_PROCESSES=$SLURM_NTASKS; '\
'IFS=, read -ra gpus <<<"${CUDA_VISIBLE_DEVICES:-$(seq -s, 0 $((GPUS_PER_NODE - 1)))}"; '\
'if [ "$LION_PROCESS_PER" = host ]; then export JAX_LOCAL_DEVICE_IDS=$(seq -s, 0 $((${#gpus[@]} - 1))); '\
'elif [ "${#gpus[@]}" -gt 1 ]; then export CUDA_VISIBLE_DEVICES=${gpus[$SLURM_LOCALID]:?fewer GPUs than tasks} JAX_LOCAL_DEVICE_IDS=0; '\
'else export CUDA_VISIBLE_DEVICES=${gpus[0]} JAX_LOCAL_DEVICE_IDS=0; fi; '\
'exec "$@"'

srun_cmd=(srun --nodes="$num_nodes" --ntasks-per-node="$tasks_per_node" --kill-on-bad-exit=1
          --chdir="${LION_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}")
if [[ -n "${SLURM_CPUS_PER_TASK:-}" ]]; then srun_cmd+=(--cpus-per-task="$SLURM_CPUS_PER_TASK"); fi
srun_cmd+=(bash -c "$task_script" lion-task
           "${PYTHON:-python}" -m lion_jax.main "$@" --config.distributed=True)

echo "slurm_gpu.sh: $num_nodes nodes x $tasks_per_node tasks ($process_per mode), coordinator $LION_COORDINATOR" >&2
if $dry_run; then
  line="+ export LION_COORDINATOR=$LION_COORDINATOR LION_PROCESS_PER=$process_per GPUS_PER_NODE=$gpus_per_node"
  printf '%s\n+' "$line"
  for arg in "${srun_cmd[@]}"; do  # one shell word each: bare when safe, else in single quotes
    if [[ "$arg" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then printf ' %s' "$arg"; else printf " '%s'" "${arg//\'/\'\\\'\'}"; fi
  done
  printf '\n'
  exit 0
fi
exec "${srun_cmd[@]}"
