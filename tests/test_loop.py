"""End-to-end runs of the continual loop on a tiny synthetic backbone and task stream."""

import json

import jax
import numpy as np
import pytest

from ctr_jax import drift
from ctr_jax.checkpoint import TaskCheckpointer
from ctr_jax.config import ConfigError, load_config
from ctr_jax.data.custom import load_custom
from ctr_jax.data.synthetic import write_synthetic_tasks, write_tiny_backbone
from ctr_jax.metrics import read_results
from ctr_jax.tracking import read_metrics
from ctr_jax.training import loop, trained
from tests.helpers import count_compiles
from tests.test_drift import check_drift
from tests.test_eval_gates import check_gates
from tests.test_transfer import check_report

pytestmark = pytest.mark.entry


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("world")
    backbone = write_tiny_backbone(base / "backbone")
    write_synthetic_tasks(base / "tasks", num_tasks=2, sizes=(24, 8, 8))
    return base, backbone


def _cfg(world, name, *extra):
    base, backbone = world
    return load_config(
        None,
        [
            f"name={name}",
            f"runs_dir={base / 'runs'}",
            f"data.root={base / 'tasks'}",
            "data.benchmark=custom",
            f"model.backbone={backbone}",
            "model.tsm_width=16",
            "model.capsule_hidden=8",
            "model.cnn_filters=4",
            "train.epochs=2",
            "train.batch_size=8",
            "train.eval_batch_size=8",
            "train.lr=0.001",
            "train.buckets=[16]",
            *extra,
        ],
    )


@pytest.fixture(autouse=True)
def _no_env_data_root(monkeypatch):
    monkeypatch.delenv("CTR_JAX_DATA_ROOT", raising=False)  # the config's data.root must win


@pytest.fixture(scope="module")
def full_run_and_compiles(world):
    """The 2-task run, and the lowerings of its train step."""
    import os

    saved = os.environ.pop("CTR_JAX_DATA_ROOT", None)
    try:
        with count_compiles("train_step") as compiles:
            res = loop.run(_cfg(world, "full"))
        return res, compiles
    finally:
        if saved is not None:
            os.environ["CTR_JAX_DATA_ROOT"] = saved


@pytest.fixture(scope="module")
def full_run(full_run_and_compiles):
    return full_run_and_compiles[0]


def test_the_train_step_compiles_once(full_run_and_compiles):
    # 2 tasks x 2 epochs, every batch in the one bucket: one executable. A fresh optimizer state
    # or mask made outside the mesh (sharding {} where the step returns a committed one) would
    # compile the step again at the first step of each task, and again at its second.
    _, compiles = full_run_and_compiles
    assert len(compiles) == 1, "\n\n".join(compiles)


