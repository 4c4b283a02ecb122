"""Tests for ctr_jax.data: benchmark streams (counts of spec §7, §12), orders, user task folders."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest

from ctr_jax.data import (
    BENCHMARKS,
    DataError,
    Example,
    Task,
    load_benchmark,
    load_custom,
    resolve_data_root,
    task_order,
)

# --- expected counts, copied from spec §7 ----------------------------------------------------

# ASC: task -> per split (pos, neg[, neu]) counts, spec §7.1 table.
ASC_COUNTS = {
    "XuSemEval14_rest": ((2094, 779, 579), (70, 26, 54), (728, 196, 196)),
    "XuSemEval14_laptop": ((930, 800, 433), (57, 66, 27), (341, 128, 169)),
    "Bing3domains_Speaker": ((287, 65), (35, 9), (40, 4)),
    "Bing3domains_Router": ((142, 103), (19, 12), (24, 7)),
    "Bing3domains_Computer": ((218, 65), (23, 12), (29, 7)),
    "Bing5domains_Nokia6610": ((198, 73), (30, 4), (25, 9)),
    "Bing5domains_NikonCoolpix4300": ((135, 27), (18, 2), (19, 2)),
    "Bing5domains_CreativeLabsNomadJukeboxZenXtra40GB": ((422, 255), (42, 43), (52, 33)),
    "Bing5domains_CanonG3": ((180, 48), (21, 8), (24, 5)),
    "Bing5domains_ApexAD2600Progressive": ((146, 197), (16, 27), (31, 12)),
    "Bing9domains_CanonPowerShotSD500": ((96, 22), (14, 1), (11, 4)),
    "Bing9domains_CanonS100": ((123, 52), (20, 2), (21, 1)),
    "Bing9domains_DiaperChamp": ((143, 48), (18, 6), (22, 2)),
    "Bing9domains_HitachiRouter": ((153, 59), (19, 7), (14, 13)),
    "Bing9domains_ipod": ((101, 52), (14, 5), (15, 5)),
    "Bing9domains_LinksysRouter": ((128, 48), (13, 9), (16, 7)),
    "Bing9domains_MicroMP3": ((340, 144), (48, 13), (39, 22)),
    "Bing9domains_Nokia6600": ((244, 118), (32, 13), (30, 16)),
    "Bing9domains_Norton": ((54, 140), (15, 9), (5, 20)),
}
ASC_TOTALS = (10241, 879, 2344)

# DSC: domain -> (train, dev, test) as (neg, pos), spec §7.2 (table lists pos/neg).
_BALANCED = ((2000, 2000), (250, 250), (250, 250))
DSC_FULL_COUNTS = {
    "Kindle_Store": _BALANCED,
    "Movies_and_TV": _BALANCED,
    "Musical_Instruments": ((374, 2000), (250, 250), (47, 250)),
    "Office_Products": _BALANCED,
    "Patio_Lawn_and_Garden": ((952, 2000), (250, 250), (119, 250)),
    "Pet_Supplies": _BALANCED,
    "Sports_and_Outdoors": _BALANCED,
    "Tools_and_Home_Improvement": _BALANCED,
    "Toys_and_Games": _BALANCED,
    "Video_Games": _BALANCED,
}
# DSC small train (neg, pos) after the original code's sorted-key shuffle, spec §7.2.
DSC_SMALL_TRAIN = collections.defaultdict(
    lambda: (104, 96), {"Patio_Lawn_and_Garden": (66, 134), "Musical_Instruments": (34, 166)}
)

# 20News: bydate (train, test) per group, spec §12; task j = groups 2j, 2j+1 (spec §7.3).
NEWS_BYDATE = {
    "comp.graphics": (584, 389),
    "comp.os.ms-windows.misc": (591, 394),
    "comp.sys.ibm.pc.hardware": (590, 392),
    "comp.sys.mac.hardware": (578, 385),
    "comp.windows.x": (593, 395),
    "rec.autos": (594, 396),
    "rec.motorcycles": (598, 398),
    "rec.sport.baseball": (597, 397),
    "rec.sport.hockey": (600, 399),
    "sci.crypt": (595, 396),
    "sci.electronics": (591, 393),
    "sci.med": (594, 396),
    "sci.space": (593, 394),
    "misc.forsale": (585, 390),
    "talk.politics.misc": (465, 310),
    "talk.politics.guns": (546, 364),
    "talk.politics.mideast": (564, 376),
    "talk.religion.misc": (377, 251),
    "alt.atheism": (480, 319),
    "soc.religion.christian": (599, 398),
}


def _news_group_counts(n: int) -> tuple[int, int, int]:
    """Written independently of the loader: train = floor(0.8 n), the rest halved, with the odd
    one going to test (equals HF train_test_split's ceil rule for the held-out part)."""
    n_train = (4 * n) // 5
    held = n - n_train
    return n_train, held // 2, held - held // 2


def _expected_news_task(j: int) -> tuple[int, int, int]:
    groups = list(NEWS_BYDATE)[2 * j : 2 * j + 2]
    per_group = [_news_group_counts(sum(NEWS_BYDATE[g])) for g in groups]
    return tuple(a + b for a, b in zip(*per_group, strict=True))


# Hand-computed (group total n -> train/dev/test):
#   task0 = comp.graphics 973 -> 778/97/98 + comp.os.ms-windows.misc 985 -> 788/98/99 = 1566/195/197
#   task9 = alt.atheism 799 -> 639/80/80 + soc.religion.christian 997 -> 797/100/100 = 1436/180/180
#   task8 = talk.politics.mideast 940 -> 752/94/94 + talk.religion.misc 628 -> 502/63/63
#         = 1254/157/157
NEWS_HAND = {0: (1566, 195, 197), 9: (1436, 180, 180), 8: (1254, 157, 157)}

SPLITS = ("train", "dev", "test")


def _class_counts(task: Task, split: str) -> tuple[int, ...]:
    counts = collections.Counter(ex.label for ex in task.split(split))
    return tuple(counts[c] for c in range(task.num_classes))


# --- task orders (no data needed) ------------------------------------------------------------


@pytest.mark.parametrize("benchmark", BENCHMARKS)
def test_orders_are_permutations(benchmark):
    orders = [task_order(benchmark, i) for i in range(5)]
    assert len({tuple(sorted(o)) for o in orders}) == 1
    assert all(len(set(o)) == len(o) for o in orders)
    assert len(orders[0]) == {"asc": 19, "dsc_small": 10, "dsc_full": 10, "20news": 10}[benchmark]
    assert len(set(orders)) == 5


def test_order_names_expanded():
    assert set(task_order("asc", 0)) == set(ASC_COUNTS)
    assert task_order("asc", 0)[:3] == (
        "XuSemEval14_laptop",
        "XuSemEval14_rest",
        "Bing9domains_HitachiRouter",
    )
    assert task_order("asc", 4)[-1] == "Bing3domains_Speaker"
    assert set(task_order("dsc_full", 0)) == set(DSC_FULL_COUNTS)
    assert task_order("20news", 0) == tuple(
        f"20news_task{j}" for j in (3, 4, 6, 7, 0, 1, 8, 5, 9, 2)
    )
    assert task_order("20news", 4)[0] == "20news_task8"


@pytest.mark.parametrize("benchmark, order", [("asc", 5), ("asc", -1), ("nope", 0), ("dsc", 0)])
def test_bad_order_or_benchmark(benchmark, order):
    with pytest.raises(ValueError, match=repr(order) if benchmark == "asc" else benchmark):
        task_order(benchmark, order)


# --- data root ---------------------------------------------------------------------------------


def test_resolve_data_root(tmp_path, monkeypatch):
    monkeypatch.delenv("CTR_JAX_DATA_ROOT", raising=False)
    assert resolve_data_root(tmp_path) == tmp_path.resolve()
    other = tmp_path / "env"
    other.mkdir()
    monkeypatch.setenv("CTR_JAX_DATA_ROOT", str(other))
    assert resolve_data_root(tmp_path) == other.resolve()  # env wins over the config
    monkeypatch.setenv("CTR_JAX_DATA_ROOT", str(tmp_path / "missing"))
    with pytest.raises(DataError, match="missing.*CTR_JAX_DATA_ROOT.*data.root"):
        resolve_data_root(None)
    monkeypatch.delenv("CTR_JAX_DATA_ROOT")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="shared/data"):
        resolve_data_root(None)


