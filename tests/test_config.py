"""Config loading: every shipped YAML loads; bad keys and types fail naming the key."""

import re
from pathlib import Path

import pytest

from ctr_jax.config import ConfigError, ExperimentConfig, load_config

CONFIGS = sorted(Path(__file__).resolve().parent.parent.glob("configs/*.yaml"))


def test_configs_exist():
    assert len(CONFIGS) >= 4


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.name == path.stem  # the run folder is named after the file


def test_overrides_and_types():
    cfg = load_config(
        None,
        ["train.epochs=1", "train.lr=5e-5", "model.cnn_kernels=[3, 4]", "data.root=/x", "seed=3"],
    )
    assert cfg.train.epochs == 1 and cfg.train.lr == 5e-5 and cfg.model.cnn_kernels == (3, 4)
    assert cfg.data.root == "/x" and cfg.seed == 3
    assert cfg.fingerprint() != load_config(None, ["seed=4"]).fingerprint()
    assert load_config(None, ["log_level=DEBUG"]).fingerprint() == load_config().fingerprint()


@pytest.mark.parametrize("layout,counts", [("semantic", False), ("torch", True)])
def test_batching_keys_enter_the_fingerprint_only_under_the_torch_layout(layout, counts):
    """The original's layout mixes a batch's examples, so its results depend on the batching."""
    base = [f"model.routing_layout={layout}"]
    for key in ("train.buckets=[32, 128]", "train.eval_max_tokens=null"):
        other = load_config(None, [*base, key]).fingerprint()
        assert (other != load_config(None, base).fingerprint()) == counts, key


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.epoch=1", "train.epoch"),
        ("trian.epochs=1", "trian"),
        ("train.lr=fast", "train.lr"),
        ("train.batch_size=1.5", "train.batch_size"),
        ("model.capsule_layers=3", "model.capsule_layers"),
        ("model.pooling=max", "model.pooling"),
        ("data.benchmark=imagenet", "data.benchmark"),
        ("model.eval_router_noise=1", "model.eval_router_noise"),
        ("train.buckets=64", "train.buckets"),
        ("train=5", "train"),
    ],
)
def test_bad_keys_and_types_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="bad.yaml: top level must be a mapping"):
        load_config(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("name: x\nhat:\n  smax: 400\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: .*hat\.smax"):
        load_config(typo)


# ------------------------------------------------ run folders made before a key's default changed


def test_legacy_values_fill_only_what_a_saved_config_lacks():
    from ctr_jax.config import with_legacy_values

    saved = ExperimentConfig().to_dict()
    del saved["model"]["pooling"]  # a run made before model.pooling existed
    filled = with_legacy_values(saved)
    assert filled["model"]["pooling"] == "pooler"  # what such a run's heads read
    assert "pooling" not in saved["model"]  # the input is not changed
    explicit = ExperimentConfig().to_dict()
    explicit["model"]["pooling"] = "mean"
    assert with_legacy_values(explicit)["model"]["pooling"] == "mean"


def test_a_run_folder_from_before_a_new_key_keeps_its_fingerprint(tmp_path):
    """A key added later at its default changes the config's fingerprint, not the run: the
    folder resumes, and its saved epochs stay keyed by the fingerprint it was made under."""
    import json

    from ctr_jax.training import rundir

    cfg = load_config(None, [f"runs_dir={tmp_path}", "name=old"])
    assert rundir.run_fingerprint(cfg) == cfg.fingerprint()  # no folder yet
    saved = cfg.to_dict()
    del saved["train"]["ksm_lr_scale"]
    cfg.run_dir.mkdir(parents=True)
    (cfg.run_dir / "config.json").write_text(json.dumps({"fingerprint": "f0", "config": saved}))
    rundir.check_run_dir(cfg)
    assert rundir.run_fingerprint(cfg) == "f0"
    with pytest.raises(ConfigError, match=r"train\.ksm_lr_scale"):
        rundir.check_run_dir(
            load_config(None, [f"runs_dir={tmp_path}", "name=old", "train.ksm_lr_scale=2"])
        )


@pytest.mark.parametrize("text, error", [("{not json", "invalid JSON"),
                                         ('{"fingerprint": "f0"}', "no 'config' key")])  # fmt: skip
def test_a_damaged_run_config_is_refused_naming_the_file(tmp_path, text, error):
    """A hand-edited or foreign config.json in a run folder stops a rerun with a ConfigError
    that names the file, not a bare JSON traceback."""
    from ctr_jax.training import rundir

    cfg = load_config(None, [f"runs_dir={tmp_path}", "name=old"])
    cfg.run_dir.mkdir(parents=True)
    (cfg.run_dir / "config.json").write_text(text)
    for check in (rundir.check_run_dir, rundir.run_fingerprint):
        with pytest.raises(ConfigError, match=rf"old/config\.json: {error}"):
            check(cfg)


def test_a_run_folder_from_before_the_layernorm_rate_key_resumes_at_rate_one_only(tmp_path):
    """Before train.layernorm_lr_scale existed the LayerNorms trained at the shared lr: such a
    folder is refused at today's default (0.05), naming the key, and resumes with 1."""
    import json

    from ctr_jax.config import with_legacy_values
    from ctr_jax.training import rundir

    assert ExperimentConfig().train.layernorm_lr_scale == 0.05
    cfg = load_config(None, [f"runs_dir={tmp_path}", "name=old", "train.layernorm_lr_scale=1"])
    saved = cfg.to_dict()
    del saved["train"]["layernorm_lr_scale"]
    assert with_legacy_values(saved)["train"]["layernorm_lr_scale"] == 1.0
    cfg.run_dir.mkdir(parents=True)
    (cfg.run_dir / "config.json").write_text(json.dumps({"fingerprint": "0", "config": saved}))
    rundir.check_run_dir(cfg)
    with pytest.raises(ConfigError, match=r"train\.layernorm_lr_scale"):
        rundir.check_run_dir(load_config(None, [f"runs_dir={tmp_path}", "name=old"]))


def test_a_run_folder_from_before_the_pooling_key_does_not_resume_as_auto(tmp_path):
    """Its heads read the pooler: resuming it with today's default (auto, the mean on the
    default backbone) would switch what they read mid-run, so it is refused, naming the key;
    with model.pooling=pooler it resumes."""
    import json

    from ctr_jax.training import rundir

    cfg = load_config(None, [f"runs_dir={tmp_path}", "name=old", "model.pooling=pooler"])
    saved = cfg.to_dict()
    del saved["model"]["pooling"]
    cfg.run_dir.mkdir(parents=True)
    (cfg.run_dir / "config.json").write_text(json.dumps({"fingerprint": "0", "config": saved}))
    rundir.check_run_dir(cfg)  # the same config: resumes
    with pytest.raises(ConfigError, match=r"model\.pooling"):
        rundir.check_run_dir(load_config(None, [f"runs_dir={tmp_path}", "name=old"]))


@pytest.mark.parametrize(
    "benchmark, max_train, seed, expect",
    [
        ("dsc_small", None, 2, 2),  # its 200-review subsets followed the run's seed
        ("20news", None, 1, 1),  # and so did the 20News split
        ("asc", 64, 3, 3),  # and a max_train_examples subsample
        ("asc", None, 3, 0),  # ASC's data never depended on it: any value, so the default
        ("dsc_full", None, 4, 0),
    ],
)
def test_a_run_from_before_data_seed_read_its_data_by_its_seed(benchmark, max_train, seed, expect):
    from ctr_jax.config import with_legacy_values

    saved = ExperimentConfig().to_dict()
    saved["seed"], saved["data"]["benchmark"] = seed, benchmark
    saved["data"]["max_train_examples"] = max_train
    del saved["data"]["seed"]
    assert with_legacy_values(saved)["data"]["seed"] == expect
    saved["data"]["seed"] = 5  # a run that has the key keeps its value
    assert with_legacy_values(saved)["data"]["seed"] == 5


def test_data_seed_is_recorded_only_where_it_changes_the_data():
    assert ExperimentConfig().data_seed is None  # ASC: every data.seed gives the same examples
    dsc = load_config(CONFIGS[0].parent / "dsc_small_ctr.yaml", ["seed=3"])
    assert dsc.data_seed == 0  # the run's seed no longer picks the data
    assert load_config(None, ["data.seed=2", "data.max_train_examples=10"]).data_seed == 2


def test_a_dsc_run_folder_from_before_data_seed_resumes_only_with_its_data(tmp_path):
    """A seed-1 DSC-small run made before data.seed trained on seed 1's subset: resuming it
    with today's default (data.seed 0) would switch subsets mid-run, so it is refused naming
    the key; with data.seed=1 it resumes. An ASC run of seed 1 resumes as it is."""
    import json

    from ctr_jax.training import rundir

    for benchmark, refused in (("dsc_small", True), ("asc", False)):
        base = [f"runs_dir={tmp_path}", f"name=old_{benchmark}", f"data.benchmark={benchmark}"]
        cfg = load_config(None, [*base, "seed=1"])
        saved = cfg.to_dict()
        del saved["data"]["seed"]
        cfg.run_dir.mkdir(parents=True)
        (cfg.run_dir / "config.json").write_text(json.dumps({"fingerprint": "0", "config": saved}))
        if refused:
            with pytest.raises(ConfigError, match=r"data\.seed"):
                rundir.check_run_dir(cfg)
            rundir.check_run_dir(load_config(None, [*base, "seed=1", "data.seed=1"]))
        else:
            rundir.check_run_dir(cfg)


# ------------------------------------------------------------------- value ranges


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lr=-0.001", "train.lr: must be > 0, got -0.001"),
        ("train.lr=0", "train.lr: must be > 0"),
        ("train.batch_size=0", "train.batch_size: must be >= 1, got 0"),
        ("train.epochs=0", "train.epochs: must be >= 1"),
        ("train.warmup=1.5", r"train.warmup: must be in \[0, 1\]"),
        ("train.weight_decay=-0.01", "train.weight_decay: must be >= 0"),
        ("train.keep_checkpoints=0", "train.keep_checkpoints: must be >= 1"),
        ("train.buckets=[0, 16]", r"train.buckets: must be a non-empty list of values >= 1"),
        ("train.buckets=[]", r"train.buckets: must be a non-empty list"),
        ("model.cnn_kernels=[1, 3]", r"model.cnn_kernels: must be a non-empty list of values >= 2"),
        ("model.tsm_width=0", "model.tsm_width: must be >= 1"),
        ("model.router_tau=0", "model.router_tau: must be > 0"),
        ("model.scan_unroll=0", "model.scan_unroll: must be >= 1"),
        ("hat.s_max=0.5", "hat.s_max: must be >= 1"),
        ("hat.reg_weight=-1", "hat.reg_weight: must be >= 0"),
        ("train.ksm_lr_scale=-2", "train.ksm_lr_scale: must be >= 0"),
        ("train.layernorm_lr_scale=-0.1", "train.layernorm_lr_scale: must be >= 0"),
        ("data.seed=-1", "data.seed: must be >= 0"),
        ("data.num_tasks=0", "data.num_tasks: must be >= 1"),
        ("parallel.num_devices=0", "parallel.num_devices: must be >= 1"),
    ],
)
def test_out_of_range_values_name_the_key_and_the_file(override, message):
    with pytest.raises(ConfigError, match=r"asc_ctr\.yaml: " + message.replace(".", r"\.", 1)):
        load_config(CONFIGS[0].parent / "asc_ctr.yaml", [override])


