"""The paper's benchmark task streams (spec §7, §12): ASC, DSC small / full, 20News.

Design note. `load_benchmark(name, root, order)` returns `list[Task]` in the order of row `order`
(0..4) of the original code's task-order files, copied verbatim into `_ORDERS` below. Only the
tasks a run needs are read (`num_tasks` = the first k of the order).

Files under the data root (spec §12):
- ASC (19 tasks): `absa/Bing{3,5,9}Domains/asc/<product>/{train,dev,test}.json` and
  `absa/XuSemEval/asc/14/{rest,laptop}/...`, a JSON object `{id: {id, sentence, term, polarity}}`
  kept in file order. `Example(text=term, text_pair=sentence)`. Labels: SemEval
  `(positive, negative, neutral)`, Bing `(positive, negative)` with `+` -> 0, `-` -> 1. Polarity
  "conflict" is dropped (the paper removes it; the shipped files contain none).
- DSC (10 domains): `dsc/<Domain>_{train,dev,test}.tsv`, `text<TAB>label`, label `-1` -> 0
  ("negative"), `1` -> 1 ("positive"). `dsc_small` keeps 200 training reviews chosen exactly as the
  original code does: line indices as *string* keys in sorted order ("0", "1", "10", "100", ...),
  `random.Random(seed).shuffle`, first 200. Dev and test are the full files.
- 20News (10 tasks): read from `20news-bydate.tar.gz`. DEVIATION from the paper, which used
  20news-19997 with full headers (not on disk): bydate train+test are pooled per group (documents
  in (train, test) then numeric-id order), permuted with `np.random.default_rng(seed)` (a fresh
  generator per group), and split with the original code's rule: `held = ceil(n / 5)`,
  `test = ceil(held / 2)`, `dev = held - test`, `train = n - held` (train = first part of the
  permutation, then dev, then test). Task j = groups 2j (label 0) and 2j+1 (label 1) of
  `NEWS_GROUPS`; a task's split is group 2j's examples followed by group 2j+1's. Task names are
  `20news_task<j>`; `Task.labels` are the two group names.

`seed` is the code's `data_seed`: it only affects `dsc_small` (the subset) and `20news` (the split).
"""

from __future__ import annotations

import functools
import json
import random
import re
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ctr_jax.data.tasks import SPLITS, DataError, Example, Task

BENCHMARKS = ("asc", "dsc_small", "dsc_full", "20news")
NUM_ORDERS = 5
DSC_SMALL_TRAIN_SIZE = 200

# --- ASC --------------------------------------------------------------------------------------

_SEMEVAL_LABELS = ("positive", "negative", "neutral")
_BING_LABELS = ("positive", "negative")
_POLARITY = {"positive": 0, "negative": 1, "neutral": 2, "+": 0, "-": 1}
_DROPPED_POLARITIES = frozenset({"conflict"})
_BING_PRODUCTS = {
    3: ("Speaker", "Router", "Computer"),
    5: (
        "Nokia6610",
        "NikonCoolpix4300",
        "CreativeLabsNomadJukeboxZenXtra40GB",
        "CanonG3",
        "ApexAD2600Progressive",
    ),
    9: (
        "CanonPowerShotSD500",
        "CanonS100",
        "DiaperChamp",
        "HitachiRouter",
        "ipod",
        "LinksysRouter",
        "MicroMP3",
        "Nokia6600",
        "Norton",
    ),
}
# task name -> (folder relative to the data root, label names); spec §7.1 table order.
ASC_TASKS: dict[str, tuple[str, tuple[str, ...]]] = {
    "XuSemEval14_rest": ("absa/XuSemEval/asc/14/rest", _SEMEVAL_LABELS),
    "XuSemEval14_laptop": ("absa/XuSemEval/asc/14/laptop", _SEMEVAL_LABELS),
    **{
        f"Bing{k}domains_{product}": (f"absa/Bing{k}Domains/asc/{product}", _BING_LABELS)
        for k, products in _BING_PRODUCTS.items()
        for product in products
    },
}

# --- DSC --------------------------------------------------------------------------------------

DSC_DOMAINS = (
    "Video_Games",
    "Toys_and_Games",
    "Tools_and_Home_Improvement",
    "Sports_and_Outdoors",
    "Pet_Supplies",
    "Patio_Lawn_and_Garden",
    "Office_Products",
    "Musical_Instruments",
    "Movies_and_TV",
    "Kindle_Store",
)
_DSC_LABELS = ("negative", "positive")
_DSC_LABEL_MAP = {"-1": 0, "1": 1}

# --- 20News -----------------------------------------------------------------------------------