# --- malformed benchmark files (no data needed) ------------------------------------------------


def _write_dsc(root: Path, domain: str, lines: dict[str, str]) -> None:
    (root / "dsc").mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        (root / "dsc" / f"{domain}_{split}.tsv").write_text(lines.get(split, "ok\t1\nbad\t-1\n"))


def test_dsc_bad_label_names_file_and_line(tmp_path):
    _write_dsc(tmp_path, "Tools_and_Home_Improvement", {"dev": "a\t1\nb\t0\n"})
    with pytest.raises(DataError, match=r"Tools_and_Home_Improvement_dev\.tsv:2: label '0'"):
        load_benchmark("dsc_full", tmp_path, num_tasks=1)


def test_dsc_bad_field_count_and_missing_file(tmp_path):
    _write_dsc(tmp_path, "Tools_and_Home_Improvement", {"train": "a\t1\nb\tc\t1\n"})
    with pytest.raises(DataError, match=r"Tools_and_Home_Improvement_train\.tsv:2: expected 2"):
        load_benchmark("dsc_small", tmp_path, num_tasks=1)
    _write_dsc(tmp_path, "Tools_and_Home_Improvement", {})
    assert len(load_benchmark("dsc_small", tmp_path, num_tasks=1)[0].train) == 2
    with pytest.raises(DataError, match=r"Pet_Supplies_train\.tsv: file not found"):
        load_benchmark("dsc_full", tmp_path, num_tasks=2)


