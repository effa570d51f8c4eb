"""Run an audit's steps as Ray tasks, on one machine or a cluster.

Each step becomes one Ray task with the resources the config asks for its kind
(``execution.resources``: CPUs, GPUs, memory), and takes the result of every step it depends on as
an argument, so Ray starts it only when they are done; a step shared by many cells (a diagnostic
model) is one task that all of them wait for.  Artifacts go to a store every worker sees (a shared
filesystem path or an fsspec URL); its writes are atomic, so two workers racing on one step leave
one artifact.

Failures: a Python exception in a step is retried ``retries`` times inside the task and then
reported with its traceback; a worker that dies (killed, out of memory) is restarted by Ray up to
``retries`` times (``max_retries``).  A step whose dependency failed is skipped, the other cells go
on, and a re-run computes only what is missing.
"""

from __future__ import annotations

import logging
import time

from reconaudit.engine.executors import ContextSpec, RunSummary, StepFailure, _attempt
from reconaudit.engine.plan import Step

log = logging.getLogger(__name__)


def _ray_step(step: Step, ctx: ContextSpec, retries: int, *upstream: tuple) -> tuple:
    """Body of one Ray task: skip when an upstream step failed, else run with retries."""
    for up in upstream:
        if up[0] in ("failed", "skipped"):
            return ("skipped", step.id, 0.0, None)
    computed, secs, fail = _attempt(step, ctx, retries)
    if fail is not None:
        return ("failed", step.id, 0.0, fail)
    return ("computed" if computed else "reused", step.id, secs, None)


class RayExecutor:
    """Executor backed by Ray (``pip install 'reconaudit[ray]'``).

    Parameters
    ----------
    address:
        Ray cluster address (``"auto"`` to join the cluster started with ``ray start``); ``None``
        starts or reuses a local Ray instance.
    workers:
        Ignored by Ray's scheduler (resources decide parallelism); kept for interface symmetry.
    resources:
        Per step kind, ``{"cpus": 1, "gpus": 0, "memory_gb": None}``; set by the engine from
        ``execution.resources``.
    init_kwargs:
        Extra arguments for ``ray.init`` when this executor starts Ray itself
        (e.g. ``{"num_cpus": 2, "object_store_memory": 80_000_000}``).
    """

    def __init__(self, address: str | None = None, workers: int = 1, resources: dict | None = None,
                 init_kwargs: dict | None = None) -> None:
        try:
            import ray  # noqa: F401
        except ImportError as e:  # pragma: no cover - exercised without the extra
            raise ImportError("the Ray executor needs Ray: pip install 'reconaudit[ray]'") from e
        self.address = address
        self.workers = workers
        self.resources = resources or {}
        self.init_kwargs = init_kwargs or {}

    def _options(self, kind: str, retries: int) -> dict:
        r = self.resources.get(kind, {})
        opts = {"num_cpus": float(r.get("cpus", 1.0)), "num_gpus": float(r.get("gpus", 0.0)),
                "max_retries": int(retries), "retry_exceptions": False}
        if r.get("memory_gb"):
            opts["memory"] = int(float(r["memory_gb"]) * 1024**3)
        return opts

    def run(self, steps: list[Step], ctx: ContextSpec, retries: int = 1) -> RunSummary:
        import ray

        if not ray.is_initialized():
            kw = dict(self.init_kwargs)
            if self.address:
                kw["address"] = self.address
            else:
                kw.setdefault("object_store_memory", 100 * 1024 * 1024)
            ray.init(**kw, log_to_driver=False, include_dashboard=False)
        remote = ray.remote(_ray_step)
        refs: dict[str, ray.ObjectRef] = {}
        for step in steps:
            ups = [refs[d] for d in step.deps if d in refs]
            refs[step.id] = remote.options(**self._options(step.kind, retries)).remote(step, ctx, retries, *ups)
        summary = RunSummary()
        pending = dict(zip(refs.values(), refs.keys(), strict=True))
        from reconaudit import progress

        t0 = time.perf_counter()
        with progress.task("audit steps (ray)", len(pending)) as bar:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    sid = pending.pop(ref)
                    try:
                        status, _, secs, fail = ray.get(ref)
                    except Exception as e:  # noqa: BLE001 - a worker died beyond its retries
                        status, secs = "failed", 0.0
                        fail = StepFailure(sid, retries + 1, f"{type(e).__name__}: {e}", repr(e))
                    if status == "computed":
                        summary.computed.append(sid)
                        summary.seconds[sid] = secs
                    elif status == "reused":
                        summary.reused.append(sid)
                    elif status == "skipped":
                        summary.skipped.append(sid)
                    else:
                        summary.failed.append(fail)
                    bar.advance(1)
        log.info("ray executor: %d steps in %.1f s", len(refs), time.perf_counter() - t0)
        return summary
