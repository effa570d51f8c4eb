"""Typed step specs: exactly the fields each step reads, errors naming kind and field, keys as dicts."""

import dataclasses
import math

import pytest

from reconaudit.engine.config import load_config
from reconaudit.engine.plan import STEP_KINDS, STEP_VERSIONS, build_plan
from reconaudit.engine.specs import SPECS, SpecError, field_names, make_spec
from reconaudit.engine.store import content_key
from tests.engine.tiny import tiny_config


def test_every_step_kind_has_one_frozen_spec():
    assert set(SPECS) == set(STEP_KINDS)
    for kind, cls in SPECS.items():
        assert cls.kind == kind and dataclasses.is_dataclass(cls)
        assert cls.__dataclass_params__.frozen


def test_a_wrong_field_names_the_kind_and_the_field():
    ok = {"cohort": "k", "degradation": "lowdose-xray", "level": 1000.0, "params": {}, "seed": 0}
    with pytest.raises(SpecError, match=r"step kind 'degrade': unknown field 'levle'.*missing field 'level'"):
        make_spec("degrade", **{**{k: v for k, v in ok.items() if k != "level"}, "levle": 1000.0})
    with pytest.raises(SpecError, match=r"step kind 'degrade': missing field 'seed'; its fields are: cohort"):
        make_spec("degrade", **{k: v for k, v in ok.items() if k != "seed"})
    with pytest.raises(SpecError, match="unknown step kind 'degraded'"):
        make_spec("degraded", **ok)
    spec = make_spec("degrade", **ok)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.level = 2.0


def test_keys_hash_the_plain_dict_of_the_spec():
    """The key of a step is the key of the dict spec it had before specs were typed (spelled out)."""
    plan = build_plan(load_config(tiny_config(mitigations=[{"name": "eodd", "strengths": [0.5]}])))
    for s in plan.steps.values():
        d = s.spec.as_dict()
        assert tuple(d) == field_names(s.kind)
        assert content_key(s.kind, d, STEP_VERSIONS[s.kind]) == s.key
    fit = next(s for s in plan.steps.values() if s.kind == "fit_recon" and s.spec.mitigation)
    base = next(s for s in plan.steps.values() if s.kind == "fit_recon" and s.spec.mitigation is None
                and s.spec.reconstructor == "unet" and s.spec.degrade == fit.spec.degrade)
    tm = next(s for s in plan.steps.values() if s.kind == "task_model")
    old = {"cohort": fit.spec.cohort, "degrade": fit.spec.degrade, "reconstructor": "unet", "params": {"epochs": 1},
           "seed": 0, "inputs": {},
           "mitigation": {"name": "eodd", "strength": 0.5, "params": {}, "base": base.key,
                          "task_models": {"classification": tm.key}}}
    assert content_key("fit_recon", old, STEP_VERSIONS["fit_recon"]) == fit.key
    score = next(s for s in plan.steps.values() if s.kind == "score")
    d = score.spec.as_dict()
    assert d["evaluation"] == {"threshold_policy": "sens_eq_spec", "target_sensitivity": None,
                               "rechoose_on_test": False, "roi": False, "examples": 2}
    assert math.isnan(d["mitigation_strength"]) and d["predict_clean"]
    cell_fields = {k: v for k, v in d.items() if k != "cell_id"}
    assert content_key("cell", cell_fields)[:12] == d["cell_id"]
