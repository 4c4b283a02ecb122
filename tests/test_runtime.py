"""Process settings applied before JAX starts (ctr_jax/runtime.py)."""

from __future__ import annotations

import os
import subprocess
import sys

from ctr_jax.runtime import DEFAULT_XLA_FLAGS, _jaxlib_minor, apply_xla_defaults

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