def test_asc_bad_polarity_names_file_and_key(tmp_path):
    folder = tmp_path / "absa/XuSemEval/asc/14/laptop"
    folder.mkdir(parents=True)
    good = {"a": {"id": "a", "sentence": "s", "term": "t", "polarity": "positive"}}
    bad = {"k7": {"id": "k7", "sentence": "s", "term": "t", "polarity": "+-"}}
    conflict = {**good, "c": {"id": "c", "sentence": "s", "term": "t", "polarity": "conflict"}}
    for split, content in (("train", conflict), ("dev", good), ("test", bad)):
        (folder / f"{split}.json").write_text(json.dumps(content))
    with pytest.raises(DataError, match=r"test\.json: key 'k7': polarity '\+-'"):
        load_benchmark("asc", tmp_path, num_tasks=1)
    (folder / "test.json").write_text(json.dumps(good))
    (task,) = load_benchmark("asc", tmp_path, num_tasks=1)
    assert len(task.train) == 1  # "conflict" dropped


def test_num_tasks_validation(tmp_path):
    for bad in (0, 20, 1.5):
        with pytest.raises(ValueError, match="num_tasks"):
            load_benchmark("asc", tmp_path, num_tasks=bad)


def test_task_validates_labels():
    ex = Example("a", None, 2)
    with pytest.raises(ValueError, match="outside"):
        Task("t", ("a", "b"), (ex,), (), ())
    task = Task("t", ("a", "b"), (Example("a", None, 1),), (), ())
    assert task.num_classes == 2 and task.split("train") == task.train
    with pytest.raises(ValueError, match="split"):
        task.split("valid")  # type: ignore[arg-type]


# --- benchmarks on the real data ---------------------------------------------------------------


@pytest.mark.data
def test_asc_counts(data_root):
    tasks = load_benchmark("asc", data_root)
    assert [t.name for t in tasks] == list(task_order("asc", 0))
    totals = [0, 0, 0]
    for task in tasks:
        expected = ASC_COUNTS[task.name]
        semeval = task.name.startswith("XuSemEval")
        assert task.labels == (
            ("positive", "negative", "neutral") if semeval else ("positive", "negative")
        )
        assert task.num_classes == len(expected[0])
        for i, split in enumerate(SPLITS):
            assert _class_counts(task, split) == expected[i], (task.name, split)
            totals[i] += len(task.split(split))
        ex = task.train[0]
        assert ex.text_pair is not None and ex.text  # term first, sentence second
        assert len(ex.text) < len(ex.text_pair)
    assert tuple(totals) == ASC_TOTALS


@pytest.mark.data
def test_asc_keeps_file_order(data_root):
    (task,) = [t for t in load_benchmark("asc", data_root, 1) if t.name == "Bing3domains_Speaker"]
    raw = json.loads((data_root / "absa/Bing3Domains/asc/Speaker/train.json").read_text())
    assert [ex.text_pair for ex in task.train] == [v["sentence"] for v in raw.values()]


