"""The report on hand-made run folders: aggregation by hand, tables, plots, bad input."""

import csv
import json
import math

import numpy as np
import pytest

from ctr_jax import report
from ctr_jax.metrics import write_results

NAN = np.nan


_UNSET = object()


def _run(
    root, name, method, acc, mf1=None, benchmark="asc", order=0, protocol="sequential", seed=0,
    data_seed=_UNSET, test_support=None,
):  # fmt: skip
    """A hand-made run folder; without `data_seed` its results.json is of the kind written
    before "data_seed" was recorded (and without `test_support`, before that was)."""
    acc = np.array(acc, dtype=np.float64)
    extra = {"protocol": protocol, "name": name}
    if data_seed is not _UNSET:
        extra["data_seed"] = data_seed
    if test_support is not None:
        extra["test_support"] = test_support
    write_results(
        root / name, method=method, benchmark=benchmark, order=order, seed=seed, backbone="tiny",
        tasks=[f"t{i}" for i in range(len(acc))], acc=acc,
        mf1=acc - 0.1 if mf1 is None else np.array(mf1), extra=extra,
    )  # fmt: skip


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    # CTR, two orders. Order 0: final row (0.8, 0.9) -> Acc 85, FR = 0.9 - 0.8 = 10 points.
    _run(root, "ctr_o0", "ctr", [[0.9, NAN], [0.8, 0.9]])
    # Order 1: final row (0.7, 0.8) -> Acc 75, FR = 0.7 - 0.7 = 0.
    _run(root, "ctr_o1", "ctr", [[0.7, NAN], [0.7, 0.8]], order=1)
    _run(root, "mtl", "mtl", [[0.95, NAN], [0.95, 0.85]], protocol="joint")
    _run(root, "ncl_half", "ncl", [[0.6, NAN], [NAN, NAN]])  # unfinished
    return root


def test_aggregate_matches_hand_computed_values(runs):
    rows = report.aggregate(report.load_runs(report.find_results([runs])))
    by = {r["method"]: r for r in rows}
    assert set(by) == {"ctr", "mtl"}  # the unfinished NCL run is left out
    ctr = by["ctr"]
    assert ctr["runs"] == 2
    assert ctr["acc_mean"] == pytest.approx(80.0) and ctr["acc_std"] == pytest.approx(
        math.sqrt(50.0)  # sample std of 85 and 75
    )
    assert ctr["mf1_mean"] == pytest.approx(70.0)
    assert ctr["forgetting_mean"] == pytest.approx(5.0)
    assert (ctr["paper_acc"], ctr["paper_mf1"]) == (89.47, 83.62)
    mtl = by["mtl"]
    assert mtl["acc_mean"] == pytest.approx(90.0) and math.isnan(mtl["acc_std"])  # one run
    assert math.isnan(mtl["forgetting_mean"])  # joint training has no forgetting
    assert math.isnan(mtl["drop_mean"])
    # Two tasks: the only later row is the last, so the max drop is the FR (10 and 0).
    assert ctr["drop_mean"] == pytest.approx(5.0)


def test_max_drop_column_sees_a_recovered_collapse(tmp_path):
    # Task 0: 0.9, collapses to 0.3 after task 1, back to 0.9 after task 2; task 1: 0.8 -> 0.8.
    # FR = mean(0, 0) = 0; max drop = mean(0.9 - 0.3, 0.8 - 0.8) = 30 points.
    _run(tmp_path, "ncl", "ncl", [[0.9, NAN, NAN], [0.3, 0.8, NAN], [0.9, 0.8, 0.7]])
    out = tmp_path / "out"
    report.write_report([tmp_path / "ncl"], out, plots=False)
    row = next(csv.DictReader((out / "results.csv").open()))
    assert float(row["forgetting_mean"]) == pytest.approx(0.0)
    assert float(row["drop_mean"]) == pytest.approx(30.0)
    assert (
        "| NCL | 3 of 19 | 1 | 80.00 | 70.00 | 0.00 | 30.00 | 54.03 | 44.81 |"
        in (out / "results.md").read_text()
    )
    assert "rows are over different runs" not in (out / "results.md").read_text()  # one row


