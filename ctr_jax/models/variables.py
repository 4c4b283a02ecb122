"""Variable types: trainability is a type, not a name.

Every parameter of the model is an ``nnx.Param`` subclass, and the training code splits the model
by these types (``nnx.split(model, PluginParam, TaskEmbedding, ...)``). Nothing selects parameters
by matching substrings of their paths. Spec §2 lists what is frozen and what is trained:

- ``BertParam``: the pretrained encoder (embeddings, Q/K/V/O, FFN, pooler). Frozen.
- ``LayerNormParam``: the two LayerNorms inside every transformer layer. Trained, unprotected.
- ``PluginParam``: weights of the CL-plugins shared by all tasks (TSM MLP, similarity CNN, ...).
- ``CapsuleParam``: per-task capsule weights; rows of future tasks are frozen.
- ``TaskEmbedding``: HAT gate embeddings; only the current task's row is ever updated.
- ``HeadParam``: per-task classifier heads; only the current task's head is updated.
- ``Buffer``: a constant array that is part of the model but never trained (not a Param).

Metadata on a Variable (``nnx.Variable(value, **metadata)``) carries what the optimizer needs:
``task_axis`` (the axis that indexes tasks, for the per-task types and the KSM's routing
matrices), ``own_row`` (True on a per-task KSM projection: like a head, only the current task's
row is ever updated), ``decay`` (False for biases: no weight decay) and ``hat`` (``"w1" | "b1" |
"w2" | "b2"`` on the four HAT-masked TSM leaves), and ``tsm`` (the same roles on the TSM's four
leaves whether or not HAT gates them, so an analysis can find the adapter of NCL, ONE and MTL
too). ``training/optim.py`` reads only these, never parameter names.

``group_of`` files every trainable Variable under one of ``GROUPS`` by the same type and
metadata: the optimizer's per-group learning-rate factors and ``ctr_jax.drift`` read it.
"""

import jax
from flax import nnx


class BertParam(nnx.Param):
    """A pretrained, frozen encoder weight."""


class LayerNormParam(nnx.Param):
    """Scale or bias of a LayerNorm inside a transformer layer (trainable in CTR, spec §2)."""


class PluginParam(nnx.Param):
    """A CL-plugin weight shared by all tasks."""


class CapsuleParam(nnx.Param):
    """A per-task weight stacked on a leading task axis [T, ...]; future rows get no update."""


class TaskEmbedding(nnx.Param):
    """A HAT gate embedding [T, H]; the gate of task t is sigmoid(s * e[t])."""


class HeadParam(nnx.Param):
    """Per-task classification heads stacked on a leading task axis [T, ...]."""


class Buffer(nnx.Variable):
    """A constant array stored in the model (e.g. the valid-class mask of the heads)."""


# Parameter groups of the trainable state: the layers' LayerNorms; the TSM (CTR's and B-CL's
# HAT-masked MLP, the adapter of HAT, NCL, ONE and MTL); the knowledge-sharing module's shared
# weights (routing matrices, similarity CNN, router, output projection) and its per-task
# capsules; the HAT gate embeddings; the task heads.
GROUPS = ("layernorms", "tsm", "ksm", "capsules", "hat_embeddings", "heads")


def group_of(v: nnx.Variable) -> str:
    """The GROUPS entry of a trainable Variable, from its type and metadata alone."""
    if isinstance(v, LayerNormParam):
        return "layernorms"
    if v.get_metadata().get("tsm") is not None:
        return "tsm"
    if isinstance(v, CapsuleParam):
        return "capsules"
    if isinstance(v, TaskEmbedding):
        return "hat_embeddings"
    if isinstance(v, HeadParam):
        return "heads"
    return "ksm"


def groups_present(trainable: nnx.State) -> list[str]:
    """The GROUPS a state has leaves in, in GROUPS order."""
    leaves = jax.tree.leaves(trainable, is_leaf=lambda x: isinstance(x, nnx.Variable))
    found = {group_of(v) for v in leaves}
    return [g for g in GROUPS if g in found]
