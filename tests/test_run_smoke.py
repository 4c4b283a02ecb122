"""Smoke test: 2 real ASC tasks end to end through run.py on the default backbone."""

import json

import pytest

import run

pytestmark = [pytest.mark.entry, pytest.mark.data]


def test_run_py_on_two_asc_tasks(tmp_path, data_root, backbone_folder):
    # Order 2 starts with two small Bing tasks; 32 training examples and 1 epoch keep it short.
    code = run.main(
        [
            "--config", "configs/asc_ctr.yaml",
            "--set", f"runs_dir={tmp_path}",
            "--set", f"data.root={data_root}",
            "--set", "data.order=2",
            "--set", "data.num_tasks=2",
            "--set", "data.max_train_examples=32",
            "--set", "train.epochs=1",
        ]
    )  # fmt: skip
    assert code == 0
    out = json.loads((tmp_path / "asc_ctr" / "results.json").read_text())
    assert out["tasks"] == ["Bing9domains_CanonPowerShotSD500", "Bing9domains_LinksysRouter"]
    assert out["benchmark"] == "asc" and out["method"] == "ctr"
    assert out["pooling"] == "mean"  # model.pooling=auto: the backbone's 1_Pooling/config.json
    assert all(0.0 <= a <= 1.0 for a in out["acc"][1])
    assert out["acc"][0][1] is None


def test_run_py_rejects_an_unknown_key(capsys):
    assert run.main(["--config", "configs/asc_ctr.yaml", "--set", "train.epoch=1"]) == 2
    assert "train.epoch" in capsys.readouterr().err


def test_a_run_that_fails_on_bad_input_leaves_no_config_to_refuse_its_rerun(
    tmp_path, data_root, capsys
):
    """config.json binds a run folder to its config, so it is written only once the data,
    backbone and model are set up: a run stopped by a wrong backbone path leaves none, and the
    rerun with the path changed gets its own error, not "holds a run made with a different
    config" (which it did when config.json came first)."""
    base = ["--config", "configs/asc_ctr.yaml", "--set", f"runs_dir={tmp_path}"]
    base += ["--set", f"data.root={data_root}", "--set", "data.num_tasks=1"]
    for wrong in ("no_such_backbone_a", "no_such_backbone_b"):
        folder = tmp_path / wrong
        assert run.main([*base, "--set", f"model.backbone={folder}"]) == 2
        err = capsys.readouterr().err
        assert wrong in err and "different config" not in err
        assert not (tmp_path / "asc_ctr" / "config.json").exists()


def test_an_out_of_range_task_order_is_a_config_error(capsys):
    assert run.main(["--config", "configs/asc_ctr.yaml", "--set", "data.order=5"]) == 2
    assert "data.order: must be in [0, 4], got 5" in capsys.readouterr().err