@pytest.mark.parametrize(
    "config, override, lacks, has",
    [
        ("asc_hat.yaml", "train.ksm_lr_scale=10", "knowledge-sharing module", "asc_bcl.yaml"),
        ("asc_mtl.yaml", "train.ksm_lr_scale=0.5", "knowledge-sharing module", "asc_ctr.yaml"),
        ("asc_ncl.yaml", "hat.embedding_lr_scale=10", "HAT gates", "asc_hat.yaml"),
        ("asc_hat.yaml", "train.ksm_protect=full", "knowledge-sharing module", "asc_ctr.yaml"),
        ("asc_one.yaml", "train.ksm_protect=past", "knowledge-sharing module", "asc_bcl.yaml"),
        (
            "asc_ncl.yaml",
            "model.ksm_projection=per_task",
            "knowledge-sharing module",
            "asc_ctr.yaml",
        ),
        ("asc_bcl.yaml", "model.routing_layout=torch", "transfer routing", "asc_ctr.yaml"),
    ],
)
def test_a_setting_for_a_module_the_method_lacks_is_refused(config, override, lacks, has):
    key, method = override.split("=")[0], config[len("asc_") : -len(".yaml")]
    message = f"{config}: {key}: method '{method}' has no {lacks}"
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(CONFIGS[0].parent / config, [override])
    # A method that has the module takes it; the key's default is fine for every method.
    assert load_config(CONFIGS[0].parent / has, [override]).method == has[4:-5]
    default = {
        "train.ksm_protect": "none",
        "model.ksm_projection": "shared",
        "model.routing_layout": "semantic",
    }.get(key, "1")
    load_config(CONFIGS[0].parent / config, [f"{key}={default}"])


def test_an_unknown_ksm_protect_value_is_refused():
    with pytest.raises(ConfigError, match=r"asc_ctr\.yaml: .*train\.ksm_protect"):
        load_config(CONFIGS[0].parent / "asc_ctr.yaml", ["train.ksm_protect=all"])


def test_range_edges_and_nulls_are_accepted():
    cfg = load_config(
        None,
        [
            "train.warmup=0", "train.warmup=1", "hat.reg_weight=0", "hat.embedding_lr_scale=0",
            "train.weight_decay=0", "train.keep_checkpoints=null", "data.num_tasks=null",
            "train.max_batch_tokens=null", "hat.s_max=1", "model.cnn_kernels=[2]",
        ],
    )  # fmt: skip
    assert cfg.train.warmup == 1.0 and cfg.hat.s_max == 1.0 and cfg.model.cnn_kernels == (2,)
