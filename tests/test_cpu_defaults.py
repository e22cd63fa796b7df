"""The XLA flags lion_jax adds for CPU-only processes (lion_jax/__init__.py)."""

import os
import subprocess
import sys

from lion_jax import _cpu_backend_defaults, simulate_cpu_devices

NO_EMITTERS = "--xla_cpu_use_fusion_emitters=false"
NO_CONCURRENT_SCHEDULER = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def test_cpu_only_processes_get_the_defaults_and_others_nothing():
  assert _cpu_backend_defaults("", "cpu") == NO_EMITTERS
  assert _cpu_backend_defaults("", "") == ""  # the platform may be a GPU or TPU: XLA aborts on unknown flags
  assert _cpu_backend_defaults("--foo=1", "tpu") == "--foo=1"
  devices = "--xla_force_host_platform_device_count=8"
  assert _cpu_backend_defaults(devices, "").split() == [devices, NO_EMITTERS, NO_CONCURRENT_SCHEDULER]
  assert (
    _cpu_backend_defaults("--xla_force_host_platform_device_count=1", "") == "--xla_force_host_platform_device_count=1"
  )


def test_a_flag_the_user_sets_is_kept_as_set():
  mine = "--xla_cpu_use_fusion_emitters=true --xla_cpu_enable_concurrency_optimized_scheduler=true"
  assert _cpu_backend_defaults(f"--xla_force_host_platform_device_count=2 {mine}", "cpu").endswith(mine)
  assert _cpu_backend_defaults(mine, "CPU") == mine


def test_the_planner_gets_the_defaults_for_the_devices_it_simulates():
  # The planner chooses its device count after the package's import applied the defaults.
  code = "import os, sys; sys.argv = ['plan', '--devices', '4']; import lion_jax.plan; print(os.environ['XLA_FLAGS'])"
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
  flags = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
  assert flags.split() == ["--xla_force_host_platform_device_count=4", NO_EMITTERS, NO_CONCURRENT_SCHEDULER]


def test_simulated_devices_replace_the_device_count_and_get_the_defaults(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --foo=1")
  monkeypatch.delenv("JAX_PLATFORMS", raising=False)
  simulate_cpu_devices(4)
  assert os.environ["XLA_FLAGS"].split() == [
    "--foo=1",
    "--xla_force_host_platform_device_count=4",
    NO_EMITTERS,
    NO_CONCURRENT_SCHEDULER,
  ]
  assert os.environ["JAX_PLATFORMS"] == "cpu"
