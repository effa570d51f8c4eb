"""The low-dose detectability path: CHO on reconstructed signal-present / absent chest pairs."""

import numpy as np
import pytest

from reconaudit.cohorts.chest_xray import generate_chest_xray
from reconaudit.engine.detectability import detectability_study, gaussian_signal


def test_gaussian_signal_peak_and_width():
    s = gaussian_signal((16, 16), (8.0, 5.0), 2.0, 0.5).numpy()
    assert s[8, 5] == pytest.approx(0.5)
    assert s[8, 7] == pytest.approx(0.5 * np.exp(-0.5), rel=1e-5)


def test_detectability_falls_with_dose_and_is_best_on_clean_images():
    cohort = generate_chest_xray(n_studies=120, size=32)
    t = detectability_study(cohort, [30000, 300], [("identity", {})], degradation_params={"model": "projection"},
                            amplitude=0.08, roi=12, sigma=1.2)
    assert list(t["reconstructor"]) == ["clean", "identity", "identity"]
    clean, high, low = t["d_prime"].to_numpy()
    assert clean > high > low
    assert ((t["auc"] >= 0) & (t["auc"] <= 1)).all()
    with pytest.raises(ValueError, match="roi"):
        detectability_study(cohort, [300], [("identity", {})], roi=40)
