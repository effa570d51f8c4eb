"""Known answers for the hallucination, perception and observer measures."""

import numpy as np
import pandas as pd
import pytest
import scipy.linalg
from scipy import stats

from reconaudit.metrics import (
    channelized_hotelling,
    decision_flips,
    false_positive_volume,
    feature_distance,
    frechet_distance,
    hallucination_map,
    laguerre_gauss_channels,
    pixel_correlation,
    record_flips,
    record_sample_spread,
    sample_spread,
    spread_error_correlation,
    uncertainty_coverage,
)


def test_decision_flips_find_a_planted_finding_and_an_erased_one():
    clean = np.array([[0.1, 0.9], [0.2, 0.3], [0.8, 0.7]])
    recon = np.array([[0.7, 0.9], [0.2, 0.3], [0.3, 0.7]])
    hall, erased = decision_flips(clean, recon, np.array([0.5, 0.5]))
    np.testing.assert_array_equal(hall, [[True, False], [False, False], [False, False]])
    np.testing.assert_array_equal(erased, [[False, False], [False, False], [True, False]])


def test_false_positive_volume_counts_pixels_outside_the_reference():
    ref = np.zeros((2, 1, 8, 8), dtype=bool)
    ref[0, 0, :2, :2] = True
    pred = np.zeros_like(ref)
    pred[0, 0, :3, :3] = True  # 9 predicted, 4 true
    pred[1, 0, 5:, 5:] = True  # no lesion: 9 false positive pixels
    np.testing.assert_array_equal(false_positive_volume(pred, ref), [5.0, 9.0])


def test_sample_spread_is_the_sample_std():
    s = np.array([[0.1, 0.3, 0.5], [0.2, 0.2, 0.2]])
    np.testing.assert_allclose(sample_spread(s), [0.2, 0.0], atol=1e-12)
    with pytest.raises(ValueError, match="K >= 2"):
        sample_spread(s[:, :1])


@pytest.mark.parametrize("k", [2, 8])
def test_uncertainty_coverage_is_ideal_on_a_gaussian_posterior(k):
    rng = np.random.default_rng(0)
    n, h = 40, 32
    mu = rng.uniform(0.2, 0.8, (n, 1, h, h))
    sigma = rng.uniform(0.01, 0.1, (n, 1, h, h))
    samples = mu[:, None] + sigma[:, None] * rng.standard_normal((n, k, 1, h, h))
    truth = mu + sigma * rng.standard_normal((n, 1, h, h))  # one more draw from the posterior
    mean, std = samples.mean(1), samples.std(1, ddof=1)
    levels = (0.5, 0.8, 0.9, 0.95)
    cov = uncertainty_coverage(mean - truth, std, samples=k, levels=levels)
    np.testing.assert_allclose(cov.mean(0), levels, atol=0.01)
    # an over-confident posterior (std halved) under-covers
    assert (uncertainty_coverage(mean - truth, std / 2, samples=k, levels=levels).mean(0) < np.array(levels) - 0.03).all()


def test_pixel_correlation_matches_pearson_per_study():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(3, 16, 16)), rng.normal(size=(3, 16, 16))
    b[0] = a[0] * 2 + 0.1 * b[0]
    mask = np.zeros(a.shape, dtype=bool)
    mask[:, 2:14, 3:12] = True
    got = pixel_correlation(a, b, mask=mask)
    for i in range(3):
        np.testing.assert_allclose(got[i], stats.pearsonr(a[i][mask[i]], b[i][mask[i]])[0])


def test_hallucination_map_finds_a_planted_hallucination_and_little_else():
    rng = np.random.default_rng(2)
    n, h, sigma = 8, 64, 0.05
    clean = rng.uniform(0.2, 0.6, (n, 1, h, h))
    recon = clean + sigma * rng.standard_normal(clean.shape)  # noise the degradation explains
    yy, xx = np.mgrid[0:h, 0:h]
    blob = 0.3 * np.exp(-((yy - 20) ** 2 + (xx - 40) ** 2) / (2 * 2.5**2))
    recon[0, 0] += blob  # a planted nodule in study 0
    recon[1, 0] -= blob  # an erased structure in study 1
    zmap, hall, erased = hallucination_map(recon, clean, noise_sigma=sigma, tolerance=0.0)
    core = blob > 0.15
    assert hall[0][core].mean() > 0.95 and erased[1][core].mean() > 0.95
    # elsewhere the flagged share is the chance rate 2 (1 - Phi(3)) = 0.27%
    rest = np.ones_like(hall)
    rest[0:2] = ~(blob > 0.01)
    flagged = (hall | erased)[rest].mean()
    assert flagged < 0.01
    # z is standard normal under the noise alone (away from the border)
    z = zmap[2:, 8:-8, 8:-8]
    assert abs(z.std() - 1) < 0.05 and abs(z.mean()) < 0.15  # smoothed pixels are correlated
    with pytest.raises(ValueError, match="tolerance"):
        hallucination_map(recon, clean, noise_sigma=0.0, tolerance=0.0)
    # the scale measured on a degraded input with the same white noise is the analytic one
    degraded = clean + sigma * rng.standard_normal(clean.shape)
    z2, hall2, _ = hallucination_map(recon, clean, degraded=degraded, tolerance=0.0)
    ratio = (zmap / z2).reshape(n, -1)[:, 0]  # one scale per study, estimated from ~150 independent patches
    np.testing.assert_allclose(ratio, 1.0, atol=0.15)
    assert abs(ratio.mean() - 1) < 0.05
    assert hall2[0][core].mean() > 0.95
    # a local scale: the same under stationary noise, and it explains error that varies over the image
    z4, hall4, _ = hallucination_map(recon, clean, degraded=degraded, tolerance=0.0, scale_window=6.0)
    assert hall4[0][core].mean() > 0.9 and (hall4[2:].mean() < 0.01)
    ramp = np.linspace(0.0, 0.2, h)[None, None, None, :] * rng.standard_normal(clean.shape)
    z5, h5, e5 = hallucination_map(clean + ramp, clean, degraded=clean + ramp, tolerance=0.0, scale_window=6.0)
    _, h6, e6 = hallucination_map(clean + ramp, clean, degraded=clean + ramp, tolerance=0.0)
    assert (h5 | e5).mean() < 0.01 < (h6 | e6).mean()
    # an inpainting mask: observed pixels are exact, so only the tolerance scales the error
    observed = np.ones_like(clean)
    observed[:, :, 16:32, 32:48] = 0
    masked = clean * observed
    z3, _, _ = hallucination_map(recon, clean, degraded=masked, observed=observed, tolerance=0.1)
    np.testing.assert_allclose(z3, zmap * sigma * 0.18807 / 0.1, rtol=1e-3)


