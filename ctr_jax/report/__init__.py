"""Paper-style tables, paired comparisons and plots from run folders (``python -m ctr_jax.report``;
usage in ``ctr_jax.report.cli``).

    runs.py     results.json files -> run records (--by values, --after-task cuts)
    table.py    methods x benchmarks: Acc, MF1, forgetting, max drop, the paper's figures
    pairing.py  the reference method against each other one, run by run and task by task
    plots.py    accuracy-matrix heatmaps and the seen-task accuracy curve
    labels.py   names, sort orders and number formats the others share
    cli.py      write_report (everything into one folder) and the command line
"""

from ctr_jax.report.cli import main, write_report
from ctr_jax.report.labels import BENCH_LABEL, BENCHMARKS, benchmark_tasks, tasks_label
from ctr_jax.report.pairing import paired, paired_markdown, paired_tasks
from ctr_jax.report.plots import plot_curves, plot_heatmap, seen_task_curve
from ctr_jax.report.runs import ReportError, after_task, find_results, load_runs
from ctr_jax.report.table import PAPER, aggregate, csv_table, markdown_table

__all__ = [
    "BENCHMARKS",
    "BENCH_LABEL",
    "PAPER",
    "ReportError",
    "after_task",
    "aggregate",
    "benchmark_tasks",
    "csv_table",
    "find_results",
    "load_runs",
    "main",
    "markdown_table",
    "paired",
    "paired_markdown",
    "paired_tasks",
    "plot_curves",
    "plot_heatmap",
    "seen_task_curve",
    "tasks_label",
    "write_report",
]
