"""Executors run the steps of a plan; this is the seam where a cluster plugs in.

An executor gets the steps still to do (in dependency order) and a :class:`StepContext` factory,
runs each step once its dependencies are done, retries a failing step ``retries`` times, skips
what depends on a step that finally failed, and returns a :class:`RunSummary`.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing as mp
import time
import traceback
from dataclasses import dataclass, field
from typing import Protocol

from reconaudit import progress
from reconaudit.engine.plan import Step
from reconaudit.engine.steps import StepContext, run_step

log = logging.getLogger(__name__)


@dataclass
class StepFailure:
    """A step that failed after its retries, with the traceback of the last attempt."""

    step: str
    attempts: int
    error: str
    traceback: str


@dataclass
class RunSummary:
    """What an executor did."""

    computed: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    failed: list[StepFailure] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # not run because a dependency failed
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.skipped


@dataclass
class ContextSpec:
    """Picklable recipe for a :class:`StepContext` (each worker opens its own store handle)."""

    store: str
    device: str = "cpu"
    mixed_precision: bool = False

    def make(self) -> StepContext:
        from reconaudit.devices import resolve_device
        from reconaudit.engine.store import open_store

        return StepContext(open_store(self.store), str(resolve_device(self.device)), self.mixed_precision)


class Executor(Protocol):
    """Runs steps; see the module docstring."""

    def run(self, steps: list[Step], ctx: ContextSpec, retries: int = 1) -> RunSummary: ...


def _attempt(step: Step, ctx_spec: ContextSpec, retries: int) -> tuple[bool, float, StepFailure | None]:
    """Run one step with retries inside the current process."""
    ctx = ctx_spec.make()
    last: StepFailure | None = None
    for attempt in range(1, retries + 2):
        t0 = time.perf_counter()
        try:
            computed = run_step(step, ctx)
            return computed, time.perf_counter() - t0, None
        except KeyboardInterrupt:
            raise
        except Exception as e:  # noqa: BLE001 - reported with traceback
            last = StepFailure(step.id, attempt, f"{type(e).__name__}: {e}", traceback.format_exc())
            log.warning("step %s failed (attempt %d/%d): %s", step.id, attempt, retries + 1, last.error)
            if not getattr(e, "retryable", True):  # a data error (CohortError) fails the same way again
                break
    return False, 0.0, last


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, threads))


class LocalExecutor:
    """In-process execution, or a process pool of ``workers`` for independent steps."""

    def __init__(self, workers: int = 1) -> None:
        self.workers = max(1, int(workers))

    def run(self, steps: list[Step], ctx: ContextSpec, retries: int = 1) -> RunSummary:
        summary = RunSummary()
        if self.workers == 1:
            self._run_serial(steps, ctx, retries, summary)
        else:
            self._run_pool(steps, ctx, retries, summary)
        return summary

    @staticmethod
    def _record(summary: RunSummary, step: Step, computed: bool, secs: float, fail: StepFailure | None) -> None:
        if fail is not None:
            summary.failed.append(fail)
        elif computed:
            summary.computed.append(step.id)
            summary.seconds[step.id] = secs
        else:
            summary.reused.append(step.id)

    def _run_serial(self, steps: list[Step], ctx: ContextSpec, retries: int, summary: RunSummary) -> None:
        bad: set[str] = set()
        with progress.task("audit steps", len(steps)) as bar:
            for step in steps:
                bar.update(description=f"{step.kind} {step.key[:8]}")
                if any(d in bad for d in step.deps):
                    bad.add(step.id)
                    summary.skipped.append(step.id)
                else:
                    computed, secs, fail = _attempt(step, ctx, retries)
                    self._record(summary, step, computed, secs, fail)
                    if fail is not None:
                        bad.add(step.id)
                bar.advance(1)

    def _run_pool(self, steps: list[Step], ctx: ContextSpec, retries: int, summary: RunSummary) -> None:
        import os

        threads = max(1, (os.cpu_count() or 1) // self.workers)
        pending = {s.id: s for s in steps}
        done: set[str] = set()
        bad: set[str] = set()
        running: dict[cf.Future, Step] = {}
        ids = set(pending)
        with (
            cf.ProcessPoolExecutor(
                self.workers, mp_context=mp.get_context("spawn"), initializer=_worker_init, initargs=(threads,)
            ) as pool,
            progress.task("audit steps", len(steps)) as bar,
        ):
            while pending or running:
                for sid, step in list(pending.items()):
                    deps = [d for d in step.deps if d in ids]
                    if any(d in bad for d in deps):
                        bad.add(sid)
                        summary.skipped.append(sid)
                        del pending[sid]
                        bar.advance(1)
                    elif all(d in done for d in deps) and len(running) < self.workers:
                        running[pool.submit(_attempt, step, ctx, retries)] = step
                        del pending[sid]
                if not running:
                    continue
                finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                for fut in finished:
                    step = running.pop(fut)
                    computed, secs, fail = fut.result()
                    self._record(summary, step, computed, secs, fail)
                    (bad if fail is not None else done).add(step.id)
                    bar.advance(1)


def make_executor(name: str, workers: int = 1, address: str | None = None) -> Executor:
    """``local`` (in-process / process pool) or ``ray`` (needs the ``ray`` extra)."""
    if name == "local":
        return LocalExecutor(workers)
    if name == "ray":
        from reconaudit.engine.ray_executor import RayExecutor

        return RayExecutor(address=address, workers=workers)
    raise ValueError(f"unknown executor {name!r}; allowed: local, ray")