NEWS_TARBALL = "20news-bydate.tar.gz"
# Fixed group order of spec §7.3: task j = groups 2j, 2j+1; label = position mod 2.
NEWS_GROUPS = (
    "comp.graphics",
    "comp.os.ms-windows.misc",
    "comp.sys.ibm.pc.hardware",
    "comp.sys.mac.hardware",
    "comp.windows.x",
    "rec.autos",
    "rec.motorcycles",
    "rec.sport.baseball",
    "rec.sport.hockey",
    "sci.crypt",
    "sci.electronics",
    "sci.med",
    "sci.space",
    "misc.forsale",
    "talk.politics.misc",
    "talk.politics.guns",
    "talk.politics.mideast",
    "talk.religion.misc",
    "alt.atheism",
    "soc.religion.christian",
)
NEWS_TASKS = tuple(f"20news_task{j}" for j in range(len(NEWS_GROUPS) // 2))

# --- task orders (spec §7, rows 0-4 of the original order files) ------------------------------

_ASC_ORDERS = (
    "SE14-laptop, SE14-rest, B9-HitachiRouter, B9-CanonS100, B9-ipod, B5-ApexAD2600Progressive, "
    "B9-Nokia6600, B9-DiaperChamp, B9-CanonPowerShotSD500, B5-CreativeLabsNomadJukeboxZenXtra40GB, "
    "B9-Norton, B9-MicroMP3, B3-Speaker, B9-LinksysRouter, B5-Nokia6610, B5-NikonCoolpix4300, "
    "B5-CanonG3, B3-Computer, B3-Router",
    "B5-CanonG3, B3-Computer, B9-DiaperChamp, B3-Router, B5-CreativeLabsNomadJukeboxZenXtra40GB, "
    "B5-Nokia6610, B9-Norton, SE14-rest, B5-NikonCoolpix4300, B9-HitachiRouter, B9-MicroMP3, "
    "B9-LinksysRouter, B5-ApexAD2600Progressive, B9-ipod, B9-Nokia6600, B9-CanonPowerShotSD500, "
    "B3-Speaker, B9-CanonS100, SE14-laptop",
    "B9-CanonPowerShotSD500, B9-LinksysRouter, B5-NikonCoolpix4300, B9-Norton, B3-Computer, "
    "B9-MicroMP3, B5-ApexAD2600Progressive, SE14-rest, B9-ipod, B5-CanonG3, SE14-laptop, "
    "B5-Nokia6610, B9-HitachiRouter, B3-Speaker, B9-DiaperChamp, B9-CanonS100, B3-Router, "
    "B9-Nokia6600, B5-CreativeLabsNomadJukeboxZenXtra40GB",
    "B5-CanonG3, B3-Computer, B9-CanonPowerShotSD500, B9-Nokia6600, B5-NikonCoolpix4300, "
    "B9-LinksysRouter, B5-ApexAD2600Progressive, B3-Router, B3-Speaker, SE14-laptop, B9-CanonS100, "
    "SE14-rest, B9-Norton, B5-CreativeLabsNomadJukeboxZenXtra40GB, B9-ipod, B5-Nokia6610, "
    "B9-MicroMP3, B9-DiaperChamp, B9-HitachiRouter",
    "B9-Norton, B3-Router, B3-Computer, SE14-rest, B9-LinksysRouter, B5-ApexAD2600Progressive, "
    "SE14-laptop, B9-Nokia6600, B9-DiaperChamp, B9-HitachiRouter, B9-CanonPowerShotSD500, "
    "B5-NikonCoolpix4300, B9-MicroMP3, B9-CanonS100, B9-ipod, "
    "B5-CreativeLabsNomadJukeboxZenXtra40GB, B5-CanonG3, B5-Nokia6610, B3-Speaker",
)
_DSC_ORDERS = (
    "Tools_and_Home_Improvement, Pet_Supplies, Office_Products, Kindle_Store, Movies_and_TV, "
    "Video_Games, Musical_Instruments, Sports_and_Outdoors, Patio_Lawn_and_Garden, Toys_and_Games",
    "Sports_and_Outdoors, Office_Products, Musical_Instruments, Movies_and_TV, Pet_Supplies, "
    "Video_Games, Toys_and_Games, Kindle_Store, Patio_Lawn_and_Garden, Tools_and_Home_Improvement",
    "Sports_and_Outdoors, Toys_and_Games, Tools_and_Home_Improvement, Video_Games, Pet_Supplies, "
    "Musical_Instruments, Movies_and_TV, Patio_Lawn_and_Garden, Office_Products, Kindle_Store",
    "Sports_and_Outdoors, Movies_and_TV, Musical_Instruments, Tools_and_Home_Improvement, "
    "Pet_Supplies, Video_Games, Office_Products, Patio_Lawn_and_Garden, Toys_and_Games, "
    "Kindle_Store",
    "Toys_and_Games, Movies_and_TV, Pet_Supplies, Kindle_Store, Musical_Instruments, "
    "Patio_Lawn_and_Garden, Office_Products, Sports_and_Outdoors, Tools_and_Home_Improvement, "
    "Video_Games",
)
_NEWS_ORDERS = (
    "3 4 6 7 0 1 8 5 9 2",
    "5 8 9 4 3 0 1 6 2 7",
    "6 7 1 4 5 3 8 2 0 9",
    "3 4 1 5 8 9 7 0 2 6",
    "8 5 3 0 9 7 2 6 4 1",
)


def _expand_asc(abbrev: str) -> str:
    """'SE14-laptop' -> 'XuSemEval14_laptop', 'B9-Norton' -> 'Bing9domains_Norton'."""
    prefix, _, rest = abbrev.partition("-")
    if prefix == "SE14":
        return f"XuSemEval14_{rest}"
    if m := re.fullmatch(r"B([359])", prefix):
        return f"Bing{m.group(1)}domains_{rest}"
    raise ValueError(f"unknown ASC task abbreviation {abbrev!r}")


def _split_commas(row: str) -> list[str]:
    return [s.strip() for s in row.split(",")]


_ORDER_TABLE: dict[str, tuple[tuple[str, ...], ...]] = {
    "asc": tuple(tuple(_expand_asc(a) for a in _split_commas(row)) for row in _ASC_ORDERS),
    "dsc_small": tuple(tuple(_split_commas(row)) for row in _DSC_ORDERS),
    "dsc_full": tuple(tuple(_split_commas(row)) for row in _DSC_ORDERS),
    "20news": tuple(tuple(NEWS_TASKS[int(i)] for i in row.split()) for row in _NEWS_ORDERS),
}


def _check_benchmark(benchmark: str) -> None:
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; expected one of {BENCHMARKS}")


def task_order(benchmark: str, order: int) -> tuple[str, ...]:
    """Task names of `benchmark` in the sequence of row `order` (0..4) of spec §7."""
    _check_benchmark(benchmark)
    if isinstance(order, bool) or not isinstance(order, int) or not 0 <= order < NUM_ORDERS:
        raise ValueError(
            f"task order {order!r} for {benchmark!r} must be an int in [0, {NUM_ORDERS})"
        )
    return _ORDER_TABLE[benchmark][order]


def load_benchmark(
    benchmark: str,
    data_root: Path,
    order: int = 0,
    *,
    num_tasks: int | None = None,
    seed: int = 0,
) -> list[Task]:
    """Loads the tasks of `benchmark` in the sequence of `task_order(benchmark, order)`.

    `num_tasks` keeps (and reads) only the first k tasks of that sequence. `seed` is the data seed
    (DSC-small subset, 20News split); the paper's runs use 0.
    """
    names = task_order(benchmark, order)
    if num_tasks is not None:
        if isinstance(num_tasks, bool) or not isinstance(num_tasks, int):
            raise ValueError(f"num_tasks must be an int or None, got {num_tasks!r}")
        if not 1 <= num_tasks <= len(names):
            raise ValueError(
                f"num_tasks={num_tasks} for {benchmark!r}: must be in [1, {len(names)}]"
            )
        names = names[:num_tasks]
    data_root = Path(data_root)
    loader: Callable[[str], Task]
    match benchmark:
        case "asc":
            loader = functools.partial(_load_asc_task, data_root)
        case "dsc_small":
            loader = functools.partial(_load_dsc_task, data_root, small=True, seed=seed)
        case "dsc_full":
            loader = functools.partial(_load_dsc_task, data_root, small=False, seed=seed)
        case "20news":
            loader = functools.partial(_load_news_task, data_root, seed=seed)
    return [loader(name) for name in names]


# --- loaders ----------------------------------------------------------------------------------


def _require_file(path: Path) -> Path:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    return path


def _read_asc_split(path: Path, labels: tuple[str, ...]) -> tuple[Example, ...]:
    try:
        raw = json.loads(_require_file(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from e
    if isinstance(raw, dict) and set(raw) == {"data", "meta"}:  # SemEval-15/16 layout
        raw = raw["data"]
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected a JSON object {{id: {{sentence, term, polarity}}}}")
    examples = []
    for key, item in raw.items():  # dict insertion order = file order
        if not isinstance(item, dict):
            raise DataError(f"{path}: key {key!r}: expected an object")
        missing = [f for f in ("sentence", "term", "polarity") if f not in item]
        if missing:
            raise DataError(f"{path}: key {key!r}: missing field(s) {missing}")
        polarity = item["polarity"]
        if polarity in _DROPPED_POLARITIES:
            continue
        if polarity not in _POLARITY or _POLARITY[polarity] >= len(labels):
            raise DataError(f"{path}: key {key!r}: polarity {polarity!r} not allowed for {labels}")
        examples.append(
            Example(text=item["term"], text_pair=item["sentence"], label=_POLARITY[polarity])
        )
    return tuple(examples)


def _load_asc_task(data_root: Path, name: str) -> Task:
    folder, labels = ASC_TASKS[name]
    splits = {s: _read_asc_split(data_root / folder / f"{s}.json", labels) for s in SPLITS}
    return Task(name=name, labels=labels, **splits)


def _read_dsc_split(path: Path) -> list[Example]:
    examples = []
    with _require_file(path).open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 2:
                raise DataError(
                    f"{path}:{lineno}: expected 2 tab-separated fields, got {len(fields)}"
                )
            text, label = fields
            if label not in _DSC_LABEL_MAP:
                raise DataError(f"{path}:{lineno}: label {label!r} is not 1 or -1")
            examples.append(Example(text=text, text_pair=None, label=_DSC_LABEL_MAP[label]))
    return examples


def dsc_small_subset(
    train: list[Example], seed: int = 0, size: int = DSC_SMALL_TRAIN_SIZE
) -> list[Example]:
    """The original code's `--train_data_size` cut: string-sorted line-index keys, then
    `random.Random(seed).shuffle`, then the first `size` examples."""
    keyed = {str(i): ex for i, ex in enumerate(train)}
    ordered = [keyed[k] for k in sorted(keyed)]  # "0", "1", "10", "100", ...
    random.Random(seed).shuffle(ordered)
    return ordered[:size]


def _load_dsc_task(data_root: Path, name: str, *, small: bool, seed: int) -> Task:
    splits = {s: _read_dsc_split(data_root / "dsc" / f"{name}_{s}.tsv") for s in SPLITS}
    if small:
        splits["train"] = dsc_small_subset(splits["train"], seed)
    return Task(name=name, labels=_DSC_LABELS, **{s: tuple(v) for s, v in splits.items()})


@functools.lru_cache(maxsize=4)
def _read_news_tarball(path: str) -> dict[str, tuple[str, ...]]:
    """group -> documents (latin-1), bydate train then test, each in numeric doc-id order.
    Parsed once per process and path."""
    docs: dict[str, list[tuple[int, int, str]]] = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                parts = member.name.split("/")
                if len(parts) != 3 or parts[0] not in ("20news-bydate-train", "20news-bydate-test"):
                    continue
                split_rank = 0 if parts[0].endswith("train") else 1
                doc_id = int(parts[2]) if parts[2].isdigit() else -1
                f = tar.extractfile(member)
                assert f is not None  # regular file
                text = f.read().decode("latin-1")
                docs.setdefault(parts[1], []).append((split_rank, doc_id, text))
    except (OSError, tarfile.TarError, EOFError) as e:
        raise DataError(f"{path}: cannot read tarball ({e})") from e
    return {group: tuple(t for *_, t in sorted(items)) for group, items in docs.items()}


def news_split_sizes(n: int) -> tuple[int, int, int]:
    """(train, dev, test) sizes for a group of n posts: held = ceil(n/5), test = ceil(held/2)."""
    held = -(-n // 5)
    test = -(-held // 2)
    return n - held, held - test, test


def _split_news_group(docs: tuple[str, ...], seed: int) -> tuple[list[str], list[str], list[str]]:
    n_train, n_dev, _ = news_split_sizes(len(docs))
    perm = np.random.default_rng(seed).permutation(len(docs))
    picked = [docs[i] for i in perm]
    return picked[:n_train], picked[n_train : n_train + n_dev], picked[n_train + n_dev :]


def _load_news_task(data_root: Path, name: str, *, seed: int) -> Task:
    path = _require_file(data_root / NEWS_TARBALL)
    groups = _read_news_tarball(str(path.resolve()))
    j = NEWS_TASKS.index(name)
    pair = NEWS_GROUPS[2 * j : 2 * j + 2]
    splits: dict[str, list[Example]] = {s: [] for s in SPLITS}
    for label, group in enumerate(pair):
        if group not in groups:
            raise DataError(f"{path}: newsgroup {group!r} not found in the tarball")
        for split, texts in zip(SPLITS, _split_news_group(groups[group], seed), strict=True):
            splits[split].extend(Example(text=t, text_pair=None, label=label) for t in texts)
    return Task(name=name, labels=pair, **{s: tuple(v) for s, v in splits.items()})