def test_report_writes_tables_and_plots(runs, tmp_path):
    out = tmp_path / "out"
    files = report.write_report([runs], out)
    md = (out / "results.md").read_text()
    assert (
        "| CTR | 2 of 19 | 2 | 80.00 ± 7.07 | 70.00 ± 7.07 | 5.00 ± 7.07 | 5.00 ± 7.07 | "
        "89.47 | 83.62 |" in md
    )
    assert "| MTL | 2 of 19 | 1 | 90.00 | 80.00 | - | - | 91.91 | 88.11 |" in md
    assert "ncl_half (ncl, asc): 1 of 2 tasks" in md
    # CTR's mean is over orders 0 and 1, MTL's over order 0: the table says so.
    assert "The rows are over different runs: CTR: orders 0-1, seed 0; MTL: order 0, seed 0." in md
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["method"] for r in rows] == ["ctr", "mtl"] and rows[1]["forgetting_mean"] == ""
    assert [(r["orders"], r["seeds"]) for r in rows] == [("0-1", "0"), ("0", "0")]
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["curve_asc.png", "heatmap_ctr_o0.png", "heatmap_ctr_o1.png",
                    "heatmap_mtl.png", "heatmap_ncl_half.png"]  # fmt: skip
    for name, path in files.items():
        if name.startswith(("heatmap", "curve")):
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_paired_comparison_by_hand(runs, tmp_path):
    # HAT on the same two orders as the CTR runs (seed 0), and one order CTR did not run.
    _run(runs, "hat_o0", "hat", [[0.9, NAN], [0.9, 0.7]])  # Acc 80, MF1 70, FR 0
    _run(runs, "hat_o1", "hat", [[0.8, NAN], [0.6, 0.9]], order=1)  # Acc 75, MF1 65, FR 20
    _run(runs, "hat_o2", "hat", [[0.8, NAN], [0.8, 0.8]], order=2)  # no CTR partner
    _run(runs, "hat_o0_s1", "hat", [[0.8, NAN], [0.8, 0.8]], seed=1)  # nor here
    out = tmp_path / "out"
    report.write_report([runs], out)
    rows = {r["method"]: r for r in csv.DictReader((out / "paired.csv").open())}
    assert set(rows) == {"hat", "mtl"}  # the unfinished NCL run pairs with nothing
    hat = rows["hat"]
    # CTR - HAT: Acc 85-80 = 5 (order 0) and 75-75 = 0 (order 1); MF1 the same (both -10);
    # FR 10-0 = 10 and 0-20 = -20.
    assert hat["pairs"] == "2" and hat["ambiguous"] == "0"
    assert float(hat["d_acc_mean"]) == pytest.approx(2.5)
    assert float(hat["d_acc_std"]) == pytest.approx(math.sqrt(12.5))
    assert float(hat["d_forgetting_mean"]) == pytest.approx(-5.0)
    assert (hat["acc_ahead"], hat["acc_level"], hat["acc_behind"]) == ("1", "1", "0")
    mtl = rows["mtl"]  # order 0 only: CTR 85 against MTL 90; joint training has no FR
    assert mtl["pairs"] == "1" and float(mtl["d_acc_mean"]) == pytest.approx(-5.0)
    assert mtl["d_acc_std"] == "" and mtl["d_forgetting_mean"] == "" and mtl["acc_behind"] == "1"
    md = (out / "results.md").read_text()
    assert "### ASC: CTR against each method, paired" in md
    # p: a t-test of (5, 0) against 0 with one degree of freedom, t = 2.5 / (3.54 / sqrt 2) = 1,
    # where Student's t is the Cauchy distribution: p = 1 - 2 atan(1) / pi = 0.5.
    assert float(hat["p_acc"]) == pytest.approx(0.5) and mtl["p_acc"] == ""  # one pair: no test
    row = (
        "| HAT | 2 of 19 | 2 | 2.50 ± 3.54 | 2.50 ± 3.54 | -5.00 ± 21.21 | 0.50 | 0.50 | "
        "1 / 1 / 0 | 1 / 1 / 0 |"
    )
    assert row in md

    # A second CTR run on order 0, seed 0 makes that pair ambiguous: it is left out, and said.
    _run(runs, "ctr_o0_again", "ctr", [[0.9, NAN], [0.8, 0.9]])
    report.write_report([runs], out)
    hat = {r["method"]: r for r in csv.DictReader((out / "paired.csv").open())}["hat"]
    assert (hat["pairs"], hat["ambiguous"]) == ("1", "1")
    assert "Left out as ambiguous" in (out / "results.md").read_text()

    # Another reference; none at all removes the stale paired.csv.
    report.write_report([runs], out, ref="hat", plots=False)
    assert {r["method"] for r in csv.DictReader((out / "paired.csv").open())} == {"ctr", "mtl"}
    report.write_report([runs], out, ref=None, plots=False)
    assert not (out / "paired.csv").exists() and "paired" not in (out / "results.md").read_text()
    with pytest.raises(report.ReportError, match="--ref 'ctrr' is not a method"):
        report.write_report([runs], out, ref="ctrr")
    assert report.main([str(runs), "--out", str(out), "--no-plots", "--ref", "none"]) == 0