@pytest.mark.data
def test_dsc_full_counts(data_root):
    tasks = load_benchmark("dsc_full", data_root, order=2)
    assert [t.name for t in tasks] == list(task_order("dsc_full", 2))
    for task in tasks:
        assert task.labels == ("negative", "positive")
        for i, split in enumerate(SPLITS):
            assert _class_counts(task, split) == DSC_FULL_COUNTS[task.name][i], (task.name, split)
        assert task.train[0].text_pair is None


@pytest.mark.data
def test_dsc_small_counts_and_subset(data_root):
    small = load_benchmark("dsc_small", data_root, order=3)
    full = {t.name: t for t in load_benchmark("dsc_full", data_root, order=3)}
    for task in small:
        assert _class_counts(task, "train") == DSC_SMALL_TRAIN[task.name], task.name
        assert task.dev == full[task.name].dev and task.test == full[task.name].test
        assert set(task.train) <= set(full[task.name].train)
    other = load_benchmark("dsc_small", data_root, num_tasks=1, seed=1)[0]
    assert other.train != load_benchmark("dsc_small", data_root, num_tasks=1)[0].train


@pytest.mark.data
def test_a_seed_sweep_trains_every_seed_on_the_same_subset(data_root):
    """The run's seed no longer picks DSC small's 200 reviews or the 20News split; data.seed
    does (the original's data_seed, 0 in the paper's runs)."""
    from ctr_jax.config import load_config
    from ctr_jax.training.loop import load_tasks

    for bench in ("dsc_small", "20news"):
        base = [f"data.root={data_root}", f"data.benchmark={bench}", "data.num_tasks=1"]
        train = {
            k: load_tasks(load_config(None, [*base, *k]))[0].train
            for k in ((), ("seed=1",), ("seed=1", "data.seed=1"))
        }
        assert train[("seed=1",)] == train[()], bench
        assert train[("seed=1", "data.seed=1")] != train[()], bench


@pytest.mark.data
def test_news_counts(data_root):
    tasks = load_benchmark("20news", data_root)
    groups = list(NEWS_BYDATE)
    for task in tasks:
        j = int(task.name.removeprefix("20news_task"))
        assert task.labels == (groups[2 * j], groups[2 * j + 1])
        sizes = tuple(len(task.split(s)) for s in SPLITS)
        assert sizes == _expected_news_task(j), task.name
        if j in NEWS_HAND:
            assert sizes == NEWS_HAND[j]
        for split in SPLITS:  # per group, by the label
            per_group = [
                _news_group_counts(sum(NEWS_BYDATE[g]))[SPLITS.index(split)] for g in task.labels
            ]
            assert list(_class_counts(task, split)) == per_group
        train_texts = {ex.text for ex in task.train}
        assert not train_texts & {ex.text for ex in task.test}


@pytest.mark.data
def test_news_seed_changes_split_not_sizes(data_root):
    a = load_benchmark("20news", data_root, num_tasks=1)[0]
    b = load_benchmark("20news", data_root, num_tasks=1)[0]
    c = load_benchmark("20news", data_root, num_tasks=1, seed=1)[0]
    assert a == b
    assert a.train != c.train and len(a.train) == len(c.train)


@pytest.mark.data
@pytest.mark.parametrize("benchmark", BENCHMARKS)
def test_all_orders_load(data_root, benchmark):
    names = None
    for order in range(5):
        tasks = load_benchmark(benchmark, data_root, order)
        assert [t.name for t in tasks] == list(task_order(benchmark, order))
        assert names is None or sorted(t.name for t in tasks) == names
        names = sorted(t.name for t in tasks)
        assert all(t.num_classes == len(t.labels) for t in tasks)
    cut = load_benchmark(benchmark, data_root, 3, num_tasks=2)
    assert [t.name for t in cut] == list(task_order(benchmark, 3)[:2])


# --- custom task folders -----------------------------------------------------------------------


def _write_task(root: Path, name: str, splits: dict[str, list], labels: list | None = None) -> Path:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    if labels is not None:
        (folder / "labels.json").write_text(json.dumps(labels))
    return folder


def _rows(*labels):
    return [{"text": f"text {i}", "label": label} for i, label in enumerate(labels)]


