"""Runs a sweep's runs as child processes, several at a time (``run.py --jobs N``).

One accelerator rarely needs a whole CL run: at batch 32 a paper-epoch ASC run keeps an H200
far from busy (``nvidia-smi dmon`` showed many idle samples with three runs sharing it). So a
sweep over methods x orders x seeds goes faster as N runs side by side on the same device(s).

Every run is an ordinary ``run.py`` invocation for one config (its own process, so its own
JAX runtime and checkpoints): it writes its output to ``<run_dir>/log.txt`` (appended, so a
resumed run keeps its history), and resumes on its own when the sweep is started again. This
module only schedules them: at most N at a time, in the given order, with a line when each
starts and ends, a periodic status line, and a final table of every run's Acc / MF1 /
forgetting read from its ``results.json``.

Nothing here imports jax: the parent only launches and waits.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger("ctr_jax.sweep")

LOG_FILE = "log.txt"
# GPU memory share of each of N runs on one device: JAX preallocates 75% by default, so two
# runs would already exhaust the device. Unused by the CPU backend.
_MEM_FRACTION_ENV = "XLA_PYTHON_CLIENT_MEM_FRACTION"
_STATUS_EVERY_S = 300.0
_GRACE_S = 10.0  # after Ctrl-C: time for the children to stop on the signal they received
_STOP_S = 120.0  # then SIGINT from us, and this long before SIGKILL


class Terminated(Exception):
    """The sweep's parent got SIGTERM (``kill``, ``timeout``, a batch scheduler's stop)."""


def _raise_terminated(signum, frame):
    raise Terminated(f"signal {signum}")


@dataclasses.dataclass(frozen=True)
class Job:
    """One run of a sweep: its name, run folder and the run.py arguments that reproduce it."""

    name: str
    run_dir: Path
    argv: tuple[str, ...]


@dataclasses.dataclass
class Outcome:
    """How a job ended: its exit code (None = never started) and wall time in seconds."""

    job: Job
    returncode: int | None = None
    seconds: float = 0.0


def child_env(jobs: int, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The children's environment: the parent's, plus a GPU memory share of 0.9 / jobs (at most
    JAX's default 0.75) unless XLA_PYTHON_CLIENT_MEM_FRACTION is set already."""
    env = dict(os.environ if environ is None else environ)
    if _MEM_FRACTION_ENV not in env:
        env[_MEM_FRACTION_ENV] = f"{min(0.75, 0.9 / jobs):.3f}"
    return env


def summary_line(run_dir: Path) -> str:
    """'Acc .. MF1 .. FR ..' from a finished run's results.json ('no results' if missing)."""
    path = run_dir / "results.json"
    if not path.exists():
        return "no results"
    s = json.loads(path.read_text()).get("summary", {})
    parts = [f"{s.get('tasks_learned', 0)} tasks"]
    for key, label in (("acc", "Acc"), ("mf1", "MF1"), ("forgetting", "FR")):
        if s.get(key) is not None:
            parts.append(f"{label} {100 * s[key]:.2f}")
    return ", ".join(parts)


def _last_line(path: Path, limit: int = 160) -> str:
    """The last non-empty line of a (possibly large) log file, trimmed to `limit` characters."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines = [ln for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][-limit:] if lines else ""


def run_jobs(
    jobs: Sequence[Job], max_parallel: int, command: Sequence[str], *, poll_s: float = 1.0
) -> list[Outcome]:
    """Runs `command + job.argv` for every job, at most `max_parallel` at a time, in order.

    Returns one Outcome per job (same order). On KeyboardInterrupt the running children are
    stopped (they keep every finished task: a rerun resumes them), and the interrupt is raised
    again once they have exited. SIGTERM to this process is passed on to the children at once,
    then ``Terminated`` is raised once they have exited: a parent stopped by ``kill`` or a
    scheduler never leaves its runs going on unsupervised. Each child's stdout and stderr go to
    <run_dir>/log.txt.
    """
    if max_parallel < 1:
        raise ValueError(f"max_parallel must be >= 1, got {max_parallel}")
    env = child_env(max_parallel)
    outcomes = {job.name: Outcome(job) for job in jobs}
    waiting = list(jobs)
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    last_status = time.monotonic()
    # signal.signal works in the main thread only; elsewhere SIGTERM keeps its disposition.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None
    try:
        while waiting or running:
            while waiting and len(running) < max_parallel:
                job = waiting.pop(0)
                job.run_dir.mkdir(parents=True, exist_ok=True)
                with (job.run_dir / LOG_FILE).open("ab") as out:
                    proc = subprocess.Popen(
                        [*command, *job.argv], stdout=out, stderr=subprocess.STDOUT, env=env
                    )
                running[job.name] = (proc, time.monotonic())
                log.info("started %s (pid %d), log %s", job.name, proc.pid,
                         job.run_dir / LOG_FILE)  # fmt: skip
            time.sleep(poll_s)
            for name, (proc, t0) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[name]
                out = outcomes[name]
                out.returncode, out.seconds = proc.returncode, time.monotonic() - t0
                done = sum(o.returncode is not None for o in outcomes.values())
                if proc.returncode == 0:
                    log.info("finished %s in %s (%d/%d done): %s", name, _hms(out.seconds),
                             done, len(jobs), summary_line(out.job.run_dir))  # fmt: skip
                else:
                    log.error("%s failed with exit code %d after %s; see %s", name,
                              proc.returncode, _hms(out.seconds),
                              out.job.run_dir / LOG_FILE)  # fmt: skip
            if running and time.monotonic() - last_status >= _STATUS_EVERY_S:
                last_status = time.monotonic()
                log.info("%d running, %d waiting", len(running), len(waiting))
                for name in running:
                    log.info("  %s: %s", name, _last_line(outcomes[name].job.run_dir / LOG_FILE))
    except KeyboardInterrupt:
        _stop([proc for proc, _ in running.values()])
        raise
    except Terminated:
        log.warning("SIGTERM: stopping %d running runs (%s)", len(running), ", ".join(running))
        _stop([proc for proc, _ in running.values()], signal.SIGTERM, grace_s=0.0)
        raise
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    return [outcomes[job.name] for job in jobs]


def _stop(
    procs: list[subprocess.Popen], sig: int = signal.SIGINT, grace_s: float | None = None
) -> None:
    """Stops children. After a Ctrl-C (SIGINT): a terminal's Ctrl-C reaches them directly (same
    process group), so first give them `grace_s` (default _GRACE_S) to stop on it; a parent
    interrupted alone forwards it. Then `sig`, and SIGKILL after _STOP_S."""
    deadline = time.monotonic() + (_GRACE_S if grace_s is None else grace_s)
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = [p for p in procs if p.poll() is None]
    for p in alive:
        p.send_signal(sig)
    for p in alive:
        try:
            p.wait(timeout=_STOP_S)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _hms(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