def test_run_writes_the_results_contract(full_run, world):
    res = full_run
    assert res.tasks == ["synthetic0", "synthetic1"]
    assert res.acc.shape == (2, 2) and np.isnan(res.acc[0, 1]) and not np.isnan(res.acc[1, 0])
    out = json.loads((res.run_dir / "results.json").read_text())
    for key in ("method", "benchmark", "order", "seed", "backbone", "tasks", "acc", "mf1"):
        assert key in out
    assert out["acc"][0][1] is None and 0.0 <= out["acc"][1][0] <= 1.0
    assert set(out["summary"]) >= {"acc", "mf1", "forgetting", "bwt"}
    assert out["pooling"] == "pooler"  # the tiny backbone declares no pooling of its own
    np.testing.assert_allclose(out["summary"]["acc"], np.mean(res.acc[1]))
    assert (res.run_dir / "acc_matrix.csv").is_file() and (res.run_dir / "mf1_matrix.csv").is_file()
    records = [
        json.loads(line) for line in (res.run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    assert sum(r["kind"] == "epoch" for r in records) == 4  # 2 tasks x 2 epochs
    tests = [r for r in records if r["kind"] == "test"]
    assert [(r["task"], r["eval_task"]) for r in tests] == [(0, 0), (1, 0), (1, 1)]
    for r in tests:  # a one-class predictor of a 2-class task has MF1 <= 1/2
        assert r["one_class"] is None or (r["one_class"] in (0, 1) and r["mf1"] <= 0.5)
    ends = [r for r in records if r["kind"] == "task_end"]
    assert [r["task"] for r in ends] == [0, 1]
    assert all(r["seconds"] > 0 and r["peak_rss_mb"] > 100 for r in ends)  # jax alone is more
    assert ends[0]["peak_rss_mb"] <= ends[1]["peak_rss_mb"]  # a peak never falls
    assert all(r["device_peak_mb"] is None for r in ends)  # the CPU allocator reports none
    # Both tasks have the same training work, so the time left after the first is its own time.
    assert ends[0]["seconds_left"] == pytest.approx(ends[0]["seconds"], abs=0.06)
    assert ends[1]["seconds_left"] == 0.0
    gates = [r for r in records if r["kind"] == "gates"]  # CTR is HAT-gated: one per task
    assert [r["task"] for r in gates] == [0, 1]
    assert all(abs(r["open"] + r["closed"] + r["mid"] - 1.0) < 1e-6 for r in gates)
    # The masks accumulate by max: what the tasks hold only grows, and covers each task's own.
    assert gates[1]["held"] >= gates[0]["held"] >= gates[0]["open"]
    assert gates[1]["free"] <= gates[0]["free"] <= gates[0]["closed"]
    assert all(abs(r["held"] + r["held_in_part"] + r["free"] - 1.0) < 1e-6 for r in gates)
    assert read_results(res.run_dir)["tasks"] == res.tasks
    # Each task's test examples per class, counted here from the task files themselves.
    base, _ = world
    for task, support in zip(
        load_custom(base / "tasks", res.tasks), out["test_support"], strict=True
    ):
        counts = np.bincount([ex.label for ex in task.test], minlength=task.num_classes)
        assert support == dict(zip(task.labels, counts.tolist(), strict=True))
    # Only trainable state is checkpointed: nothing the size of the frozen encoder's embeddings.
    names = [p.name for p in (res.checkpoint_dir).rglob("*")]
    assert not any("word" in n or "query" in n for n in names)


def test_transfer_report_of_the_run(full_run, tmp_path):
    check_report(full_run.run_dir, tmp_path)  # tests/test_transfer.py


def test_eval_gates_of_the_run(full_run, tmp_path):
    check_gates(full_run.run_dir, tmp_path)  # tests/test_eval_gates.py


def test_drift_report_of_the_run(full_run, tmp_path):
    check_drift(full_run.run_dir, tmp_path)  # tests/test_drift.py


def test_resume_after_interruption_gives_identical_matrices(world, full_run, monkeypatch):
    real = loop._learn_phase

    def crash_on_second_task(ctx, phase, *args, **kwargs):
        if phase[-1] == 1:
            raise KeyboardInterrupt
        return real(ctx, phase, *args, **kwargs)

    closed = []
    for name in ("MetricWriter", "TaskCheckpointer", "PhaseCheckpointer"):
        cls = getattr(loop, name)
        recording = type(
            name, (cls,), {"close": lambda self, c=cls: closed.append(c) or c.close(self)}
        )
        monkeypatch.setattr(loop, name, recording)
    monkeypatch.setattr(loop, "_learn_phase", crash_on_second_task)
    with pytest.raises(KeyboardInterrupt):
        loop.run(_cfg(world, "resumed"))
    # what the run opened is closed by the interruption too (no file or orbax thread leaks)
    assert sorted(c.__name__ for c in closed) == [
        "MetricWriter",
        "PhaseCheckpointer",
        "TaskCheckpointer",
    ]
    monkeypatch.setattr(loop, "_learn_phase", real)
    with count_compiles("train_step") as compiles:
        res = loop.run(_cfg(world, "resumed"))
    assert res.resumed_from == 0
    assert len(compiles) == 1, "\n\n".join(compiles)  # restored state is committed too
    np.testing.assert_array_equal(res.acc, full_run.acc)
    np.testing.assert_array_equal(res.mf1, full_run.mf1)


def test_a_crash_mid_task_goes_on_from_the_last_saved_epoch(world, full_run, monkeypatch, caplog):
    """With train.epoch_checkpoint_s=0 the state after each epoch is saved; a crash in the
    second task's second epoch, then a rerun, trains that epoch alone and ends where the run
    that never stopped (which saved nothing) ended, bit for bit."""
    real = loop._dev_scores
    calls = []

    def crash_in_the_second_epoch_of_task_2(ctx, trainable, encoded, phase):
        calls.append(phase[-1])
        if calls.count(1) == 2:
            raise KeyboardInterrupt
        return real(ctx, trainable, encoded, phase)

    cfg = _cfg(world, "mid_task", "train.epoch_checkpoint_s=0")
    monkeypatch.setattr(loop, "_dev_scores", crash_in_the_second_epoch_of_task_2)
    with pytest.raises(KeyboardInterrupt):
        loop.run(cfg)
    monkeypatch.setattr(loop, "_dev_scores", real)
    saved = TaskCheckpointer(cfg.run_dir / "task_in_progress")
    assert saved.all_tasks() == [1]  # one epoch of task 2 finished (task 1's state is cleared)
    assert saved.restore_meta(1)["task"] == 1
    saved.close()
    with count_compiles("train_step") as compiles, caplog.at_level("INFO"):
        res = loop.run(cfg)
    assert res.resumed_from == 0
    assert "going on after epoch 1/2" in caplog.text
    assert len(compiles) == 1, "\n\n".join(compiles)  # the restored state is committed too
    np.testing.assert_array_equal(res.acc, full_run.acc)
    np.testing.assert_array_equal(res.mf1, full_run.mf1)
    assert not (cfg.run_dir / "task_in_progress").exists()  # cleared, then removed at the end
    records = [r for r in read_metrics(res.run_dir) if r["kind"] == "epoch"]
    assert [(r["task"], r["epoch"]) for r in records] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    full = [r for r in read_metrics(full_run.run_dir) if r["kind"] == "epoch"]
    assert [r["dev_loss"] for r in records] == [r["dev_loss"] for r in full]  # each trained once


def test_a_finished_run_resumes_to_the_same_result(world, full_run):
    res = loop.run(_cfg(world, "full"))
    assert res.resumed_from == 1
    np.testing.assert_array_equal(res.acc, full_run.acc)


def test_padding_and_compilation_keys_do_not_block_a_resume(world, full_run):
    # Buckets, remat and scan unrolling change no result, so they are not part of the fingerprint.
    extra = (
        "train.buckets=[8, 16, 32]",
        "train.eval_max_tokens=16",
        "model.remat=true",
        "model.scan_unroll=2",
    )
    res = loop.run(_cfg(world, "full", *extra))
    assert res.resumed_from == 1
    np.testing.assert_array_equal(res.acc, full_run.acc)


def test_evaluation_in_small_batches_gives_the_same_matrices(world, full_run):
    # 16 tokens per batch: every dev and test batch runs 2 rows at a time instead of 8.
    res = loop.run(_cfg(world, "evalcap", "train.eval_max_tokens=16"))
    np.testing.assert_array_equal(res.acc, full_run.acc)
    np.testing.assert_array_equal(res.mf1, full_run.mf1)


def test_a_run_folder_with_another_config_is_refused(world, full_run):
    with pytest.raises(ConfigError, match="different config.*train.epochs"):
        loop.run(_cfg(world, "full", "train.epochs=3"))


def test_freeze_layernorms_keeps_a_runs_layernorms_pretrained(world):
    """train.freeze_layernorms reaches the step: a finished HAT run's LayerNorms are the
    backbone's, bit for bit, while its plugins learned (the rule itself: tests/test_step.py)."""
    cfg = _cfg(
        world, "frozen_ln", "method=hat", "train.freeze_layernorms=true", "train.epochs=1",
        "train.keep_checkpoints=1",
    )  # fmt: skip
    loop.run(cfg)
    with TaskCheckpointer(cfg.run_dir / "checkpoints") as ckpt:
        assert ckpt.all_tasks() == [1]  # train.keep_checkpoints=1: the newest only
    run = trained.load_trained(cfg.run_dir)
    fresh = drift.start_state(run)  # the pretrained LayerNorms, the plugins' initial values

    def same(part):
        pairs = zip(jax.tree.leaves(run.trainable[part]), jax.tree.leaves(fresh[part]), strict=True)
        return [np.array_equal(a, b) for a, b in pairs]

    assert same("encoder") and all(same("encoder"))  # the layers' LayerNorms, untouched
    assert not all(same("plugins"))
    since = drift.change_norms(fresh, run.trainable)  # as the drift report's since-the-start
    assert since["layernorms"] == 0.0 and since["tsm"] > 0.0


@pytest.mark.parametrize("bad", ["0", "-1"])
def test_keep_checkpoints_below_one_is_refused_by_name(world, bad):
    with pytest.raises(ConfigError, match="train.keep_checkpoints"):
        loop.run(_cfg(world, f"keep{bad}", f"train.keep_checkpoints={bad}"))


def _records(run_dir, kind):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def _expected_selection(epochs, by):
    """The epoch model selection must keep, by the rule written out here (not the loop's)."""
    if by == "loss":
        best = min(r["dev_loss"] for r in epochs)
        return next(r["epoch"] for r in epochs if r["dev_loss"] == best)
    top = max(r["dev_acc"] for r in epochs)
    tied = [r for r in epochs if r["dev_acc"] == top]
    low = min(r["dev_loss"] for r in tied)
    return next(r["epoch"] for r in tied if r["dev_loss"] == low)


def test_selection_key_orders_epochs_by_the_chosen_score():
    # (dev loss, dev acc) per epoch: the loss is lowest at epoch 0, the accuracy highest at
    # epochs 1 and 2, where epoch 2 has the lower loss.
    scores = [(0.60, 0.55), (0.70, 0.70), (0.65, 0.70), (0.90, 0.60)]

    def kept(by):
        keys = [loop.selection_key(by, loss, acc) for loss, acc in scores]
        return min(range(len(keys)), key=lambda i: (keys[i], i))

    assert kept("loss") == 0 and kept("acc") == 2
    with pytest.raises(ValueError, match="train.select_by"):
        loop.selection_key("f1", 0.5, 0.5)


def test_the_run_records_the_epoch_it_kept_by_dev_loss(full_run):
    epochs, select = _records(full_run.run_dir, "epoch"), _records(full_run.run_dir, "select")
    assert [r["task"] for r in select] == [0, 1]
    for s in select:
        assert s["by"] == "loss"
        assert s["epoch"] == _expected_selection(
            [r for r in epochs if r["task"] == s["task"]], "loss"
        )


def _weight_sum(tree) -> float:
    return sum(float(np.sum(np.asarray(x, np.float64))) for x in jax.tree.leaves(tree))


def test_select_by_acc_keeps_the_epoch_of_the_highest_dev_accuracy(world, monkeypatch):
    """The loop keeps, and checkpoints, the weights of the epoch the rule picks. The dev scores
    are scripted so that the two rules disagree (the lowest loss at epoch 0, the highest
    accuracy at epochs 1 and 2, epoch 2 with the lower loss); each epoch's weights are summed
    as they are scored, to tell which epoch's weights the run kept."""
    scripted = [(0.60, 0.50), (0.70, 0.75), (0.65, 0.75), (0.90, 0.625)]
    sums = []

    def scripted_dev_scores(ctx, trainable, encoded, phase):
        sums.append(_weight_sum(trainable))
        return scripted[len(sums) - 1]

    monkeypatch.setattr(loop, "_dev_scores", scripted_dev_scores)
    cfg = _cfg(world, "select_acc", "method=ncl", "train.select_by=acc", "train.epochs=4",
               "data.num_tasks=1")  # fmt: skip
    loop.run(cfg)
    epochs, select = _records(cfg.run_dir, "epoch"), _records(cfg.run_dir, "select")
    assert len(epochs) == 4 and len(select) == 1 and select[0]["by"] == "acc"
    assert select[0]["epoch"] == _expected_selection(epochs, "acc") == 2
    assert (select[0]["dev_loss"], select[0]["dev_acc"]) == scripted[2]
    assert len(set(sums)) == 4  # every epoch moved the weights
    assert _weight_sum(trained.load_trained(cfg.run_dir).trainable) == sums[2]


def test_an_unknown_selection_rule_is_refused_by_name(world):
    with pytest.raises(ConfigError, match="train.select_by"):
        _cfg(world, "select_bad", "train.select_by=f1")


def test_a_task_whose_dev_loss_is_never_a_number_stops_the_run_by_name(world, monkeypatch):
    monkeypatch.setattr(loop, "_dev_scores", lambda *_: (float("nan"), 0.5))
    cfg = _cfg(world, "select_nan", "method=ncl", "train.epochs=1", "data.num_tasks=1")
    with pytest.raises(FloatingPointError, match="synthetic0: the dev loss was not a number"):
        loop.run(cfg)


def test_phase_work_by_hand():
    from types import SimpleNamespace

    cfg = load_config(None, ["data.benchmark=asc", "train.buckets=[16,32,64]"])
    tasks = [
        SimpleNamespace(name="XuSemEval14_laptop"),
        SimpleNamespace(name="Bing3domains_Router"),
    ]
    lengths = [np.array([3, 16, 17, 40]), np.array([64, 1])]  # buckets 16 16 32 64; 64 16
    encoded = [{"train": SimpleNamespace(lengths=n)} for n in lengths]
    assert loop.phase_work(cfg, tasks, encoded, [0]) == 10 * (16 + 16 + 32 + 64)  # SemEval: 10
    assert loop.phase_work(cfg, tasks, encoded, [1]) == 30 * (64 + 16)  # Bing: 30 epochs
    assert loop.phase_work(cfg, tasks, encoded, [0, 1]) == 30 * (128 + 80)  # MTL: the longest
