"""Run an audit's steps as Ray tasks, on one machine or a cluster.

Each step becomes one Ray task with the resources the config asks for its kind
(``execution.resources``: CPUs, GPUs, memory in GB; a ``default`` entry applies to every kind
without an entry of its own; otherwise 1 CPU).  The driver submits a step as soon as every step it depends on has finished, so a step
shared by many cells (a diagnostic model used by twenty cells) is one task, run once, that all of
them wait for; independent steps run side by side as far as the cluster's resources allow.
Artifacts go to a store every worker sees (a shared filesystem path or an fsspec URL such as
``s3://bucket/audit``); its commits are atomic, so two workers racing on one step leave one
artifact.

Inside a task, torch is pinned to ``max(1, floor(num_cpus))`` threads, so a step computes the same
numbers whichever node runs it (CPU reductions depend on the thread count) and tasks sharing a node
do not oversubscribe its cores.  A step given no GPU runs on the CPU even where the node has one;
in a task that asked for a GPU, ``device: auto`` resolves on the worker to the GPU Ray assigned it
(Ray sets ``CUDA_VISIBLE_DEVICES``), and ``execution.mixed_precision`` runs it under bfloat16
autocast.  The worker's ``reconaudit`` log messages (GPU utilisation,
failed attempts) are sent back with the result and written to the run log of the driver.

Scheduling, retries and skipping are the engine's one scheduler
(:func:`reconaudit.engine.scheduler.run_ready`); this module supplies only the Ray task of one
attempt, its submission with the step kind's resources, and the decoding of its result.  A Python
exception in a step, and a worker that dies (killed, out of memory, ``os._exit``), both fail the
attempt; the scheduler submits it again, as a new task, up to ``retries`` times, then reports it
with its traceback.  A step whose dependency failed is skipped without being scheduled, the other
cells go on, and a re-run computes only what is missing.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import socket
import time

from reconaudit.engine.executors import ContextSpec
from reconaudit.engine.plan import STEP_KINDS, Step
from reconaudit.engine.scheduler import Outcome, RunSummary, failed_outcome, run_once, run_ready

log = logging.getLogger(__name__)

INSTALL_HINT = "the Ray executor needs Ray: pip install 'reconaudit[ray]' (or use --executor local)"


def step_threads(num_cpus: float) -> int:
    """Torch threads of a task that asked for ``num_cpus`` CPUs: ``max(1, floor(num_cpus))``."""
    return max(1, int(math.floor(float(num_cpus))))


class _Capture(logging.Handler):
    """Collects the ``reconaudit`` log records of one task, to be replayed by the driver."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[tuple[str, int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.records.append((record.name, record.levelno, record.getMessage()))
        except Exception:  # noqa: BLE001 - a bad log call must not fail the step
            self.handleError(record)


def _ray_step(step: Step, ctx: ContextSpec, num_cpus: float, num_gpus: float) -> dict:
    """Body of one Ray task: one attempt of ``step``; return its :class:`Outcome` and its log."""
    import torch

    torch.set_num_threads(step_threads(num_cpus))
    if num_gpus <= 0 and ctx.device != "cpu":
        ctx = dataclasses.replace(ctx, device="cpu")  # no GPU was scheduled for this task
    root = logging.getLogger("reconaudit")
    cap = _Capture()
    old_level = root.level
    if root.getEffectiveLevel() > logging.INFO:
        root.setLevel(logging.INFO)
    root.addHandler(cap)
    try:
        outcome = run_once(step, ctx)
    finally:
        root.removeHandler(cap)
        root.setLevel(old_level)
    return {"outcome": outcome, "log": cap.records, "where": f"{socket.gethostname()}:{os.getpid()}"}