def test_custom_round_trip(tmp_path):
    pairs = [{"text": "battery", "text_pair": "Great battery.", "label": "pos"}] + _rows("neg")
    _write_task(
        tmp_path,
        "b_task",
        {"train": pairs, "dev": _rows("pos"), "test": _rows("neg")},
        labels=["neg", "pos", "neutral"],
    )
    _write_task(tmp_path, "a_task", {"train": _rows(10, 2, 1), "dev": _rows(2), "test": _rows(1)})
    tasks = load_custom(tmp_path)
    assert [t.name for t in tasks] == ["a_task", "b_task"]  # sorted folder names
    a, b = tasks
    assert a.labels == ("1", "2", "10")  # ints sort numerically
    assert [ex.label for ex in a.train] == [2, 1, 0]
    assert b.labels == ("neg", "pos", "neutral") and b.num_classes == 3
    assert b.train == (Example("battery", "Great battery.", 1), Example("text 0", None, 0))
    assert [t.name for t in load_custom(tmp_path, ["b_task"])] == ["b_task"]


def test_custom_string_labels_sorted_and_blank_lines(tmp_path):
    folder = _write_task(
        tmp_path, "t", {"train": _rows("z", "a"), "dev": _rows("a"), "test": _rows("z")}
    )
    (folder / "dev.jsonl").write_text("\n" + json.dumps({"text": "x", "label": "z"}) + "\n\n")
    (task,) = load_custom(tmp_path)
    assert task.labels == ("a", "z") and task.dev == (Example("x", None, 1),)


def test_custom_missing_task_folder(tmp_path):
    _write_task(tmp_path, "t", {s: _rows("a", "b") for s in SPLITS})
    with pytest.raises(DataError, match="nope"):
        load_custom(tmp_path, ["t", "nope"])


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ("{not json", "invalid JSON"),
        ('["a list"]', "expected a JSON object"),
        ('{"label": "a"}', "missing field 'text'"),
        ('{"text": "x"}', "missing field 'label'"),
        ('{"text": 3, "label": "a"}', "'text' must be a string"),
        ('{"text": "x", "text_pair": 1, "label": "a"}', "'text_pair' must be a string"),
        ('{"text": "x", "label": 1.5}', "'label' must be a string or an int"),
        ('{"text": "x", "label": true}', "'label' must be a string or an int"),
        ('{"text": "x", "label": "c"}', "label 'c' not in the task's labels"),
    ],
)
def test_custom_bad_line_names_file_and_line(tmp_path, bad_line, message):
    good = json.dumps({"text": "x", "label": "a"})
    _write_task(
        tmp_path, "t", {"train": _rows("a", "b"), "dev": [good, good, bad_line], "test": _rows("b")}
    )
    with pytest.raises(DataError, match=rf"t/dev\.jsonl:3: .*{message}"):
        load_custom(tmp_path)


def test_custom_label_outside_labels_json(tmp_path):
    _write_task(
        tmp_path,
        "t",
        {"train": _rows("a", "b"), "dev": _rows("a"), "test": _rows(0)},
        labels=["a", "b"],
    )
    with pytest.raises(DataError, match=r"t/test\.jsonl:1: label 0 not in"):
        load_custom(tmp_path)


def test_custom_empty_and_missing_split(tmp_path):
    folder = _write_task(tmp_path, "t", {"train": _rows("a", "b"), "dev": _rows("a")})
    with pytest.raises(DataError, match=r"t/test\.jsonl: split file not found"):
        load_custom(tmp_path)
    (folder / "test.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match=r"t/test\.jsonl: split is empty"):
        load_custom(tmp_path)


def test_custom_bad_labels_file_and_single_class(tmp_path):
    folder = _write_task(tmp_path, "t", {s: _rows("a") for s in SPLITS})
    with pytest.raises(DataError, match=r"t/train\.jsonl: only one label"):
        load_custom(tmp_path)
    (folder / "labels.json").write_text('{"a": 0}')
    with pytest.raises(DataError, match=r"t/labels\.json: expected a JSON list"):
        load_custom(tmp_path)
    (folder / "labels.json").write_text('["a",\n "a"]')
    with pytest.raises(DataError, match=r"t/labels\.json: need at least 2 distinct"):
        load_custom(tmp_path)
    (folder / "labels.json").write_text('["a",\n oops]')
    with pytest.raises(DataError, match=r"t/labels\.json:2: invalid JSON"):
        load_custom(tmp_path)
