"""Executors: retries, failure isolation, process pool, with fake steps (no models)."""

import json

import pytest

from reconaudit.engine import steps as steps_mod
from reconaudit.engine.executors import ContextSpec, LocalExecutor
from reconaudit.engine.plan import Step

CALLS = []


def _ok(spec, ctx, out):
    (out / "v.json").write_text(json.dumps(spec))


def _flaky(spec, ctx, out):
    marker = ctx.store.root / f"flaky-{spec['n']}"
    if not marker.exists():
        marker.write_text("failed once")
        raise RuntimeError("transient failure")
    (out / "v.json").write_text("ok")


def _broken(spec, ctx, out):
    raise ValueError("always broken")


@pytest.fixture
def fake_steps(monkeypatch):
    monkeypatch.setitem(steps_mod.STEP_FUNCS, "cohort", _ok)
    monkeypatch.setitem(steps_mod.STEP_FUNCS, "degrade", _flaky)
    monkeypatch.setitem(steps_mod.STEP_FUNCS, "task_model", _broken)


def _graph():
    a = Step("cohort", "a", {"n": 1})
    b = Step("degrade", "b", {"n": 2}, (a.id,))
    c = Step("task_model", "c", {"n": 3}, (a.id,))
    d = Step("cohort", "d", {"n": 4}, (c.id,))  # depends on the broken step
    e = Step("cohort", "e", {"n": 5}, (b.id,))
    return [a, b, c, d, e]


def test_retry_then_success_and_failure_isolated(tmp_path, fake_steps):
    summary = LocalExecutor(1).run(_graph(), ContextSpec(str(tmp_path)), retries=1)
    assert sorted(summary.computed) == ["cohort/a", "cohort/e", "degrade/b"]
    assert [f.step for f in summary.failed] == ["task_model/c"]
    assert summary.failed[0].attempts == 2 and "always broken" in summary.failed[0].error
    assert "Traceback" in summary.failed[0].traceback
    assert summary.skipped == ["cohort/d"]
    # a re-run computes only what is missing and reuses the rest
    again = LocalExecutor(1).run(_graph(), ContextSpec(str(tmp_path)), retries=0)
    assert sorted(again.reused) == ["cohort/a", "cohort/e", "degrade/b"]
    assert [f.step for f in again.failed] == ["task_model/c"]


def test_no_retry_means_one_attempt(tmp_path, fake_steps):
    summary = LocalExecutor(1).run(_graph(), ContextSpec(str(tmp_path)), retries=0)
    assert "degrade/b" in [f.step for f in summary.failed]
    assert "cohort/e" in summary.skipped
