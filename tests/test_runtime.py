"""Process settings applied before JAX starts (ctr_jax/runtime.py)."""

from __future__ import annotations

import os
import subprocess
import sys

from ctr_jax.runtime import (
    DEFAULT_XLA_FLAGS,
    DETERMINISTIC_FLAG,
    _jaxlib_minor,
    apply_xla_defaults,
    set_xla_flag,
)

FLAG = "--xla_cpu_use_fusion_emitters"


def test_default_flag_added_for_a_measured_jaxlib():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    added = apply_xla_defaults(env, jaxlib_minor="0.10")
    assert added == [f"{FLAG}=false"]
    assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=2 {FLAG}=false"
    assert apply_xla_defaults(env, jaxlib_minor="0.10") == []  # never twice


def test_user_setting_wins():
    for user in (f"{FLAG}=true", FLAG, f"{FLAG} --xla_dump_to=/tmp/x"):
        env = {"XLA_FLAGS": user}
        assert apply_xla_defaults(env, jaxlib_minor="0.10") == []
        assert env["XLA_FLAGS"] == user


def test_no_flag_for_an_unmeasured_jaxlib():
    # XLA aborts on a flag it does not know, so other versions get nothing.
    env: dict[str, str] = {}
    assert apply_xla_defaults(env, jaxlib_minor="0.99") == []
    assert "XLA_FLAGS" not in env


def test_installed_jaxlib_accepts_the_default_flags():
    """A fresh process with the defaults (and nothing else) starts a CPU backend and computes."""
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    code = (
        "from ctr_jax.runtime import apply_xla_defaults; added = apply_xla_defaults(); "
        "import jax.numpy as jnp; print(added, float(jnp.arange(4.0).sum()))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    minor = _jaxlib_minor()
    expected = [f"--{n}={v}" for n, v, versions in DEFAULT_XLA_FLAGS if minor in versions]
    assert proc.stdout.strip() == f"{expected} 6.0"


def test_set_xla_flag_adds_once_and_the_user_wins():
    env = {"XLA_FLAGS": "--xla_dump_to=/tmp/x"}
    assert set_xla_flag("xla_gpu_deterministic_ops", "true", env)
    assert env["XLA_FLAGS"] == "--xla_dump_to=/tmp/x --xla_gpu_deterministic_ops=true"
    assert not set_xla_flag("xla_gpu_deterministic_ops", "true", env)  # never twice
    user = {"XLA_FLAGS": "--xla_gpu_deterministic_ops=false"}
    assert not set_xla_flag("xla_gpu_deterministic_ops", "true", user)
    assert user["XLA_FLAGS"] == "--xla_gpu_deterministic_ops=false"


def test_run_py_sets_the_deterministic_flag_before_jax_starts(tmp_path, monkeypatch):
    import run

    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))  # restored afterwards
    argv = [
        "--config", "configs/asc_hat.yaml", "--set", "train.deterministic=true",
        "--set", f"runs_dir={tmp_path}", "--set", f"data.root={tmp_path / 'nowhere'}",
    ]  # fmt: skip
    assert run.main(argv) == 2  # no data there; the flag was set before that was found
    assert "--xla_gpu_deterministic_ops=true" in os.environ["XLA_FLAGS"]


def test_a_cpu_backend_accepts_the_deterministic_flag():
    """XLA aborts on unknown flags: the GPU determinism flag must not break CPU runs."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--{}={}".format(*DETERMINISTIC_FLAG)
    code = "import jax.numpy as jnp; print(float(jnp.arange(4.0).sum()))"
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "6.0"
