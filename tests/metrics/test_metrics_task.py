"""Task metrics: AUROC/AUPRC vs scikit-learn, thresholds, Dice and HD95 vs brute force and MONAI."""

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.spatial.distance import cdist
from sklearn.metrics import average_precision_score, roc_auc_score

import reconaudit.metrics as M
from reconaudit.metrics import (
    MetricUndefinedWarning,
    auprc,
    auroc,
    choose_threshold,
    dice,
    hd95,
    normalized_surface_dice,
    patient_level,
    sensitivity_specificity,
)


def test_auroc_matches_sklearn_with_ties_and_multilabel_nan():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (300, 3)).astype(float)
    s = np.round(rng.random((300, 3)) + 0.3 * y, 1)  # heavy ties
    y[rng.random((300, 3)) < 0.1] = np.nan
    per = auroc(y, s)
    for j in range(3):
        k = ~np.isnan(y[:, j])
        assert per[j] == pytest.approx(roc_auc_score(y[k, j], s[k, j]), abs=1e-12)
        assert auprc(y, s)[j] == pytest.approx(average_precision_score(y[k, j], s[k, j]), abs=1e-12)
    assert auroc(y, s, average="macro") == pytest.approx(per.mean())


def test_auroc_single_class_is_nan_with_warning():
    y = np.array([[1, 0], [1, 1], [1, 0]], dtype=float)
    s = np.array([[0.2, 0.1], [0.3, 0.9], [0.4, 0.3]])
    with pytest.warns(MetricUndefinedWarning, match="label 0"):
        out = auroc(y, s)
    assert np.isnan(out[0]) and out[1] == 1.0


def test_choose_threshold_policies_known_answers():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])
    t = choose_threshold(y, s, "sens_eq_spec")
    sens, spec = sensitivity_specificity(y, s, t)
    assert t == 0.6 and sens == spec == 0.75
    assert choose_threshold(y, s, "youden") == 0.7  # J = 0.75 at t=0.7 and t=0.4: the first (higher) wins
    assert choose_threshold(y, s, "target_sensitivity", target=1.0) == 0.4
    assert choose_threshold(y, s, "target_sensitivity", target=0.5) == 0.8
    with pytest.raises(ValueError, match="policy"):
        choose_threshold(y, s, "best")


def test_one_operating_point_function():
    """The task models, the engine and the report share one threshold function and its conventions."""
    import reconaudit.tasks as T
    from reconaudit.tasks import thresholds as tt

    assert T.choose_threshold is choose_threshold and tt.choose_thresholds is M.choose_thresholds
    # tie in |TPR - TNR| (0.25 at t=0.8 and t=0.7): the larger balanced accuracy wins
    assert choose_threshold([1, 0, 1, 0, 0, 0], [0.9, 0.8, 0.7, 0.3, 0.2, 0.1]) == 0.7
    assert choose_threshold([1, 1, 1], [0.2, 0.4, 0.9]) == 0.5  # one class: the documented fallback


def test_dice_known_answers_and_empty_convention():
    a = np.zeros((3, 1, 8, 8), bool)
    b = np.zeros((3, 1, 8, 8), bool)
    a[0, 0, :4] = True
    b[0, 0, 2:6] = True  # |A|=|B|=32, overlap 16 -> 0.5
    a[1, 0, 0, 0] = True  # B empty -> 0
    np.testing.assert_allclose(dice(a, torch.from_numpy(b)), [0.5, 0.0, 1.0])  # empty-empty = 1


def _brute_hd95(p, t, q=95):
    def edges(m):
        return np.argwhere(m & ~ndimage.binary_erosion(m, border_value=0))

    ep, et = edges(p), edges(t)
    d = cdist(ep, et)
    return max(np.percentile(d.min(axis=1), q), np.percentile(d.min(axis=0), q))


def _blobs(seed, n=8, size=32):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for _ in range(2 * n):
        cy, cx, r = rng.uniform(4, size - 4), rng.uniform(4, size - 4), rng.uniform(2, 9)
        m = (yy - cy) ** 2 / r**2 + (xx - cx) ** 2 / (r * rng.uniform(0.5, 1.5)) ** 2 <= 1
        m |= rng.random((size, size)) < 0.01  # stray pixels
        out.append(m)
    out = np.array(out)
    return out[:n, None], out[n:, None]


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_hd95_matches_brute_force_and_monai():
    from monai.metrics import compute_hausdorff_distance

    p, t = _blobs(0)
    p[0, 0, :, :2] = True  # touches the image border
    got = hd95(p, t)
    brute = [_brute_hd95(p[i, 0], t[i, 0]) for i in range(len(p))]
    np.testing.assert_allclose(got, brute, atol=1e-9)
    ref = compute_hausdorff_distance(
        torch.from_numpy(p).float(), torch.from_numpy(t).float(), include_background=True, percentile=95
    )
    np.testing.assert_allclose(got, ref[:, 0].numpy(), atol=1e-4)


def test_hd95_missed_lesion_is_the_worst_case_and_identical_is_zero():
    p, t = _blobs(1, n=4)
    p[1] = False  # a missed lesion
    t[2] = False  # a false lesion
    p[3] = t[3] = False  # nothing to find, nothing found
    h, w = p.shape[-2:]
    out = hd95(p, t)
    assert out[1] == out[2] == pytest.approx(np.hypot(h, w))  # the image diagonal, worse than any real miss
    assert np.isfinite(out[0]) and out[0] < out[1] and np.isnan(out[3])  # nothing to measure
    legacy = hd95(p, t, empty="nan")
    assert np.isnan(legacy[1:]).all() and legacy[0] == out[0]
    assert (hd95(t[:1], t[:1]) == 0).all()
    # missing more lesions never lowers the mean
    p2 = p.copy()
    p2[0] = False
    assert np.nanmean(hd95(p2, t)) > np.nanmean(out)
    with pytest.raises(ValueError, match="empty"):
        hd95(p, t, empty="zero")


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI's own deprecation inside compute_surface_dice
@pytest.mark.parametrize("tolerance", [0.0, 1.0, 2.5])
def test_normalized_surface_dice_matches_monai(tolerance):
    from monai.metrics import compute_surface_dice

    p, t = _blobs(3, n=5)
    got = normalized_surface_dice(p, t, tolerance=tolerance)
    ref = compute_surface_dice(torch.from_numpy(p).float(), torch.from_numpy(t).float(),
                               class_thresholds=[tolerance], include_background=True)
    np.testing.assert_allclose(got, ref[:, 0].numpy(), atol=1e-6)
    e = np.zeros_like(p[:1])
    assert normalized_surface_dice(e, t[:1])[0] == 0 and np.isnan(normalized_surface_dice(e, e)[0])


def test_patient_level_median():
    s = patient_level([1.0, 3.0, 2.0, 10.0, 0.0], ["b", "b", "b", "a", "a"])
    assert s.to_dict() == {"a": 5.0, "b": 2.0}
