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


_PROCESS_SCRIPT = r"""
import json, sys
from pathlib import Path
import numpy as np
from ctr_jax.config import load_config
from ctr_jax.training import loop

# Nothing here may touch jax before loop.run: jax.distributed must connect first.
base, name, extra = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
cfg = load_config(None, [
    f"name={name}", f"runs_dir={base / 'runs'}", f"data.root={base / 'tasks'}",
    "data.benchmark=custom", f"model.backbone={base / 'backbone'}", "model.tsm_width=16",
    "model.capsule_hidden=8", "model.cnn_filters=4", "train.epochs=2", "train.batch_size=8",
    "train.eval_batch_size=8", "train.buckets=[16]", "log_level=WARNING", "method=hat",
    "train.epoch_checkpoint_s=0", *extra,
])
res = loop.run(cfg)
import jax
print("RESULT " + json.dumps({
    "process": jax.process_index(), "processes": jax.process_count(), "devices": jax.device_count(),
    "resumed": res.resumed_from,
    "acc": np.nan_to_num(res.acc, nan=-1).tolist(),
    "leaves": [np.asarray(x).ravel()[:50].tolist() for x in jax.tree.leaves(res.trainable)],
}))
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_processes(tmp_path, name, n):
    """Starts n processes of one run (distributed when n > 1); returns their RESULT dicts."""
    env = dict(os.environ)
    env.pop("CTR_JAX_DATA_ROOT", None)
    env.pop("XLA_FLAGS", None)  # one CPU device per process
    root = Path(__file__).resolve().parent.parent
    extra = []
    if n > 1:
        address = f"127.0.0.1:{_free_port()}"
        extra = ["parallel.distributed=true", f"parallel.coordinator_address={address}",
                 f"parallel.num_processes={n}"]  # fmt: skip
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _PROCESS_SCRIPT,
                str(tmp_path),
                name,
                *extra,
                *([f"parallel.process_id={i}"] if n > 1 else []),
            ],
            env=env,
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(n)
    ]
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=900)
        assert p.returncode == 0, stderr[-3000:]
        line = next(x for x in stdout.splitlines() if x.startswith("RESULT "))
        outs.append(json.loads(line[len("RESULT ") :]))
    return outs


def test_two_processes_match_one(tmp_path):
    """parallel.distributed over 2 processes (gloo on CPU) learns what 1 process learns (HAT:
    the plumbing, not the KSM math, which the 2-device test covers; half the time of CTR); only
    process 0 writes the run folder's files; a rerun of both resumes after the last task. Both
    save the task in progress after its first epoch (train.epoch_checkpoint_s=0) and clear it."""
    from ctr_jax.data.synthetic import write_synthetic_tasks, write_tiny_backbone

    write_tiny_backbone(tmp_path / "backbone")
    write_synthetic_tasks(tmp_path / "tasks", num_tasks=2, sizes=(24, 8, 8))
    (single,) = _run_processes(tmp_path, "single", 1)
    pair = _run_processes(tmp_path, "pair", 2)
    assert sorted(o["process"] for o in pair) == [0, 1]
    assert all(o["processes"] == 2 and o["devices"] == 2 for o in pair)
    for o in pair:
        assert o["acc"] == single["acc"]
        for a, b in zip(single["leaves"], o["leaves"], strict=True):
            assert a == pytest.approx(b, abs=2e-5)
    runs = tmp_path / "runs"
    lines = [(runs / n / "metrics.jsonl").read_text().splitlines() for n in ("single", "pair")]
    assert len(lines[0]) == len(lines[1]) > 0  # one writer, no duplicated records
    assert json.loads((runs / "pair" / "results.json").read_text())["acc"] is not None
    assert not (runs / "pair" / "task_in_progress").exists()  # saved, cleared, then removed
    again = _run_processes(tmp_path, "pair", 2)
    assert [o["resumed"] for o in again] == [1, 1]
    assert all(o["acc"] == single["acc"] for o in again)
