"""Fault injection for the Ray executor tests, installed in every Ray worker by a setup hook.

Monkeypatching ``STEP_FUNCS`` in the test process does not reach Ray workers, so the tests start
Ray with ``runtime_env={"worker_process_setup_hook": "tests.engine.ray_faults.install", ...}`` and
the directory named by ``RECONAUDIT_TEST_FAULT_DIR``.  :func:`install` wraps some step functions
(the real ones, and a few fake step kinds) so that files in that directory arm faults:

- ``crash-once-<tag>``: the next attempt removes the file and kills its worker (``os._exit(1)``),
- ``break-<tag>``: every attempt raises ``ValueError("injected failure in <tag>")``,
- ``fail-once-<tag>``: the next attempt removes the file and raises ``RuntimeError`` (transient),
- ``fatal-<tag>``: every attempt raises :class:`NotRetryable` (``retryable = False``),

where ``<tag>`` is ``<kind>-<reconstructor>`` for real steps (``reconstruct-unet``) and
``<kind>-<spec["n"]>`` for fake ones.  Each attempt appends a line to ``attempts-<tag>``.
``break-shard-<reconstructor>-<start>`` makes the shard task of a reconstruct step split into Ray
shard tasks that starts at test study ``<start>`` raise.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

ENV = "RECONAUDIT_TEST_FAULT_DIR"
WRAPPED = ("reconstruct", "score")
FAKE = ("t_ok", "t_slow")


class NotRetryable(ValueError):
    """An error no retry can fix: the scheduler gives it one attempt."""

    retryable = False


def _tag(kind: str, spec) -> str:
    """``<kind>-<reconstructor>`` for a real step's typed spec, ``<kind>-<n>`` for a fake one's dict."""
    if isinstance(spec, dict):
        return f"{kind}-{spec.get('reconstructor', spec.get('n'))}"
    return f"{kind}-{getattr(spec, 'reconstructor', None)}"


def _fake_ok(spec, ctx, out):
    """Check that the artifacts named in ``spec["needs"]`` exist; record where and how it ran."""
    import logging

    import torch

    for kind, key in spec.get("needs", []):
        if not ctx.store.exists(kind, key):
            raise RuntimeError(f"dependency {kind}/{key} is not committed yet")
    logging.getLogger("reconaudit.test").info("fake step %s ran", spec["n"])
    info = {"spec": spec, "pid": os.getpid(), "device": ctx.device, "threads": torch.get_num_threads()}
    (out / "v.json").write_text(json.dumps(info))


def _fake_slow(spec, ctx, out):
    _fake_ok(spec, ctx, out)
    time.sleep(float(spec.get("sleep", 1.0)))


def _wrap(kind: str, fn, d: Path):
    def wrapped(spec, ctx, out):
        tag = _tag(kind, spec)
        with open(d / f"attempts-{tag}", "a") as f:
            f.write(f"{os.getpid()}\n")
        crash = d / f"crash-once-{tag}"
        if crash.exists():
            crash.unlink()
            os._exit(1)
        if (d / f"break-{tag}").exists():
            raise ValueError(f"injected failure in {tag}")
        if (d / f"fatal-{tag}").exists():
            raise NotRetryable(f"injected data error in {tag}")
        once = d / f"fail-once-{tag}"
        if once.exists():
            once.unlink()
            raise RuntimeError(f"injected transient failure in {tag}")
        return fn(spec, ctx, out)

    return wrapped


def install() -> None:
    """Wrap the step functions of this process (a Ray worker) when the fault directory is set."""
    d = os.environ.get(ENV)
    if not d:
        return
    from reconaudit.engine import steps

    if getattr(steps, "_faults_installed", False):
        return
    steps._faults_installed = True
    for kind in WRAPPED:
        steps.STEP_FUNCS[kind] = _wrap(kind, steps.STEP_FUNCS[kind], Path(d))
    for kind, fn in fake_steps(Path(d)).items():
        steps.STEP_FUNCS[kind] = fn
    steps.reconstruct_shard = _wrap_shard(steps.reconstruct_shard, Path(d))


def _wrap_shard(fn, d: Path):
    def wrapped(spec, ctx, writer, a, b, **kw):
        if (d / f"break-shard-{spec.reconstructor}-{a}").exists():
            raise ValueError(f"injected failure in the shard of {spec.reconstructor} from study {a}")
        return fn(spec, ctx, writer, a, b, **kw)

    return wrapped


def fake_steps(d: Path) -> dict:
    """The fake step kinds, armed by the fault files in ``d``."""
    return {"t_ok": _wrap("t_ok", _fake_ok, d), "t_slow": _wrap("t_slow", _fake_slow, d)}
