"""Sweeps: one config run over several task orders and seeds, one run folder each.

    python run.py --config configs/asc_ncl.yaml --orders 0 1 2 3 4 --seeds 0 1

expands to runs named ``<name>_o<order>_s<seed>`` under the config's runs_dir, learned one after
another. Every run resumes on its own (a finished run is only re-read), so rerunning the same
sweep command after a crash or Ctrl-C continues where it stopped. ``python -m ctr_jax.report``
then aggregates the folders (mean +- std over orders and seeds).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from ctr_jax.config import ConfigError, ExperimentConfig

NUM_ORDERS = 5  # spec §7: five task orders per benchmark


def expand(
    cfg: ExperimentConfig, orders: Sequence[int] | None, seeds: Sequence[int] | None
) -> list[ExperimentConfig]:
    """The configs of a sweep; [cfg] itself when neither orders nor seeds are given."""
    if not orders and not seeds:
        return [cfg]
    orders = list(orders) if orders else [cfg.data.order]
    seeds = list(seeds) if seeds else [cfg.seed]
    if cfg.data.benchmark == "custom" and orders != [cfg.data.order]:
        raise ConfigError("--orders: a custom task stream has one order (data.custom_tasks)")
    if bad := [o for o in orders if not 0 <= o < NUM_ORDERS]:
        raise ConfigError(f"--orders: {bad} not in 0..{NUM_ORDERS - 1}")
    for name, values in (("--orders", orders), ("--seeds", seeds)):
        if len(set(values)) != len(values):
            raise ConfigError(f"{name}: repeated values {values}")
    return [
        dataclasses.replace(
            cfg,
            name=f"{cfg.name}_o{o}_s{s}",
            seed=s,
            data=dataclasses.replace(cfg.data, order=o),
        )
        for o in orders
        for s in seeds
    ]
