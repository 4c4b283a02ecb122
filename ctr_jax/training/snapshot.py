"""What a task checkpoint holds, as flat {path: array} dicts orbax writes and reads back."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ctr_jax.models import hat


def flat(state: nnx.State) -> dict[str, jax.Array]:
    """State -> {"path.to.leaf": array}, the form written to checkpoints."""
    leaves = jax.tree_util.tree_leaves_with_path(state)
    return {
        ".".join(str(getattr(k, "key", getattr(k, "name", k))) for k in p): v for p, v in leaves
    }


def unflat(like: nnx.State, leaves: dict[str, jax.Array]) -> nnx.State:
    """The inverse of ``flat``: `leaves` put back into the tree structure of `like`."""
    paths = list(flat(like))
    treedef = jax.tree_util.tree_structure(like)
    return jax.tree_util.tree_unflatten(treedef, [jnp.asarray(leaves[p]) for p in paths])


def saveable(trainable, masks: hat.HatMasks, acc, mf1, root_key) -> dict:
    """Everything a resume needs; the frozen encoder is reloaded from the backbone instead.

    The small leaves go to orbax as numpy: in a multi-process run it refuses jax arrays that
    live on one process's device only (the key, masks made outside the mesh).
    """
    return {
        "trainable": flat(trainable),
        "masks": {"m1": np.asarray(masks.m1), "m2": np.asarray(masks.m2)},
        "acc": acc,
        "mf1": mf1,
        "root_key": np.asarray(jax.random.key_data(root_key)),
    }
