"""The continual-learning methods of the framework, as data: a method is a config choice.

Every method shares the frozen encoder, the plugin insertion points (after the attention-output
and the FFN-output dense of every layer), the task streams, the loop, checkpoints and the results
contract. They differ only in the fields below (spec §9.3, §11):

    method  KSM (knowledge sharing)        TSM gating    protocol      paper row (spec §9.1)
    ctr     task capsules + transfer       HAT           sequential    BERT, CTR
            routing (similarity CNN, router)
    bcl     task capsules + 3-iteration    HAT           sequential    BERT, B-CL
            dynamic routing
    hat     none                           HAT           sequential    Adapter-BERT, HAT
    ncl     none                           none          sequential    Adapter-BERT, NCL
    one     none                           none          independent   Adapter-BERT, ONE
    mtl     none                           none          joint         BERT, MTL

The "adapter" of hat/ncl/one/mtl is CTR's task-specific module itself (D -> A -> D, ReLU, residual)
with or without HAT gates, so every method has the same width and the comparison isolates what
each method adds.

Protocols:
- sequential: tasks one after another; after task t every task u <= t is tested (row t).
- independent (ONE): the trainable state is reset to its initial value before every task, so no
  task sees another. Task u's model never changes after u, so A[t, u] = A[u, u] for t >= u (the
  row is filled from the diagonal; forgetting is 0 by construction).
- joint (MTL): one training run over the union of all tasks' training sets (each example keeps
  its own task head), model selection on the pooled dev sets; every row of the matrix holds the
  one final evaluation (forgetting is not defined; reports print it as "-").
"""

from __future__ import annotations

import dataclasses
from typing import Literal

Protocol = Literal["sequential", "independent", "joint"]


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    ksm: Literal["transfer", "dynamic"] | None  # knowledge-sharing module, None = no KSM
    hat: bool  # TSM gated by HAT masks, protected, with the mask regulariser in the loss
    protocol: Protocol
    label: str  # name in reports


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("ctr", "transfer", True, "sequential", "CTR"),
        Method("bcl", "dynamic", True, "sequential", "B-CL"),
        Method("hat", None, True, "sequential", "HAT"),
        Method("ncl", None, False, "sequential", "NCL"),
        Method("one", None, False, "independent", "ONE"),
        Method("mtl", None, False, "joint", "MTL"),
    )
}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known: {sorted(METHODS)}") from None