def test_paired_across_a_variant_by_hand(tmp_path):
    """--ref-variant: CTR with ksm_protect=past against HAT, whose runs carry the key's default
    (none), and against CTR's own none; the other --by key (lr) is still held equal."""
    root = tmp_path / "runs"
    made = {  # name: (method, order, ksm_protect or None (not in its config), lr, final acc)
        "ctr_none_o0": ("ctr", 0, "none", 0.001, 0.8),
        "ctr_past_o0": ("ctr", 0, "past", 0.001, 0.9),
        "ctr_past_o1": ("ctr", 1, "past", 0.001, 0.8),
        "hat_o0": ("hat", 0, None, 0.001, 0.7),
        "hat_o1": ("hat", 1, None, 0.001, 0.75),
        "hat_o0_lr": ("hat", 0, None, 0.01, 0.1),  # another lr: pairs with no CTR run
    }
    for name, (method, order, protect, lr, a) in made.items():
        _run(root, name, method, [[a, NAN], [a, a]], order=order)
        train = {"lr": lr} | ({"ksm_protect": protect} if protect else {})
        (root / name / "config.json").write_text(
            json.dumps({"fingerprint": "x", "config": {"train": train}})
        )
    by = ["train.ksm_protect", "train.lr"]
    runs = report.load_runs(report.find_results([root]), by)
    rows = report.paired(runs, "ctr", {"train.ksm_protect": "past"})
    got = {(r["method"], r["variant"]): r for r in rows}
    assert set(got) == {("ctr", "train.ksm_protect=none, train.lr=0.001"),
                        ("hat", "train.ksm_protect=none, train.lr=0.001")}  # fmt: skip
    hat = got["hat", "train.ksm_protect=none, train.lr=0.001"]
    # past - HAT: 90 - 70 = 20 (order 0), 80 - 75 = 5 (order 1); t = 12.5 / (10.61 / sqrt 2)
    # = 5/3 on one degree of freedom (Cauchy): p = 1 - 2 atan(5/3) / pi.
    assert (hat["pairs"], hat["ambiguous"], hat["ref_variant"]) == (2, 0, "train.ksm_protect=past")
    assert hat["d_acc_mean"] == pytest.approx(12.5)
    assert hat["p_acc"] == pytest.approx(1 - 2 * math.atan(5 / 3) / math.pi)
    none = got["ctr", "train.ksm_protect=none, train.lr=0.001"]
    assert none["pairs"] == 1 and none["d_acc_mean"] == pytest.approx(10.0)
    # Without --ref-variant, runs pair within equal values only: CTR none with HAT on order 0.
    plain = report.paired(runs, "ctr")
    assert [(r["method"], r["pairs"], r["d_acc_mean"]) for r in plain] == [
        ("hat", 1, pytest.approx(10.0))
    ]
    # Naming lr as well releases it (typed as 1e-3): HAT at lr 0.01 becomes a row of its own.
    rows = report.paired(runs, "ctr", {"train.ksm_protect": "past", "train.lr": "1e-3"})
    hat_lr = [r for r in rows if r["variant"] == "train.ksm_protect=none, train.lr=0.01"]
    assert len(rows) == 3 and hat_lr[0]["pairs"] == 1 and hat_lr[0]["d_acc_mean"] == 80.0

    out = tmp_path / "out"
    assert report.main([str(root), "--out", str(out), "--no-plots", "--by", *by,
                        "--ref-variant", "train.ksm_protect=past"]) == 0  # fmt: skip
    md = (out / "results.md").read_text()
    assert "### ASC: CTR (train.ksm_protect=past) against each method, paired" in md
    assert "| HAT (train.lr=0.001) | 2 of 19 | 2 | 12.50 ± 10.61 |" in md
    tasks = list(csv.DictReader((out / "paired_tasks.csv").open()))
    assert {r["ref_variant"] for r in tasks} == {"train.ksm_protect=past"} and len(tasks) == 6
    for bad, msg in [
        (["train.ksm_protect"], "expected KEY=VALUE"),
        (["train.epochs=3"], "'train.epochs' is not one of --by"),
        (["train.ksm_protect=full"], "no complete ctr run has it"),
    ]:
        with pytest.raises(report.ReportError, match=msg):
            report.write_report([root], out, plots=False, by=by, ref_variant=bad)


