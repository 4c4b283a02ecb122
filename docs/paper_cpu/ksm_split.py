"""Which of the knowledge-sharing module's tensors flipped an earlier task between two checkpoints.

    python docs/paper_cpu/ksm_split.py RUN_DIR K L U

For each tensor of the KSM and capsule groups (``ctr_jax.drift``'s "ksm" and "capsules"),
task U's test accuracy with that one tensor reverted to its state after task K (the rest after
L), and with only that tensor's change (the rest after K). A record of session 38's analysis
(docs/FINDINGS.md, "ASC at the paper's epochs on this CPU"), run there as
``ksm_split.py <copy of runs/asc_ctr_order0_paper_cpu> 7 8 3``; output in ksm_split_7_8_3.txt.
"""

import sys
from pathlib import Path

import jax
from flax import nnx

from ctr_jax import drift
from ctr_jax.models.variables import group_of
from ctr_jax.training.trained import load_trained


def _is_var(x) -> bool:
    return isinstance(x, nnx.Variable)


def _mix(base, other, name: str):
    """`base` with the one leaf at path `name` taken from `other`."""
    return jax.tree_util.tree_map_with_path(
        lambda p, b, o: o if jax.tree_util.keystr(p) == name else b, base, other, is_leaf=_is_var
    )


def main() -> None:
    run_dir, K, L, u = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    before, after = load_trained(run_dir, K), load_trained(run_dir, L)
    evaluate = drift.make_evaluator(after)
    enc = after.encoded[u]["test"]
    at_k = evaluate(before.trainable, enc, u)["acc"]
    at_l = evaluate(after.trainable, enc, u)["acc"]
    print(f"task {u} {after.tasks[u].name}: acc {at_k:.4f} after task {K}, {at_l:.4f} after {L}")
    leaves = jax.tree_util.tree_flatten_with_path(after.trainable, is_leaf=_is_var)[0]
    for path, leaf in leaves:
        if group_of(leaf) in ("ksm", "capsules"):
            name = jax.tree_util.keystr(path)
            rv = evaluate(_mix(after.trainable, before.trainable, name), enc, u)["acc"]
            al = evaluate(_mix(before.trainable, after.trainable, name), enc, u)["acc"]
            print(f"{name}: reverted {rv:.4f} alone {al:.4f}", flush=True)


if __name__ == "__main__":
    main()
