"""Executors run the steps of a plan; this is the seam where a cluster plugs in.

Every executor hands its steps to the one scheduler, :func:`reconaudit.engine.scheduler.run_ready`,
which runs each step once its dependencies are done, retries a failing step ``retries`` times,
skips what depends on a step that finally failed, and returns a :class:`RunSummary`.  An executor
supplies only where an attempt runs (``submit``) and how to wait for and decode its result
(``wait_any``): in this process, in a process pool (here), or as Ray tasks
(:mod:`reconaudit.engine.ray_executor`).
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from reconaudit.engine.plan import Step
from reconaudit.engine.scheduler import (  # noqa: F401 - re-exported: the executors' result types
    Outcome,
    RunSummary,
    StepFailure,
    failed_outcome,
    run_once,
    run_ready,
)
from reconaudit.engine.steps import StepContext, StepSettings


@dataclass
class ContextSpec(StepSettings):
    """Picklable recipe for a :class:`StepContext`: the store's URL and the keyword-only
    :class:`~reconaudit.engine.steps.StepSettings` (each worker opens its own store handle)."""

    store: str

    def make(self) -> StepContext:
        """Open the store and resolve the device in the current process."""
        from reconaudit.devices import resolve_device
        from reconaudit.engine.store import open_store

        return StepContext(open_store(self.store), **{**self.settings(), "device": str(resolve_device(self.device))})


class Executor(Protocol):
    """Runs steps through :func:`run_ready`; see the module docstring."""

    def run(self, steps: list[Step], ctx: ContextSpec, retries: int = 1) -> RunSummary: ...


def _worker_init(threads: int, setup: Callable[[], None] | None) -> None:
    import torch

    torch.set_num_threads(max(1, threads))
    if setup is not None:
        setup()


class LocalExecutor:
    """In-process execution, or a process pool of ``workers`` for independent steps.

    ``setup`` (a picklable callable, optional) runs once in every pool worker before its first
    step, as Ray's ``worker_process_setup_hook`` does in a Ray worker.
    """

    def __init__(self, workers: int = 1, setup: Callable[[], None] | None = None) -> None:
        self.workers = max(1, int(workers))
        self.setup = setup

    def run(self, steps: list[Step], ctx: ContextSpec, retries: int = 1) -> RunSummary:
        """Run ``steps`` (in dependency order); see the module docstring."""
        if self.workers == 1:
            return self._run_serial(steps, ctx, retries)
        return self._run_pool(steps, ctx, retries)

    @staticmethod
    def _run_serial(steps: list[Step], ctx: ContextSpec, retries: int) -> RunSummary:
        finished: dict[int, Outcome] = {}

        def submit(step: Step) -> int:
            handle = len(finished)
            finished[handle] = run_once(step, ctx)
            return handle

        def wait_any(handles: list[int]) -> list[tuple[int, Outcome]]:
            return [(h, finished[h]) for h in handles]

        return run_ready(steps, submit, wait_any, retries=retries, capacity=1)

    def _run_pool(self, steps: list[Step], ctx: ContextSpec, retries: int) -> RunSummary:
        threads = max(1, (os.cpu_count() or 1) // self.workers)
        with cf.ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                                    initargs=(threads, self.setup)) as pool:

            def wait_any(futures: list[cf.Future]) -> list[tuple[cf.Future, Outcome]]:
                finished, _ = cf.wait(futures, return_when=cf.FIRST_COMPLETED)
                out = []
                for fut in finished:
                    try:
                        out.append((fut, fut.result()))
                    except Exception as e:  # noqa: BLE001 - a worker process died (BrokenProcessPool)
                        out.append((fut, failed_outcome(e)))
                return out

            return run_ready(steps, lambda step: pool.submit(run_once, step, ctx), wait_any, retries=retries,
                             capacity=self.workers)


def make_executor(name: str, workers: int = 1, address: str | None = None,
                  resources: dict | None = None) -> Executor:
    """``local`` (in-process / process pool) or ``ray`` (needs the ``ray`` extra).

    ``resources`` (``execution.resources`` as plain dicts, per step kind) is what each Ray task asks
    of the cluster; the local executor has nothing to schedule it against and ignores it.
    """
    if name == "local":
        return LocalExecutor(workers)
    if name == "ray":
        from reconaudit.engine.ray_executor import RayExecutor

        return RayExecutor(address=address, workers=workers, resources=resources)
    raise ValueError(f"unknown executor {name!r}; allowed: local, ray")