def test_paired_tasks_by_hand(runs, tmp_path):
    # HAT on CTR's order 0 (final rows: CTR acc (0.8, 0.9), MF1 (0.7, 0.8)), with the test
    # counts recorded by HAT's run only; on order 1 neither run recorded them.
    support = [{"pos": 21, "neg": 1}, {"pos": 5, "neg": 7}]
    _run(runs, "hat_o0", "hat", [[0.9, NAN], [0.9, 0.7]], mf1=[[0.9, NAN], [0.5, 0.7]],
         test_support=support)  # fmt: skip
    _run(runs, "hat_o1", "hat", [[0.8, NAN], [0.6, 0.9]], order=1)
    out = tmp_path / "out"
    report.write_report([runs], out, plots=False)
    rows = [r for r in csv.DictReader((out / "paired_tasks.csv").open()) if r["method"] == "hat"]
    assert [(r["order"], r["task"]) for r in rows] == [("0", "t0"), ("0", "t1"), ("1", "t0"),
                                                       ("1", "t1")]  # fmt: skip
    got = [(float(r["d_acc"]), float(r["mf1_ref"]), float(r["mf1_method"]), float(r["d_mf1"]))
           for r in rows]  # fmt: skip
    want = [(-10, 70, 50, 20), (20, 80, 70, 10), (10, 60, 50, 10), (-10, 70, 80, -10)]
    np.testing.assert_allclose(got, want, atol=1e-9)
    assert [(r["test_n"], r["test_rarest"]) for r in rows] == [
        ("22", "1"), ("12", "5"), ("", ""), ("", "")
    ]  # fmt: skip
    # The per-task differences average to the run's: sum over tasks / T = d MF1 of the pair.
    pair = {r["method"]: r for r in csv.DictReader((out / "paired.csv").open())}["hat"]
    d = [float(r["d_mf1"]) for r in rows]
    assert np.mean([np.mean(d[:2]), np.mean(d[2:])]) == pytest.approx(float(pair["d_mf1_mean"]))
    report.write_report([runs], out, ref=None, plots=False)
    assert not (out / "paired_tasks.csv").exists()


def test_runs_on_different_data_never_pair(tmp_path):
    """DSC small's 200-review subsets follow data.seed: runs of one seed on different subsets
    are no pair. A run made before results.json recorded "data_seed" read its data with its
    seed, so it pairs with a new run of data seed = its seed, not with one of data seed 0."""
    root = tmp_path / "runs"
    kw = {"benchmark": "dsc_small", "seed": 1}
    _run(root, "ctr_new", "ctr", [[0.8, NAN], [0.8, 0.8]], **kw, data_seed=0)
    _run(root, "hat_new", "hat", [[0.7, NAN], [0.7, 0.7]], **kw, data_seed=0)
    _run(root, "ctr_old", "ctr", [[0.9, NAN], [0.9, 0.9]], **kw)  # data seed 1, as its seed
    _run(root, "hat_d1", "hat", [[0.6, NAN], [0.6, 0.6]], **kw, data_seed=1)
    _run(root, "ncl_d0", "ncl", [[0.6, NAN], [0.6, 0.6]], **kw, data_seed=0)
    pairs = {r["method"]: r for r in report.paired(report.load_runs(report.find_results([root])))}
    # HAT: (ctr_new, hat_new) on data seed 0 (+10) and (ctr_old, hat_d1) on data seed 1 (+30).
    assert pairs["hat"]["pairs"] == 2 and pairs["hat"]["ambiguous"] == 0
    assert pairs["hat"]["d_acc_mean"] == pytest.approx(20.0)
    assert pairs["ncl"]["pairs"] == 1 and pairs["ncl"]["d_acc_mean"] == pytest.approx(20.0)
    # On ASC the data never depended on a seed: an old run pairs with a new one.
    _run(root, "asc_ctr_old", "ctr", [[0.9, NAN], [0.9, 0.9]], seed=1)
    _run(root, "asc_hat_new", "hat", [[0.8, NAN], [0.8, 0.8]], seed=1, data_seed=None)
    asc = [r for r in report.paired(report.load_runs(report.find_results([root])))
           if r["benchmark"] == "asc"]  # fmt: skip
    assert len(asc) == 1 and asc[0]["pairs"] == 1


