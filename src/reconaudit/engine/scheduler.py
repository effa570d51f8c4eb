"""The one scheduler of the engine: which step runs when, retries, and what is skipped.

:func:`run_ready` owns the bookkeeping of a run (pending, running, done, failed, skipped, the
attempt count of each step); an executor supplies only

- ``submit(step) -> handle``: start one attempt of ``step`` somewhere (in this process, in a
  process pool, as a Ray task) and return a hashable handle, and
- ``wait_any(handles) -> [(handle, Outcome), ...]``: block until at least one of the running
  attempts has finished and return the finished ones with their decoded :class:`Outcome`.

A step is submitted once every step it depends on (among the steps given) is done.  A failed
attempt is submitted again, up to ``retries`` more times, unless its exception class says
``retryable = False`` (a data error that no retry can fix); a step that finally failed is reported
with the traceback of its last attempt, and every step that depends on it, directly or not, is
skipped without being submitted.  The other steps go on.

Among the steps ready at the same moment, the one with the most steps depending on it (directly or
not) starts first, ties in the order given: on a plan this starts the long chains (training, then
reconstruct and score of every cell) before the leaves, which keeps every worker busy to the end
(on the quickstart's measured step times, simulated on 2 workers: 475 s against 492 s in plan
order, the sum of step times over 2 being 475 s).  The order changes no result: every step's
random streams are derived from its own spec.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field

from reconaudit import progress
from reconaudit.engine.plan import Step

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
    seconds: dict[str, float] = field(default_factory=dict)  # wall seconds of each computed step
    cpu_seconds: dict[str, float] = field(default_factory=dict)  # CPU seconds of its process (all threads)

    @property
    def ok(self) -> bool:
        """True when no step failed and none was skipped."""
        return not self.failed and not self.skipped


@dataclass
class Outcome:
    """The result of one attempt of one step, as an executor decodes it.

    ``error`` is ``None`` on success (``computed`` then says whether the step computed its
    artifact or found it already in the store); otherwise ``"ExceptionType: message"`` with the
    traceback, and ``retryable`` from the exception class's ``retryable`` attribute (default True).
    """

    computed: bool = False
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    error: str | None = None
    traceback: str = ""
    retryable: bool = True


def failed_outcome(exc: BaseException, tb: str | None = None) -> Outcome:
    """The :class:`Outcome` of an attempt that raised ``exc``; honours ``exc.retryable``."""
    return Outcome(
        error=f"{type(exc).__name__}: {exc}",
        traceback=tb if tb is not None else "".join(traceback.format_exception(exc)),
        retryable=bool(getattr(exc, "retryable", True)),
    )


def run_once(step: Step, ctx_spec) -> Outcome:
    """Run one attempt of ``step`` in this process (``ctx_spec`` is a ``ContextSpec``).

    Exceptions become a failed :class:`Outcome` (``KeyboardInterrupt`` still stops the run).
    """
    from reconaudit.engine.steps import run_step

    t0, c0 = time.perf_counter(), time.process_time()
    try:
        computed = run_step(step, ctx_spec.make())
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 - reported with its traceback
        return failed_outcome(e, traceback.format_exc())
    return Outcome(computed=computed, seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - c0)


def dependents(steps: Iterable[Step]) -> dict[str, int]:
    """For every step, how many of ``steps`` depend on it, directly or through others.

    ``steps`` come in dependency order (as :func:`run_ready` takes them), so one backward pass sees
    every step's dependents before the step itself; out of order, a count is only a lower bound,
    which changes the start order, never what runs.
    """
    steps = list(steps)
    below: dict[str, set[str]] = {s.id: set() for s in steps}
    for s in reversed(steps):
        for d in s.deps:
            if d in below:
                below[d] |= below[s.id] | {s.id}
    return {sid: len(v) for sid, v in below.items()}


def run_ready(
    steps: Iterable[Step],
    submit: Callable[[Step], Hashable],
    wait_any: Callable[[list[Hashable]], list[tuple[Hashable, Outcome]]],
    *,
    retries: int = 1,
    capacity: int | None = None,
    label: str = "audit steps",
) -> RunSummary:
    """Run ``steps`` (in dependency order) through ``submit`` / ``wait_any``; see the module docstring.

    Parameters
    ----------
    steps:
        The steps to run, each after the steps it depends on; a dependency not among them counts as
        done (its artifact is in the store already).
    submit, wait_any:
        What the executor supplies (module docstring).
    retries:
        How many more attempts a failing step gets (``0``: one attempt).
    capacity:
        At most this many attempts running at once; ``None`` leaves it to the executor (Ray).
    label:
        The progress bar's description.

    Returns
    -------
    RunSummary
        Which steps were computed, reused (found in the store), failed and skipped.
    """
    steps = list(steps)
    ids = {s.id for s in steps}
    weight = dependents(steps)
    pending = {s.id: s for s in sorted(steps, key=lambda s: -weight[s.id])}  # stable: ties keep the order
    attempts: dict[str, int] = {}
    done: set[str] = set()
    bad: set[str] = set()
    running: dict[Hashable, Step] = {}
    summary = RunSummary()

    with progress.task(label, len(steps)) as bar:

        def start(step: Step) -> None:
            attempts[step.id] = attempts.get(step.id, 0) + 1
            bar.update(description=f"{step.kind} {step.key[:8]}")
            running[submit(step)] = step

        while pending or running:
            for sid, step in list(pending.items()):
                deps = [d for d in step.deps if d in ids]
                if any(d in bad for d in deps):
                    del pending[sid]
                    bad.add(sid)
                    summary.skipped.append(sid)
                    log.warning("step %s skipped: a step it depends on failed", sid)
                    bar.advance(1)
                elif all(d in done for d in deps) and (capacity is None or len(running) < capacity):
                    del pending[sid]
                    start(step)
            if not running:
                if pending:  # cannot happen for a plan (a DAG); guards against a hand-made cycle
                    raise ValueError(f"steps wait on each other and can never run: {sorted(pending)}")
                continue
            for handle, out in wait_any(list(running)):
                step = running.pop(handle)
                n = attempts[step.id]
                if out.error is None:
                    done.add(step.id)
                    if out.computed:
                        summary.computed.append(step.id)
                        summary.seconds[step.id] = out.seconds
                        summary.cpu_seconds[step.id] = out.cpu_seconds
                    else:
                        summary.reused.append(step.id)
                    bar.advance(1)
                    continue
                log.warning("step %s failed (attempt %d/%d): %s", step.id, n, retries + 1, out.error)
                if out.retryable and n <= retries:
                    start(step)
                    continue
                if not out.retryable and n <= retries:
                    log.warning("step %s is not retried: %s errors are not transient", step.id,
                                out.error.split(":", 1)[0])
                summary.failed.append(StepFailure(step.id, n, out.error, out.traceback))
                bad.add(step.id)
                bar.advance(1)
    return summary
