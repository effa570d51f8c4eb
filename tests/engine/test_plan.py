"""Plan expansion: the grid of cells, step sharing, and keys that change only downstream."""

from reconaudit.engine.config import load_config
from reconaudit.engine.plan import build_plan
from tests.engine.tiny import tiny_config


def _kinds(plan):
    out = {}
    for s in plan.steps.values():
        out[s.kind] = out.get(s.kind, 0) + 1
    return out


def test_grid_size_and_shared_steps():
    plan = build_plan(load_config(tiny_config()))
    # 1 cohort x 1 degradation x 2 levels x (2 reconstructors + direct) x 1 seed
    assert len(plan.cells) == 2 * 3
    k = _kinds(plan)
    assert k["cohort"] == 1
    assert k["task_model"] == 1  # one diagnostic model shared by every cell
    assert k["predict_clean"] == 1
    assert k["degrade"] == 2  # one degraded set per level, shared by the reconstructors and direct arm
    assert k["fit_recon"] == 4 and k["reconstruct"] == 4 and k["score"] == 4
    assert k["direct_model"] == 2 and k["direct_score"] == 2
    ids = [c.cell_id for c in plan.cells]
    assert len(set(ids)) == len(ids)


def test_dependency_order():
    plan = build_plan(load_config(tiny_config()))
    seen = set()
    for s in plan.ordered():
        assert all(d in seen for d in s.deps), s.id
        seen.add(s.id)


def test_changing_one_setting_changes_only_downstream_keys():
    a = build_plan(load_config(tiny_config()))
    raw = tiny_config()
    raw["reconstructors"][1]["params"]["epochs"] = 2
    b = build_plan(load_config(raw))
    changed = set(a.steps) ^ set(b.steps)
    kinds = {sid.split("/")[0] for sid in changed}
    assert kinds == {"fit_recon", "reconstruct", "score"}
    # the identity cells and everything upstream are untouched
    assert {s for s in a.steps if s.startswith(("cohort/", "degrade/", "task_model/"))} <= set(b.steps)


def test_seeds_and_mitigation_expand_grid():
    raw = tiny_config(seeds=[0, 1], mitigations=[{"name": "eodd", "strengths": [0.1, 1.0], "reconstructors": ["unet"]}])
    plan = build_plan(load_config(raw))
    # per seed and level: identity, unet, unet+eodd x2, direct
    assert len(plan.cells) == 2 * 2 * 5
    mit = [c for c in plan.cells if c.mitigation == "eodd"]
    assert sorted({c.mitigation_strength for c in mit}) == [0.1, 1.0]
    # fine-tuning depends on the standard fit of the same cell
    for s in plan.steps.values():
        if s.kind == "fit_recon" and s.spec.mitigation:
            base = s.spec.mitigation.base
            assert f"fit_recon/{base}" in s.deps


def test_plan_is_deterministic():
    a = build_plan(load_config(tiny_config()))
    b = build_plan(load_config(tiny_config()))
    assert list(a.steps) == list(b.steps)
    assert [c.cell_id for c in a.cells] == [c.cell_id for c in b.cells]
