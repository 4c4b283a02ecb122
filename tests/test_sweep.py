"""Sweeps: config expansion, tiny sweeps through run.py (sequential, resumed, parallel), and the
parallel launcher's scheduling, failures and Ctrl-C."""

import json
import os
import signal
import sys
import time

import pytest

import run
from ctr_jax import launch
from ctr_jax.config import ConfigError, load_config
from ctr_jax.data.synthetic import write_synthetic_tasks, write_tiny_backbone
from ctr_jax.launch import child_env, summary_line
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


def _tiny_world(tmp_path):
    """A tiny backbone and two synthetic tasks; the run.py arguments of a HAT run on them."""
    backbone = write_tiny_backbone(tmp_path / "backbone")
    write_synthetic_tasks(tmp_path / "tasks", num_tasks=2, sizes=(8, 8, 8))
    return [
        "--set", f"data.root={tmp_path / 'tasks'}", "--set", "data.benchmark=custom",
        "--set", f"model.backbone={backbone}", "--set", "model.tsm_width=8",
        "--set", "train.epochs=1", "--set", "train.batch_size=8", "--set", "train.buckets=[16]",
        "--set", "method=hat", "--set", "log_level=WARNING",
    ]  # fmt: skip


@pytest.mark.entry
def test_parallel_sweep_equals_the_sequential_one(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("CTR_JAX_DATA_ROOT", raising=False)
    common = [*_tiny_world(tmp_path), "--set", "name=sw", "--seeds", "0", "1"]
    seq, par = tmp_path / "seq", tmp_path / "par"
    assert run.main([*common, "--set", f"runs_dir={seq}"]) == 0
    with caplog.at_level("INFO", logger="ctr_jax.sweep"):
        assert run.main([*common, "--set", f"runs_dir={par}", "--jobs", "2"]) == 0
    for s in (0, 1):
        a = json.loads((seq / f"sw_o0_s{s}" / "results.json").read_text())
        b = json.loads((par / f"sw_o0_s{s}" / "results.json").read_text())
        assert b["seed"] == s and b["summary"]["tasks_learned"] == 2
        assert b["acc"] == a["acc"] and b["mf1"] == a["mf1"]  # the same runs, bit for bit
        assert (par / f"sw_o0_s{s}" / "log.txt").exists()  # each child's own log
    assert "2 runs, 2 at a time" in caplog.text
    assert "finished sw_o0_s1" in caplog.text and "2 tasks, Acc" in caplog.text


@pytest.mark.entry
def test_parallel_sweep_reports_failed_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("CTR_JAX_DATA_ROOT", raising=False)
    argv = [
        "--config", "configs/asc_hat.yaml", "configs/asc_ncl.yaml",
        "--set", f"runs_dir={tmp_path}", "--set", f"data.root={tmp_path / 'nowhere'}",
        "--jobs", "2",
    ]  # fmt: skip
    assert run.main(argv) == 1
    err = capsys.readouterr().err
    assert "2 of 2 runs failed: asc_hat, asc_ncl" in err
    for name in ("asc_hat", "asc_ncl"):  # each child's own error, in its log
        assert "nowhere" in (tmp_path / name / "log.txt").read_text()


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--config", "configs/asc_hat.yaml", "configs/asc_hat.yaml"], "both write the run folder"),
        (["--config", "configs/asc_hat.yaml", "--jobs", "0"], "--jobs must be >= 1"),
        (["--config", "configs/asc_hat.yaml", "--seeds", "0", "1", "--jobs", "2",
          "--set", "parallel.distributed=true"], "spans processes"),
    ],
)  # fmt: skip
def test_run_py_rejects_bad_sweeps(argv, match, capsys):
    assert run.main(argv) == 2
    assert match in capsys.readouterr().err


def test_a_run_folder_in_use_is_refused(tmp_path, capsys):
    fcntl = pytest.importorskip("fcntl")
    run_dir = tmp_path / "busy"
    run_dir.mkdir()
    with (run_dir / ".lock").open("a+") as f:
        f.write("4242")
        f.flush()
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another run holds the folder
        argv = ["--config", "configs/asc_hat.yaml", "--set", f"runs_dir={tmp_path}",
                "--set", "name=busy"]  # fmt: skip
        assert run.main(argv) == 2
    err = capsys.readouterr().err
    assert "is in use by another run (pid 4242)" in err
    assert not (run_dir / "config.json").exists()  # refused before touching the folder


def test_children_get_a_share_of_the_gpu_memory():
    assert child_env(3, {})["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.300"
    assert child_env(1, {})["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.750"  # JAX's default
    mine = {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.5", "HOME": "/h"}
    assert child_env(4, mine) == mine  # the user's setting wins


def test_summary_line_reads_results(tmp_path):
    assert summary_line(tmp_path) == "no results"
    summary = {"tasks_learned": 3, "acc": 0.8512, "mf1": 0.8, "forgetting": 0.01234}
    (tmp_path / "results.json").write_text(json.dumps({"summary": summary}))
    assert summary_line(tmp_path) == "3 tasks, Acc 85.12, MF1 80.00, FR 1.23"


def test_ctrl_c_stops_the_running_children_and_starts_no_more(tmp_path, monkeypatch):
    monkeypatch.setattr(launch, "_GRACE_S", 0.2)
    # Each child records its pid in its run folder, then waits for a signal. It restores
    # Python's Ctrl-C handler: a test session started with `&` or nohup ignores SIGINT, and
    # its children would inherit that and sleep their 120 s out, passing the checks below late.
    script = (
        "import os, signal, sys, time; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(120)"
    )
    jobs = [
        launch.Job(f"r{i}", tmp_path / f"r{i}", (str(tmp_path / f"r{i}" / "pid"),))
        for i in range(3)
    ]

    def interrupt(*_):  # Ctrl-C once both running children have started
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    t0 = time.monotonic()
    try:
        signal.setitimer(signal.ITIMER_REAL, 3.0)
        with pytest.raises(KeyboardInterrupt):
            launch.run_jobs(jobs, 2, [sys.executable, "-c", script], poll_s=0.05)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert time.monotonic() - t0 < 30.0  # stopped, not waited for (they sleep 120 s)
    for job in jobs[:2]:
        pid = int((job.run_dir / "pid").read_text())
        with pytest.raises(ProcessLookupError):  # stopped and reaped
            os.kill(pid, 0)
    assert not jobs[2].run_dir.exists()  # the waiting run never started


def test_sigterm_stops_the_running_children_at_once(tmp_path, monkeypatch):
    monkeypatch.setattr(launch, "_GRACE_S", 60.0)  # SIGTERM must not wait for a Ctrl-C grace
    script = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(120)"
    jobs = [
        launch.Job(f"r{i}", tmp_path / f"r{i}", (str(tmp_path / f"r{i}" / "pid"),))
        for i in range(3)
    ]
    before = signal.getsignal(signal.SIGTERM)
    old = signal.signal(signal.SIGALRM, lambda *_: os.kill(os.getpid(), signal.SIGTERM))
    t0 = time.monotonic()
    try:
        signal.setitimer(signal.ITIMER_REAL, 3.0)
        with pytest.raises(launch.Terminated):
            launch.run_jobs(jobs, 2, [sys.executable, "-c", script], poll_s=0.05)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert time.monotonic() - t0 < 30.0
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is put back
    for job in jobs[:2]:
        pid = int((job.run_dir / "pid").read_text())
        with pytest.raises(ProcessLookupError):  # stopped and reaped
            os.kill(pid, 0)
    assert not jobs[2].run_dir.exists()  # the waiting run never started
