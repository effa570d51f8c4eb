"""Patient-clustered DeLong test: equal to DeLong for one study per patient, right size under a clustered null."""

from __future__ import annotations

import numpy as np
import pytest

import reconaudit.metrics as M


def test_equals_delong_when_every_patient_has_one_study():
    rng = np.random.default_rng(1)
    for n in (12, 50, 300):
        y = rng.integers(0, 2, n)
        y[:2] = [0, 1]
        a = np.round(rng.random(n) + 0.4 * y, 2)  # ties included
        b = np.round(rng.random(n) + 0.2 * y, 2)
        c, d = M.clustered_delong_test(y, a, b, patient_ids=np.arange(n)[::-1]), M.delong_test(y, a, b)
        assert c.difference == pytest.approx(d.difference, abs=1e-12)
        assert c.standard_error == pytest.approx(d.standard_error, abs=1e-12)
        assert c.p_value == pytest.approx(d.p_value, abs=1e-12)


def test_hand_computed_two_patients_each_class():
    # patients P (pos 0.9, neg 0.2), Q (pos 0.6, neg 0.7); score b = the study order reversed within Q
    y = np.array([1, 0, 1, 0])
    a = np.array([0.9, 0.2, 0.6, 0.7])
    b = np.array([0.9, 0.2, 0.7, 0.6])
    pid = np.array(["P", "P", "Q", "Q"])
    # V10_a = (1, 0.5), V01_a = (1, 0.5)... A_a = 0.75, A_b = 1
    res = M.clustered_delong_test(y, a, b, patient_ids=pid)
    assert res.difference == pytest.approx(-0.25)
    # X^a = (1, .5), X^b = (1, 1): DX = (1-.75) - (1-1), (.5-.75) - (1-1) = (.25, -.25); DY the same
    # Var = 2 * (0.125)/4 + 2 * 0.125/4 + 2 * 2 * 0.125 / 4 = 0.25
    assert res.standard_error == pytest.approx(0.5)


def _clustered_null(rng, n_patients, max_studies):
    sizes = rng.integers(1, max_studies + 1, n_patients)
    pid = np.repeat(np.arange(n_patients), sizes)
    z = rng.normal(0, 1, n_patients)[pid]
    y = (rng.random(len(pid)) < 1 / (1 + np.exp(-(z - 0.3)))).astype(int)
    u = rng.normal(0, 1, n_patients)[pid]
    # patient-level effects of each score: the two AUROCs are equal in the population (null true)
    a = y + u + rng.normal(0, 1, n_patients)[pid] + 0.5 * rng.normal(0, 1, len(pid))
    b = y + u + rng.normal(0, 1, n_patients)[pid] + 0.5 * rng.normal(0, 1, len(pid))
    return y, a, b, pid


@pytest.mark.parametrize("max_studies", [4, 8])
def test_null_rejection_rate_under_clustering(max_studies):
    """600 cohorts of 60 patients with 1-4 or 1-8 studies each: the clustered test rejects 5 % +- 2 %,
    the study-level DeLong test clearly more often."""
    rng = np.random.default_rng(0)
    n, clustered, plain = 600, 0, 0
    for _ in range(n):
        y, a, b, pid = _clustered_null(rng, 60, max_studies)
        clustered += M.clustered_delong_test(y, a, b, patient_ids=pid).p_value < 0.05
        plain += M.delong_test(y, a, b).p_value < 0.05
    assert 0.03 <= clustered / n <= 0.07, clustered / n
    assert plain / n > 0.08, plain / n