def test_runs_over_different_task_counts_never_share_a_row(runs, tmp_path):
    # A 3-task CTR slice beside the fixture's two 2-task CTR runs: averaged with them it would
    # give Acc (85 + 75 + 60) / 3; it gets a row of its own, before the shorter slice.
    three = [[0.9, NAN, NAN], [0.8, 0.7, NAN], [0.5, 0.6, 0.7]]  # Acc 60, FR (40 + 10) / 2
    _run(runs, "ctr_3", "ctr", three)
    _run(runs, "hat_3", "hat", [[0.9, NAN, NAN], [0.9, 0.7, NAN], [0.9, 0.7, 0.6]])  # Acc 73.33
    out = tmp_path / "out"
    report.write_report([runs], out)
    rows = [r for r in csv.DictReader((out / "results.csv").open()) if r["method"] == "ctr"]
    assert [(r["tasks"], r["runs"]) for r in rows] == [("3", "1"), ("2", "2")]
    assert rows[0]["benchmark_tasks"] == "19"
    assert float(rows[0]["acc_mean"]) == pytest.approx(60.0)
    assert float(rows[1]["acc_mean"]) == pytest.approx(80.0)
    md = (out / "results.md").read_text()
    assert "| CTR | 3 of 19 | 1 | 60.00 | 50.00 | 25.00 | 25.00 |" in md
    # HAT pairs with the 3-task CTR run only: CTR - HAT = 60 - 73.33.
    paired = {r["method"]: r for r in csv.DictReader((out / "paired.csv").open())}
    assert (paired["hat"]["tasks"], paired["hat"]["pairs"]) == ("3", "1")
    assert float(paired["hat"]["d_acc_mean"]) == pytest.approx(60.0 - 220.0 / 3)
    assert (out / "curve_asc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # curves per count


def test_after_task_compares_runs_still_going_by_hand(tmp_path):
    """--after-task 2: a finished 3-task CTR run and a HAT run that learned 2 of 3 tasks enter
    as their first 2 tasks and pair; a run with 1 task learned and MTL are listed instead."""
    root = tmp_path / "runs"
    support = [{"pos": 9, "neg": 1}, {"pos": 5, "neg": 5}, {"pos": 3, "neg": 4}]
    # After task 2 the rows read (0.8, 0.7): Acc 75, MF1 65, FR 0.9 - 0.8 = 10.
    _run(root, "ctr", "ctr", [[0.9, NAN, NAN], [0.8, 0.7, NAN], [0.5, 0.6, 0.7]],
         test_support=support)  # fmt: skip
    # Still going: (0.9, 0.5) after task 2, Acc 70, FR 0.
    _run(root, "hat", "hat", [[0.9, NAN, NAN], [0.9, 0.5, NAN], [NAN, NAN, NAN]],
         test_support=support)  # fmt: skip
    _run(root, "ncl", "ncl", [[0.6, NAN, NAN], [NAN, NAN, NAN], [NAN, NAN, NAN]])
    _run(root, "mtl", "mtl", [[0.95, NAN, NAN], [0.95, 0.9, NAN], [0.9, 0.9, 0.9]],
         protocol="joint")  # fmt: skip
    out = tmp_path / "out"
    report.write_report([root], out, after=2)
    rows = {r["method"]: r for r in csv.DictReader((out / "results.csv").open())}
    assert set(rows) == {"ctr", "hat"}
    assert (rows["ctr"]["tasks"], rows["hat"]["tasks"]) == ("2", "2")
    assert float(rows["ctr"]["acc_mean"]) == pytest.approx(75.0)
    assert float(rows["ctr"]["mf1_mean"]) == pytest.approx(65.0)
    assert float(rows["ctr"]["forgetting_mean"]) == pytest.approx(10.0)
    assert float(rows["hat"]["acc_mean"]) == pytest.approx(70.0)
    assert float(rows["hat"]["forgetting_mean"]) == pytest.approx(0.0)
    paired = {r["method"]: r for r in csv.DictReader((out / "paired.csv").open())}
    assert paired["hat"]["pairs"] == "1" and float(paired["hat"]["d_acc_mean"]) == pytest.approx(5)
    tasks = list(csv.DictReader((out / "paired_tasks.csv").open()))
    assert [(r["task"], r["test_n"]) for r in tasks] == [("t0", "10"), ("t1", "10")]
    assert [float(r["d_acc"]) for r in tasks] == pytest.approx([80 - 90, 70 - 50])
    md = (out / "results.md").read_text()
    assert "Runs without a state after task 2 (not in the table):" in md
    assert "- ncl (ncl, asc): 1 of 3 tasks learned" in md
    assert "- mtl (mtl, asc): joint training: no state after a task" in md
    assert "as it stood after its task 2" in md
    # Without --after-task the unfinished HAT run is not in the table; CTR is, over 3 tasks.
    report.write_report([root], out, plots=False)
    rows = {r["method"]: r for r in csv.DictReader((out / "results.csv").open())}
    assert set(rows) == {"ctr", "mtl"} and rows["ctr"]["tasks"] == "3"
    with pytest.raises(report.ReportError, match="--after-task 0"):
        report.write_report([root], out, after=0)
    assert report.main([str(root), "--out", str(out), "--no-plots", "--after-task", "1"]) == 0
    rows = {r["method"]: r for r in csv.DictReader((out / "results.csv").open())}
    assert set(rows) == {"ctr", "hat", "ncl"}  # every sequential run has learned a task


def test_tasks_label():
    assert report.tasks_label("asc", 19) == "19"
    assert report.tasks_label("asc", 4) == "4 of 19"
    assert report.tasks_label("dsc_small", 2) == "2 of 10"
    assert report.tasks_label("20news", 10) == "10"
    assert report.tasks_label("custom", 5) == "5"


def test_seen_task_curve():
    acc = np.array([[0.9, NAN, NAN], [0.8, 0.6, NAN], [0.7, 0.5, 0.3]])
    np.testing.assert_allclose(report.seen_task_curve(acc), [90.0, 70.0, 50.0])


def test_curve_lines_name_their_orders_where_the_curves_cover_different_runs(runs, tmp_path):
    lines = report.plots.curve_lines(report.load_runs(report.find_results([runs])), "asc")
    by = {line["key"][2]: line for line in lines}
    assert set(by) == {"ctr", "mtl"}  # the unfinished NCL run draws no curve
    # CTR's curve is over orders 0 and 1, MTL's over order 0: each label says which.
    assert by["ctr"]["label"] == "CTR: 2 runs (orders 0-1, seed 0)"
    assert by["mtl"]["label"].endswith(": 1 run (order 0, seed 0)")
    # Mean over CTR's two runs of the seen-task curves: (90, 85) and (70, 75).
    np.testing.assert_allclose(by["ctr"]["curve"], [80.0, 80.0])
    # Curves over the same orders and seeds need no such note.
    same = tmp_path / "same"
    for method in ("ctr", "hat"):
        for order in (0, 1, 2, 4):
            _run(same, f"{method}_o{order}", method, [[0.9, NAN], [0.8, 0.9]], order=order)
    labels = [line["label"] for line in report.plots.curve_lines(
        report.load_runs(report.find_results([same])), "asc")]  # fmt: skip
    assert labels == ["CTR: 4 runs", "HAT: 4 runs"]
    _run(same, "hat_o3_s1", "hat", [[0.9, NAN], [0.8, 0.9]], order=3, seed=1)
    labels = [line["label"] for line in report.plots.curve_lines(
        report.load_runs(report.find_results([same])), "asc")]  # fmt: skip
    assert labels == ["CTR: 4 runs (orders 0-2, 4, seed 0)",
                      "HAT: 5 runs (orders 0-4, seeds 0-1)"]  # fmt: skip


def test_bad_input_names_the_file(tmp_path):
    bad = tmp_path / "broken" / "results.json"
    bad.parent.mkdir()
    bad.write_text("{not json")
    with pytest.raises(report.ReportError, match="broken/results.json"):
        report.write_report([tmp_path], tmp_path / "out")
    with pytest.raises(report.ReportError, match="no such file"):
        report.write_report([tmp_path / "missing"], tmp_path / "out")
    assert report.main([str(tmp_path / "missing")]) == 2


def _config(root, name, lr):
    (root / name / "config.json").write_text(
        json.dumps({"fingerprint": "x", "config": {"train": {"lr": lr, "epochs": 3}}})
    )


def test_by_splits_rows_by_config_value(runs, tmp_path):
    for name, lr in (("ctr_o0", 0.001), ("ctr_o1", 0.0003), ("mtl", 0.001), ("ncl_half", 0.001)):
        _config(runs, name, lr)
    out = tmp_path / "out"
    report.write_report([runs], out, by=["train.lr"])
    rows = list(csv.DictReader((out / "results.csv").open()))
    got = [(r["method"], r["variant"], r["runs"], round(float(r["acc_mean"]), 6)) for r in rows]
    assert got == [("ctr", "train.lr=0.0003", "1", 75.0), ("ctr", "train.lr=0.001", "1", 85.0),
                   ("mtl", "train.lr=0.001", "1", 90.0)]  # fmt: skip
    md = (out / "results.md").read_text()
    assert (
        "| CTR (train.lr=0.001) | 2 of 19 | 1 | 85.00 | 75.00 | 10.00 | 10.00 | 89.47 | 83.62 |"
        in md
    )
    # Without --by the two CTR runs are one row again.
    plain = report.aggregate(report.load_runs(report.find_results([runs])))
    assert [r["method"] for r in plain] == ["ctr", "mtl"]


def test_by_epochs_names_the_papers_epochs(runs, tmp_path):
    # train.epochs null means the paper's epochs per benchmark: the label says so, not "None".
    for name, epochs in (("ctr_o0", None), ("ctr_o1", 3), ("mtl", None), ("ncl_half", 3)):
        (runs / name / "config.json").write_text(
            json.dumps({"fingerprint": "x", "config": {"train": {"epochs": epochs}}})
        )
    out = tmp_path / "out"
    report.write_report([runs], out, by=["train.epochs"])
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["method"], r["variant"]) for r in rows] == [
        ("ctr", "train.epochs=3"),
        ("ctr", "train.epochs=paper"),
        ("mtl", "train.epochs=paper"),
    ]
    assert "| CTR (train.epochs=paper) |" in (out / "results.md").read_text()


