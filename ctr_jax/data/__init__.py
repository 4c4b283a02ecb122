"""Data: task containers, the paper's benchmark streams, user task folders, tokenisation.

`load_benchmark` / `load_custom` give a `list[Task]` (raw text, training order); `TextEncoder`
turns a split into fixed-length numpy arrays (`Encoded`) for the model.
"""

from ctr_jax.data.benchmarks import BENCHMARKS, load_benchmark, task_order
from ctr_jax.data.custom import load_custom
from ctr_jax.data.tasks import DataError, Example, Task, resolve_data_root
from ctr_jax.data.tokenize import Encoded, TextEncoder

__all__ = [
    "BENCHMARKS",
    "DataError",
    "Encoded",
    "Example",
    "Task",
    "TextEncoder",
    "load_benchmark",
    "load_custom",
    "resolve_data_root",
    "task_order",
]