def test_frechet_distance_is_zero_for_a_set_with_itself_and_grows_with_noise():
    rng = np.random.default_rng(3)
    f = rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6))
    assert frechet_distance(f, f) == pytest.approx(0.0, abs=1e-8)
    noise = rng.normal(size=f.shape)
    d = [frechet_distance(f, f + s * noise) for s in (0.1, 0.3, 1.0, 3.0)]
    assert all(a < b for a, b in zip(d, d[1:]))


def test_frechet_distance_matches_scipy_sqrtm():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(80, 5)) @ rng.normal(size=(5, 5))
    b = rng.normal(1.0, 2.0, size=(60, 5))
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(sa + sb - 2 * np.real(scipy.linalg.sqrtm(sa @ sb)))
    np.testing.assert_allclose(frechet_distance(a, b), ref, rtol=1e-8)
    # singular covariances (fewer studies than features) stay finite and >= 0
    assert frechet_distance(a[:4], b[:3]) >= 0


def test_feature_distance_is_euclidean():
    a = np.array([[0.0, 0.0], [1.0, 1.0]])
    b = np.array([[3.0, 4.0], [1.0, 1.0]])
    np.testing.assert_allclose(feature_distance(a, b), [5.0, 0.0])


def test_laguerre_gauss_channels_are_orthonormal():
    u = laguerre_gauss_channels((64, 64), n_channels=5, width=12.0)
    np.testing.assert_allclose(u.T @ u, np.eye(5), atol=1e-6)


def test_cho_d_prime_matches_the_analytic_value_in_white_noise():
    rng = np.random.default_rng(5)
    h, sigma, b, amp = 32, 1.0, 2.0, 0.6
    yy, xx = np.mgrid[0:h, 0:h]
    c = (h - 1) / 2
    signal = amp * np.exp(-((yy - c) ** 2 + (xx - c) ** 2) / (2 * b**2))
    analytic = np.linalg.norm(signal) / sigma  # ideal observer; the signal lies in channel 0's span
    n = 2000
    absent = sigma * rng.standard_normal((n, h, h))
    present = signal + sigma * rng.standard_normal((n, h, h))
    u = laguerre_gauss_channels((h, h), n_channels=5, width=np.sqrt(2 * np.pi) * b)
    res = channelized_hotelling(present, absent, u)
    assert res.d_prime == pytest.approx(analytic, rel=0.05)
    assert res.auc == pytest.approx(stats.norm.cdf(analytic / np.sqrt(2)), abs=0.02)
    # no signal: d' near 0, AUC near 1/2
    null = channelized_hotelling(sigma * rng.standard_normal((n, h, h)), absent, u)
    assert abs(null.d_prime) < 0.15 and abs(null.auc - 0.5) < 0.04


def test_record_flips_and_spread_from_records():
    df = pd.DataFrame({
        "clean_score:a": [0.1, 0.9, 0.2, np.nan], "score:a": [0.8, 0.1, 0.3, 0.5], "threshold:a": 0.5,
        "clean_score:b": [0.1, 0.1, 0.9, 0.2], "score:b": [0.2, 0.1, 0.9, 0.7], "threshold:b": 0.5,
        "sample_score:a:0": [0.7, 0.1, 0.3, 0.4], "sample_score:a:1": [0.9, 0.1, 0.3, 0.6],
        "sample_score:b:0": [0.2, 0.1, 0.9, 0.7], "sample_score:b:1": [0.2, 0.1, 0.9, 0.7],
    })
    f = record_flips(df)
    np.testing.assert_array_equal(f["hallucinated:a"], [1, 0, 0, np.nan])
    np.testing.assert_array_equal(f["erased:a"], [0, 1, 0, np.nan])
    np.testing.assert_array_equal(f["hallucinated:any"], [1, 0, 0, 1])  # label b flips in study 3
    np.testing.assert_array_equal(f["erased:any"], [0, 1, 0, 0])
    sp = record_sample_spread(df)
    np.testing.assert_allclose(sp["spread:a"], [np.sqrt(0.02), 0, 0, np.sqrt(0.02)], atol=1e-12)
    np.testing.assert_allclose(sp["spread:mean"], sp["spread:a"] / 2, atol=1e-12)
    with pytest.raises(KeyError, match="score"):
        record_flips(df[["sample_score:a:0"]])


def test_spread_error_correlation_is_spearman():
    rng = np.random.default_rng(6)
    s = rng.uniform(size=50)
    e = s**3 + 0.01 * rng.normal(size=50)
    assert spread_error_correlation(s, e) == pytest.approx(stats.spearmanr(s, e).statistic)
    assert np.isnan(spread_error_correlation([1, 1, 1], [1, 2, 3]))