def test_by_names_the_run_and_key_at_fault(runs, tmp_path):
    for name in ("ctr_o0", "ctr_o1", "mtl", "ncl_half"):
        _config(runs, name, 0.001)
    with pytest.raises(report.ReportError, match=r"ctr_o0/config.json: no config key 'train.lrr'"):
        report.write_report([runs], tmp_path / "out", by=["train.lrr"])
    (runs / "mtl" / "config.json").unlink()
    with pytest.raises(report.ReportError, match=r"mtl/config.json: no readable run config"):
        report.write_report([runs], tmp_path / "out", by=["train.lr"])


def test_by_reads_a_key_added_after_the_run_as_its_default(runs, tmp_path):
    # ctr_o0 was made before train.freeze_layernorms existed: it trained them (the default).
    for name in ("ctr_o0", "ctr_o1", "mtl", "ncl_half"):
        train = {} if name == "ctr_o0" else {"freeze_layernorms": True}
        (runs / name / "config.json").write_text(
            json.dumps({"fingerprint": "x", "config": {"train": train}})
        )
    out = tmp_path / "out"
    report.write_report([runs], out, by=["train.freeze_layernorms"])
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["method"], r["variant"]) for r in rows] == [
        ("ctr", "train.freeze_layernorms=False"),
        ("ctr", "train.freeze_layernorms=True"),
        ("mtl", "train.freeze_layernorms=True"),
    ]


