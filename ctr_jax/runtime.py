"""Process settings that must be in place before JAX starts its backends and threads.

``run.py``, the benchmark and the test suite call these first, so all three run the same
XLA configuration. Nothing here imports jax.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
from collections.abc import MutableMapping
from importlib import metadata

# XLA flags ctr-jax adds by default, each with the jaxlib minor versions it was measured on (a
# flag that XLA no longer knows aborts the process, so it is never passed to another version).
# --xla_cpu_use_fusion_emitters=false: XLA:CPU's older loop emitters. CTR at capacity 19, fine
# buckets, 2-core CPU (benchmarks/RESULTS.md, 2026-11-30, A/B/B/A): benchmark peak RSS 4643 ->
# 3885 MB, compile 230 -> 199 s, train and eval throughput unchanged within the machine's noise.
# It only affects the CPU backend.
DEFAULT_XLA_FLAGS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("xla_cpu_use_fusion_emitters", "false", ("0.10",)),
)


def _jaxlib_minor() -> str | None:
    try:
        return ".".join(metadata.version("jaxlib").split(".")[:2])
    except metadata.PackageNotFoundError:
        return None


def apply_xla_defaults(
    environ: MutableMapping[str, str] | None = None, jaxlib_minor: str | None = None
) -> list[str]:
    """Appends ``DEFAULT_XLA_FLAGS`` to ``XLA_FLAGS`` unless the user already sets that flag.

    Must run before the first JAX computation (XLA reads the variable once, when a backend
    starts). ``jaxlib_minor`` defaults to the installed jaxlib's "major.minor". Returns the
    flags it added.
    """
    env = os.environ if environ is None else environ
    minor = _jaxlib_minor() if jaxlib_minor is None else jaxlib_minor
    current = env.get("XLA_FLAGS", "")
    added = [
        f"--{name}={value}"
        for name, value, versions in DEFAULT_XLA_FLAGS
        if minor in versions and not re.search(rf"--{name}(=|\s|$)", current)
    ]
    if added:
        env["XLA_FLAGS"] = " ".join([current, *added]).strip()
    return added


DETERMINISTIC_FLAG = ("xla_gpu_deterministic_ops", "true")


def set_xla_flag(name: str, value: str, environ: MutableMapping[str, str] | None = None) -> bool:
    """Appends --name=value to ``XLA_FLAGS`` unless it sets that flag already (the user's
    setting wins). Returns whether it was added. Must run before JAX starts a backend."""
    env = os.environ if environ is None else environ
    current = env.get("XLA_FLAGS", "")
    if re.search(rf"--{name}(=|\s|$)", current):
        return False
    env["XLA_FLAGS"] = f"{current} --{name}={value}".strip()
    return True


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Caps glibc's malloc arenas (as MALLOC_ARENA_MAX=2 would) unless the user set that.

    Why: XLA's worker threads each get an arena of their own, and memory freed into them is
    hard to hand back. Measured on CTR with every train and eval length compiled (CPU): resident
    memory 1.54 -> 1.40 GB, peak 2.74 -> 2.56 GB. Must run before jax starts its threads; a
    no-op off glibc.
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(-8, arenas)  # -8: M_ARENA_MAX in glibc's malloc.h
