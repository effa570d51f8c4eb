"""Executors: retries, failure isolation, process pool, with fake steps (no models)."""

import importlib.util
import json

import pytest

from reconaudit.engine import steps as steps_mod
from reconaudit.engine.executors import ContextSpec, LocalExecutor
from reconaudit.engine.plan import Step
from tests.engine import ray_faults

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")

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


# ---------------------------------------------------------------- one scheduler, every executor
def _executor(name: str, request, tmp_path, monkeypatch):
    """An executor of kind ``name`` and the fault directory its workers read (tests/engine/ray_faults.py)."""
    if name == "ray":
        from reconaudit.engine.ray_executor import RayExecutor

        return RayExecutor(), request.getfixturevalue("ray_session")
    faults = tmp_path / "faults"
    faults.mkdir()
    if name == "serial":
        for kind, fn in ray_faults.fake_steps(faults).items():
            monkeypatch.setitem(steps_mod.STEP_FUNCS, kind, fn)
        return LocalExecutor(1), faults
    monkeypatch.setenv(ray_faults.ENV, str(faults))  # the spawned pool workers inherit it
    return LocalExecutor(2, setup=ray_faults.install), faults


@pytest.mark.parametrize("name", ["serial", "pool", pytest.param("ray", marks=[pytest.mark.ray, needs_ray])])
def test_every_executor_retries_isolates_failures_and_skips_dependents(name, request, tmp_path, monkeypatch):
    ex, faults = _executor(name, request, tmp_path, monkeypatch)
    tag = f"{name}-{tmp_path.name}"  # fault files are per test: the Ray fault directory is shared

    def step(key, *deps):
        return Step("t_ok", key, {"n": f"{tag}-{key}", "needs": [["t_ok", d] for d in deps]},
                    tuple(f"t_ok/{d}" for d in deps))

    graph = [step("a"), step("b", "a"), step("c", "a"), step("d", "c"), step("e", "b"), step("f", "d"),
             step("g", "a"), step("h", "g")]
    (faults / f"fail-once-t_ok-{tag}-b").write_text("")  # transient: the retry succeeds
    (faults / f"break-t_ok-{tag}-c").write_text("")  # fails on every attempt
    (faults / f"fatal-t_ok-{tag}-g").write_text("")  # retryable = False: one attempt only
    ctx = ContextSpec(str(tmp_path / "store"))
    summary = ex.run(graph, ctx, retries=1)
    assert sorted(summary.computed) == ["t_ok/a", "t_ok/b", "t_ok/e"]
    assert {f.step: f.attempts for f in summary.failed} == {"t_ok/c": 2, "t_ok/g": 1}
    errors = {f.step: f.error for f in summary.failed}
    assert errors["t_ok/c"] == f"ValueError: injected failure in t_ok-{tag}-c"
    assert errors["t_ok/g"] == f"NotRetryable: injected data error in t_ok-{tag}-g"
    assert all("Traceback" in f.traceback for f in summary.failed)
    assert sorted(summary.skipped) == ["t_ok/d", "t_ok/f", "t_ok/h"]  # directly or transitively
    attempts = {k: len((faults / f"attempts-t_ok-{tag}-{k}").read_text().split()) for k in "abcg"}
    assert attempts == {"a": 1, "b": 2, "c": 2, "g": 1}
    assert not any((faults / f"attempts-t_ok-{tag}-{k}").exists() for k in "dfh")  # never submitted
    if name != "serial":
        return  # the re-run is the scheduler's logic again; spare another pool / Ray start-up
    # a re-run reuses what is committed and meets the same failures
    again = ex.run(graph, ctx, retries=0)
    assert sorted(again.reused) == ["t_ok/a", "t_ok/b", "t_ok/e"] and not again.computed
    assert sorted(f.step for f in again.failed) == ["t_ok/c", "t_ok/g"]


def test_a_cycle_is_refused_instead_of_waiting_forever(tmp_path):
    a = Step("t_ok", "a", {}, ("t_ok/b",))
    b = Step("t_ok", "b", {}, ("t_ok/a",))
    with pytest.raises(ValueError, match=r"can never run: \['t_ok/a', 't_ok/b'\]"):
        LocalExecutor(1).run([a, b], ContextSpec(str(tmp_path)))


def test_ready_steps_with_more_dependents_start_first():
    """Among ready steps the one more steps wait on (directly or not) starts first; ties keep the
    given order; the dependency order always holds."""
    from reconaudit.engine.scheduler import Outcome, dependents, run_ready

    leaf = Step("cohort", "leaf", {})
    root = Step("cohort", "root", {})
    mid = Step("degrade", "mid", {}, (root.id,))
    x = Step("score", "x", {}, (mid.id,))
    y = Step("score", "y", {}, (mid.id, root.id))
    steps = [leaf, root, mid, x, y]
    assert dependents(steps) == {leaf.id: 0, root.id: 3, mid.id: 2, x.id: 0, y.id: 0}
    started: list[str] = []

    def submit(step):
        started.append(step.key)
        return step.id

    def wait_any(handles):
        return [(h, Outcome(computed=True)) for h in handles[:1]]

    summary = run_ready(steps, submit, wait_any, capacity=1)
    assert started == ["root", "mid", "leaf", "x", "y"]
    assert sorted(summary.computed) == sorted(s.id for s in steps)