def test_by_pooling_reads_a_run_without_the_key_as_the_pooler(runs, tmp_path):
    # ctr_o0 was made before model.pooling existed (its heads read the pooler), ctr_o1 with mean.
    models = {"ctr_o0": {"tsm_width": 2000}, "ctr_o1": {"pooling": "mean"}}
    for name in ("ctr_o0", "ctr_o1", "mtl", "ncl_half"):
        model = models.get(name, {"pooling": "mean"})
        (runs / name / "config.json").write_text(
            json.dumps({"fingerprint": "x", "config": {"model": model}})
        )
    out = tmp_path / "out"
    report.write_report([runs], out, by=["model.pooling"])
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["method"], r["variant"]) for r in rows] == [
        ("ctr", "model.pooling=mean"),
        ("ctr", "model.pooling=pooler"),
        ("mtl", "model.pooling=mean"),
    ]


def test_by_pooling_shows_what_auto_resolved_to(runs, tmp_path):
    # Runs asking for "auto" record what it resolved to in results.json ("pooling"): --by shows
    # that value, so an auto run that read the mean shares a row with an explicit-mean run. An
    # auto run whose results lack the field (an older run) keeps its config value.
    models = {"ctr_o0": "auto", "ctr_o1": "mean", "mtl": "auto", "ncl_half": "auto"}
    resolved = {"ctr_o0": "mean", "mtl": None, "ncl_half": "cls"}
    for name, pooling in models.items():
        (runs / name / "config.json").write_text(
            json.dumps({"fingerprint": "x", "config": {"model": {"pooling": pooling}}})
        )
        f = runs / name / "results.json"
        r = json.loads(f.read_text())
        if resolved.get(name):
            r["pooling"] = resolved[name]
        f.write_text(json.dumps(r))
    loaded = {
        r["name"]: r["variant"]
        for r in report.load_runs(report.find_results([runs]), ["model.pooling"])
    }
    assert loaded == {
        "ctr_o0": "model.pooling=mean", "ctr_o1": "model.pooling=mean",
        "mtl": "model.pooling=auto", "ncl_half": "model.pooling=cls",
    }  # fmt: skip
    rows = report.aggregate(report.load_runs(report.find_results([runs]), ["model.pooling"]))
    ctr = [r for r in rows if r["method"] == "ctr"]
    assert len(ctr) == 1 and ctr[0]["runs"] == 2


