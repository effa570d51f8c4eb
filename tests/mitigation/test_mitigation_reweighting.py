"""Reweighting: equal expected group counts per epoch (exactly and empirically), the floor, validation;
the bundled mitigation config."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from reconaudit.mitigation import group_weights, validate_mitigation_params
from reconaudit.mitigation.strategies import make_hooks
from reconaudit.physics.base import Degraded
from reconaudit.recon.base import PairSet
from reconaudit.recon.training import epoch_order


def _groups(counts: dict[tuple[str, str], int]) -> pd.DataFrame:
    rows = [k for k, n in counts.items() for _ in range(n)]
    return pd.DataFrame(rows, columns=["sex", "age_band"])


COUNTS = {("F", "<40"): 10, ("F", "40+"): 40, ("M", "<40"): 70, ("M", "40+"): 80}


def test_weights_equalise_joint_groups_exactly() -> None:
    df = _groups(COUNTS)
    w = group_weights(df, ["sex", "age_band"], alpha=1.0, floor=0.01)
    joint = df["sex"] + "|" + df["age_band"]
    sums = pd.Series(w).groupby(joint.to_numpy()).sum()
    np.testing.assert_allclose(sums.to_numpy(), len(df) / 4, rtol=1e-12)
    assert np.isclose(w.mean(), 1.0)
    # one attribute: the two sexes get equal total weight
    ws = group_weights(df, ["sex"], alpha=1.0)
    np.testing.assert_allclose(pd.Series(ws).groupby(df["sex"].to_numpy()).sum().to_numpy(), len(df) / 2)
    # alpha = 0: uniform
    np.testing.assert_allclose(group_weights(df, None, alpha=0.0), 1.0)


def test_epoch_order_draws_equal_group_counts() -> None:
    df = _groups(COUNTS)
    w = group_weights(df, ["sex", "age_band"], alpha=1.0, floor=0.01)
    joint = (df["sex"] + "|" + df["age_band"]).to_numpy()
    draws = np.concatenate([epoch_order(len(df), torch.Generator().manual_seed(e), w).numpy() for e in range(300)])
    counts = pd.Series(joint[draws]).value_counts()
    expected = len(draws) / 4  # 300 epochs x 200 draws / 4 groups = 15000 each
    sd = np.sqrt(len(draws) * 0.25 * 0.75)
    assert (np.abs(counts.to_numpy() - expected) < 5 * sd).all(), counts.to_dict()
    # without weights the smallest group is drawn at its frequency, 5%
    plain = np.concatenate([epoch_order(len(df), torch.Generator().manual_seed(e), None).numpy() for e in range(10)])
    assert (joint[plain] == "F|<40").mean() == pytest.approx(0.05)


def test_floor_caps_tiny_groups() -> None:
    df = _groups({("F", "a"): 2, ("M", "a"): 98})  # p_F = 0.02 < floor 0.1
    w = group_weights(df, ["sex"], alpha=1.0, floor=0.1)
    share_f = w[df["sex"] == "F"].sum() / w.sum()
    # expected share of F: (n_F / floor) / (n_F / floor + n_M / p_M) = 20 / (20 + 100)
    assert share_f == pytest.approx(20 / 120)
    # the floor keeps a single F study's weight at 1 / floor relative to 1 / p_M for M
    assert w[0] / w[-1] == pytest.approx(0.98 / 0.1)
    # without the floor F would get half of the draws
    no_floor = group_weights(df, ["sex"], alpha=1.0, floor=0.01)
    assert no_floor[df["sex"] == "F"].sum() / no_floor.sum() == pytest.approx(0.5)


def test_reweighting_hooks_use_the_cohort_columns_and_validate() -> None:
    df = _groups(COUNTS)
    n = len(df)
    pairs = PairSet(Degraded(torch.zeros(n, 1, 4, 4)), torch.zeros(n, 1, 4, 4), [str(i) for i in range(n)], df)
    hooks, pen = make_hooks(None, "reweighting", 1.0, {"attributes": ["age_band"]}, pairs, task_models={})
    assert pen is None and hooks.loss_hook is None
    np.testing.assert_allclose(hooks.sample_weights, group_weights(df, ["age_band"], 1.0))
    with pytest.raises(ValueError, match="race"):
        make_hooks(None, "reweighting", 1.0, {"attributes": ["race"]}, pairs, task_models={})
    with pytest.raises(ValueError, match="floor"):
        validate_mitigation_params("reweighting", {"floor": 0})
    with pytest.raises(ValueError, match="allowed parameters: attributes, epochs"):
        validate_mitigation_params("eodd", {"lambda": 1})
    with pytest.raises(ValueError, match="alpha"):
        group_weights(df, None, alpha=-1)


def test_bundled_mitigation_config_sweeps_lambda() -> None:
    from reconaudit.engine.config import load_config
    from reconaudit.engine.plan import build_plan

    cfg = load_config("mitigation")
    by_name = {m.name: m for m in cfg.mitigations}
    assert set(by_name) == {"reweighting", "eodd", "adversarial"}
    for name in ("eodd", "adversarial"):
        s = np.asarray(by_name[name].strengths)
        assert s.min() == pytest.approx(0.01) and s.max() == pytest.approx(10)
        assert np.allclose(np.diff(np.log10(s)), np.diff(np.log10(s))[0])  # log-spaced
    plan = build_plan(cfg)
    mitigated = [c for c in plan.cells if c.mitigation != "none"]
    assert len(mitigated) == len(cfg.seeds) * (1 + 2 * 4)
