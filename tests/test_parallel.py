"""Data parallelism: a run on 2 (forced) CPU devices equals the 1-device run.

XLA's device count is fixed when jax starts, so the check runs in a fresh interpreter with
``--xla_force_host_platform_device_count=2`` and compares a 1-device and a 2-device run there.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.entry

_SCRIPT = r"""
import json, sys
from pathlib import Path
import jax, numpy as np
from ctr_jax.config import load_config
from ctr_jax.data.synthetic import write_synthetic_tasks, write_tiny_backbone
from ctr_jax.parallel import DataParallel
from ctr_jax.training import loop

base = Path(sys.argv[1])
backbone = write_tiny_backbone(base / "backbone")
write_synthetic_tasks(base / "tasks", num_tasks=2, sizes=(24, 8, 8))
out = {"devices": len(jax.devices())}
for n in (1, 2):
    cfg = load_config(None, [
        f"name=dp{n}", f"runs_dir={base / 'runs'}", f"data.root={base / 'tasks'}",
        "data.benchmark=custom", f"model.backbone={backbone}", "model.tsm_width=16",
        "model.capsule_hidden=8", "model.cnn_filters=4", "train.epochs=2", "train.batch_size=8",
        "train.eval_batch_size=8", "train.buckets=[16]", f"parallel.num_devices={n}",
        "log_level=WARNING",
    ])
    res = loop.run(cfg)
    leaf = res.trainable["plugins"]["w1"][...]
    out[n] = {
        "acc": np.nan_to_num(res.acc, nan=-1).tolist(),
        "mf1": np.nan_to_num(res.mf1, nan=-1).tolist(),
        "leaves": [np.asarray(x).ravel()[:50].tolist() for x in jax.tree.leaves(res.trainable)],
        "w1_devices": len(leaf.sharding.device_set),
    }
dp = DataParallel.create(2)
batch = dp.shard({"x": np.arange(8.0)})
out["batch_shards"] = sorted(s.data.shape[0] for s in batch["x"].addressable_shards)
print("RESULT " + json.dumps(out))
"""


def test_two_cpu_devices_match_one(tmp_path):
    env = dict(os.environ)
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
    env.pop("CTR_JAX_DATA_ROOT", None)
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(tmp_path)],
        env=env, cwd=root, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    out = json.loads(line[len("RESULT ") :])
    assert out["devices"] == 2
    assert out["batch_shards"] == [4, 4]  # the batch really is split over the two devices
    one, two = out["1"], out["2"]
    assert two["w1_devices"] == 2 and one["w1_devices"] == 1
    assert one["acc"] == two["acc"] and one["mf1"] == two["mf1"]
    for a, b in zip(one["leaves"], two["leaves"], strict=True):
        assert a == pytest.approx(b, abs=2e-5)