def test_by_a_key_the_method_lacks_is_not_in_its_label(runs, tmp_path):
    # MTL's adapter has no knowledge-sharing module: under --by train.ksm_lr_scale its row is
    # labelled "MTL", not "MTL (train.ksm_lr_scale=1.0)", yet keeps the value in the CSV and
    # pairs with CTR's runs at that value.
    scale = {"ctr_o0": 1.0, "ctr_o1": 10.0, "mtl": 1.0, "ncl_half": 1.0}
    for name, s in scale.items():
        (runs / name / "config.json").write_text(
            json.dumps({"fingerprint": "x", "config": {"train": {"ksm_lr_scale": s}}})
        )
    out = tmp_path / "out"
    report.write_report([runs], out, by=["train.ksm_lr_scale"])
    md = (out / "results.md").read_text()
    assert "| CTR (train.ksm_lr_scale=1.0) | 2 of 19 | 1 | 85.00 |" in md
    assert "| CTR (train.ksm_lr_scale=10.0) | 2 of 19 | 1 | 75.00 |" in md
    assert "| MTL | 2 of 19 | 1 | 90.00 |" in md
    assert "MTL (train" not in md
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert ("mtl", "train.ksm_lr_scale=1.0") in [(r["method"], r["variant"]) for r in rows]
    paired = report.paired(report.load_runs(report.find_results([runs]), ["train.ksm_lr_scale"]))
    assert [(r["method"], r["variant"], r["pairs"]) for r in paired] == [
        ("mtl", "train.ksm_lr_scale=1.0", 1)
    ]
    # Other keys, and keys of a module the method has, stay in the label.
    assert (
        report.labels.method_label("hat", "train.lr=0.001, train.ksm_lr_scale=1.0")
        == "HAT (train.lr=0.001)"
    )
    assert (
        report.labels.method_label("bcl", "train.ksm_lr_scale=1.0")
        == "B-CL (train.ksm_lr_scale=1.0)"
    )
    assert (
        report.labels.method_label("ctr", "train.buckets=[32, 64]")
        == "CTR (train.buckets=[32, 64])"
    )


def test_variants_sort_by_number_not_text():
    variants = ["s=10.0, d=0.02", "s=3.0, d=0.02", "s=1.0, d=1.0", "s=1.0, d=0.02", "s=1e-05"]
    assert sorted(variants, key=report.labels.variant_key) == [
        "s=1e-05", "s=1.0, d=0.02", "s=1.0, d=1.0", "s=3.0, d=0.02", "s=10.0, d=0.02",
    ]  # fmt: skip
    assert sorted(["pooling=pooler", "pooling=mean"], key=report.labels.variant_key) == [
        "pooling=mean", "pooling=pooler",
    ]  # fmt: skip


def test_dsc_small_shows_the_second_hand_paper_acc_only(tmp_path):
    _run(tmp_path, "dsc", "ctr", [[0.9, NAN], [0.8, 0.9]], benchmark="dsc_small")
    _run(tmp_path, "dsc_hat", "hat", [[0.9, NAN], [0.8, 0.8]], benchmark="dsc_small")
    out = tmp_path / "out"
    report.write_report([tmp_path / "dsc", tmp_path / "dsc_hat"], out, plots=False)
    md = (out / "results.md").read_text()
    assert "| CTR | 2 of 10 | 1 | 85.00 | 75.00 | 10.00 | 10.00 | 84.34 | - |" in md
    assert "| HAT | 2 of 10 | 1 | 80.00 | 70.00 | 10.00 | 10.00 | - | - |" in md
    assert "DSC small: spec §9.2 (Acc only" in md
    row = next(r for r in csv.DictReader((out / "results.csv").open()) if r["method"] == "ctr")
    assert (row["paper_acc"], row["paper_mf1"]) == ("84.34", "")