class RayExecutor:
    """Executor backed by Ray (``pip install 'reconaudit[ray]'``).

    Parameters
    ----------
    address:
        Ray cluster address (``"auto"`` joins the cluster this node belongs to, started with
        ``ray start``; ``"HOST:6379"`` a given head node); ``None`` joins a Ray instance already
        started in this process or starts one on this machine.
    workers:
        Not used: Ray's scheduler decides parallelism from the resources of the cluster and of
        each step; kept so every executor takes the same arguments.
    resources:
        Per step kind (``cohort``, ``task_model``, ``predict_clean``, ``degrade``, ``fit_recon``,
        ``reconstruct``, ``score``, ``direct_model``, ``direct_score``, or ``default``), a mapping
        ``{"cpus": 1.0, "gpus": 0.0, "memory_gb": None}``; set by the engine from
        ``execution.resources``.
    init_kwargs:
        Extra arguments for ``ray.init`` when this executor starts or joins Ray itself
        (e.g. ``{"num_cpus": 2, "object_store_memory": 80_000_000}``).

    Raises
    ------
    ImportError
        When Ray is not installed; the message says how to install it.
    """

    def __init__(self, address: str | None = None, workers: int = 1, resources: dict | None = None,
                 init_kwargs: dict | None = None) -> None:
        try:
            import ray  # noqa: F401
        except ImportError as e:
            raise ImportError(INSTALL_HINT) from e
        self.address = address
        self.workers = workers
        self.resources = resources or {}
        self.init_kwargs = init_kwargs or {}

    # ------------------------------------------------------------------ resources
    def request(self, kind: str) -> dict:
        """The resources a step of ``kind`` asks for: ``{"cpus", "gpus", "memory_gb"}``."""
        r = {"cpus": 1.0, "gpus": 0.0, "memory_gb": None}
        src = self.resources.get(kind) or self.resources.get("default") or {}
        r.update({k: v for k, v in dict(src).items() if k in r and (v is not None or k == "memory_gb")})
        return r

    def _check_resources(self) -> None:
        allowed = (*STEP_KINDS, "default")
        for kind, r in self.resources.items():
            if kind not in allowed:
                raise ValueError(f"execution.resources.{kind}: unknown step kind; allowed: {', '.join(allowed)}")
            for k in ("cpus", "gpus"):
                v = float(dict(r).get(k) or 0.0)
                if v < 0:
                    raise ValueError(f"execution.resources.{kind}.{k} must be >= 0, got {v}")

    def _options(self, kind: str) -> dict:
        """``ray.remote`` options of one attempt; Ray itself never retries (the scheduler does)."""
        r = self.request(kind)
        opts = {"num_cpus": float(r["cpus"]), "num_gpus": float(r["gpus"]),
                "max_retries": 0, "retry_exceptions": False}
        if r.get("memory_gb"):
            opts["memory"] = int(float(r["memory_gb"]) * 1024**3)
        return opts

    def _check_feasible(self, steps: list[Step]) -> None:
        import ray

        total = ray.cluster_resources()
        if float(total.get("GPU", 0.0)) > 0 and not any(float(self.request(s.kind)["gpus"]) > 0 for s in steps):
            log.warning(
                "the Ray cluster has %g GPUs but execution.resources asks for none: every step runs on the CPU "
                "(ask for them per step kind, e.g. execution.resources.fit_recon.gpus: 1)", total["GPU"])
        for kind in sorted({s.kind for s in steps}):
            r = self.request(kind)
            src = kind if self.resources.get(kind) else "default"
            for key, name in (("cpus", "CPU"), ("gpus", "GPU")):
                have = float(total.get(name, 0.0))
                if float(r[key]) > have:
                    raise ValueError(
                        f"execution.resources.{src}.{key} = {r[key]:g} (steps of kind {kind}) but the Ray cluster "
                        f"has {have:g} {name}s in all: no node could run these steps. Lower the request, or add "
                        f"a node with `ray start --address HEAD:6379` before running."
                    )

    # ------------------------------------------------------------------ running
    def _init(self) -> bool:
        """Start or join Ray unless this process is connected already; True when we connected."""
        import ray

        if ray.is_initialized():
            return False
        kw = dict(self.init_kwargs)
        kw.setdefault("include_dashboard", False)
        kw.setdefault("log_to_driver", False)
        if self.address:
            kw["address"] = self.address
        else:
            kw.setdefault("object_store_memory", 100 * 1024 * 1024)
        try:
            ray.init(**kw)
        except ConnectionError as e:
            raise ConnectionError(
                f"could not reach a Ray cluster at address {self.address!r}: {e}. Start one with "
                f"`ray start --head` (workers: `ray start --address HEAD:6379`), or leave out --address to "
                f"run Ray on this machine only"
            ) from e
        return True

    def run(self, steps: list[Step], ctx: ContextSpec, retries: int = 1) -> RunSummary:
        """Run ``steps`` (in dependency order) as Ray tasks; see the module docstring."""
        import ray

        self._check_resources()
        started = self._init()
        try:
            if not steps:
                return RunSummary()
            self._check_feasible(steps)
            return self._run(steps, ctx, retries)
        finally:
            if started:
                ray.shutdown()

    def _run(self, steps: list[Step], ctx: ContextSpec, retries: int) -> RunSummary:
        import ray

        remote = ray.remote(_ray_step)
        t0 = time.perf_counter()

        def submit(step: Step):
            opts = self._options(step.kind)
            ref = remote.options(**opts).remote(step, ctx, opts["num_cpus"], opts["num_gpus"])
            refs[ref] = step
            return ref

        def wait_any(running: list) -> list[tuple[object, Outcome]]:
            finished, _ = ray.wait(running, num_returns=1)
            return [(ref, self._decode(ref, refs.pop(ref))) for ref in finished]

        refs: dict = {}
        summary = run_ready(steps, submit, wait_any, retries=retries, label="audit steps (ray)")
        log.info("ray executor: %d steps in %.1f s", len(steps), time.perf_counter() - t0)
        return summary

    @staticmethod
    def _decode(ref, step: Step) -> Outcome:
        """The :class:`Outcome` of one finished task; replays the worker's log on the driver."""
        import ray

        try:
            res = ray.get(ref)
        except Exception as e:  # noqa: BLE001 - the worker died, or Ray failed the task
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            return Outcome(error=f"{type(e).__name__}: {first}", traceback=str(e),
                           retryable=failed_outcome(e).retryable)
        for name, level, msg in res["log"]:
            logging.getLogger(name).log(level, "%s [worker %s]", msg, res["where"])
        out: Outcome = res["outcome"]
        if out.error is None and out.computed:
            log.info("step %s computed in %.1f s (%.1f CPU-s) on %s", step.id, out.seconds, out.cpu_seconds,
                     res["where"])
        return out
