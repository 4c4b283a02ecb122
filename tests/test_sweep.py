"""Sweeps: config expansion, and a tiny sweep through run.py that resumes."""

import json

import pytest

import run
from ctr_jax.config import ConfigError, load_config
from ctr_jax.data.synthetic import write_synthetic_tasks, write_tiny_backbone
from ctr_jax.sweep import expand


def test_expand_names_orders_and_seeds():
    cfg = load_config("configs/asc_ncl.yaml")
    assert expand(cfg, None, None) == [cfg]
    runs = expand(cfg, [0, 3], [1, 2])
    assert [c.name for c in runs] == ["asc_ncl_o0_s1", "asc_ncl_o0_s2", "asc_ncl_o3_s1",
                                      "asc_ncl_o3_s2"]  # fmt: skip
    assert [(c.data.order, c.seed) for c in runs] == [(0, 1), (0, 2), (3, 1), (3, 2)]
    assert all(c.method == "ncl" for c in runs)


@pytest.mark.parametrize(
    "orders,seeds,match", [([5], None, "not in 0..4"), ([1, 1], None, "repeated")]
)
def test_expand_rejects_bad_sweeps(orders, seeds, match):
    with pytest.raises(ConfigError, match=match):
        expand(load_config("configs/asc_ctr.yaml"), orders, seeds)


@pytest.mark.entry
def test_sweep_over_seeds_runs_and_resumes(tmp_path, monkeypatch):
    monkeypatch.delenv("CTR_JAX_DATA_ROOT", raising=False)
    backbone = write_tiny_backbone(tmp_path / "backbone")
    write_synthetic_tasks(tmp_path / "tasks", num_tasks=2, sizes=(8, 8, 8))
    argv = [
        "--set", "name=sw", "--set", f"runs_dir={tmp_path / 'runs'}",
        "--set", f"data.root={tmp_path / 'tasks'}", "--set", "data.benchmark=custom",
        "--set", f"model.backbone={backbone}", "--set", "model.tsm_width=8",
        "--set", "train.epochs=1", "--set", "train.batch_size=8", "--set", "train.buckets=[16]",
        "--set", "method=hat", "--set", "log_level=WARNING", "--seeds", "0", "1",
    ]  # fmt: skip
    assert run.main(argv) == 0
    results = {s: json.loads((tmp_path / "runs" / f"sw_o0_s{s}" / "results.json").read_text())
               for s in (0, 1)}  # fmt: skip
    assert [results[s]["seed"] for s in (0, 1)] == [0, 1]
    assert all(r["summary"]["tasks_learned"] == 2 for r in results.values())
    stamp = (tmp_path / "runs" / "sw_o0_s1" / "metrics.jsonl").stat().st_size
    assert run.main(argv) == 0  # both finished: the rerun only re-reads them
    assert (tmp_path / "runs" / "sw_o0_s1" / "metrics.jsonl").stat().st_size == stamp
