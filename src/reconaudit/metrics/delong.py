r"""DeLong's test for two correlated AUROCs, per study and with studies clustered in patients."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import stats as sps

from ._auroc import placement_counts
from ._utils import as_1d, as_binary, check_same_length, group_codes

__all__ = ["DeLongResult", "placement_values", "delong_test", "clustered_delong_test"]


class DeLongResult(NamedTuple):
    """Result of :func:`delong_test`: AUROC(a) - AUROC(b), its standard error, two-sided p-value."""

    difference: float
    standard_error: float
    p_value: float


def placement_values(y_true: object, y_score: object) -> tuple[np.ndarray, np.ndarray]:
    r"""DeLong placement values.

    .. math:: V_{10}(i) = \frac{1}{n_0}\sum_{j: y_j=0} \psi(s_i, s_j), \quad
              V_{01}(j) = \frac{1}{n_1}\sum_{i: y_i=1} \psi(s_i, s_j), \quad
              \psi(a, b) = [a > b] + \tfrac12 [a = b]

    Returns ``(V10 over positives, V01 over negatives)`` in study order; AUROC is the mean of either.
    """
    y = as_binary(y_true, "y_true")
    s = as_1d(y_score, "y_score", np.float64)
    check_same_length(y_true=y, y_score=s)
    n1, n0 = int(y.sum()), int(len(y) - y.sum())
    if n1 == 0 or n0 == 0:
        raise ValueError(f"placement values need positives and negatives; got {n1} and {n0}")
    c = placement_counts(y, s)
    return c[y == 1] / n0, c[y == 0] / n1


def delong_test(y_true: object, score_a: object, score_b: object) -> DeLongResult:
    r"""DeLong's test for two correlated AUROCs on the same studies (DeLong et al. 1988).

    With placement values :math:`V_{10}, V_{01}` of each score (see :func:`placement_values`) and
    :math:`S_{10}, S_{01}` their 2x2 sample covariance matrices over the :math:`n_1` positives and
    :math:`n_0` negatives:

    .. math:: \mathrm{Var}(\hat A_a - \hat A_b) = \frac{S_{10}^{aa} + S_{10}^{bb} - 2S_{10}^{ab}}{n_1}
              + \frac{S_{01}^{aa} + S_{01}^{bb} - 2S_{01}^{ab}}{n_0},
              \quad z = \frac{\hat A_a - \hat A_b}{\sqrt{\mathrm{Var}}}, \quad p = 2(1 - \Phi(|z|))

    Returns
    -------
    DeLongResult
        ``(difference, standard_error, p_value)``; p is 1 when the two scores order every pair alike.
    """
    v10a, v01a = placement_values(y_true, score_a)
    v10b, v01b = placement_values(y_true, score_b)
    diff = float(v10a.mean() - v10b.mean())
    s10 = np.cov(np.vstack([v10a, v10b])) if len(v10a) > 1 else np.zeros((2, 2))
    s01 = np.cov(np.vstack([v01a, v01b])) if len(v01a) > 1 else np.zeros((2, 2))
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / len(v10a) + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / len(
        v01a
    )
    se = float(np.sqrt(max(var, 0.0)))
    if se == 0:
        return DeLongResult(diff, 0.0, 1.0 if diff == 0 else 0.0)
    return DeLongResult(diff, se, float(2 * sps.norm.sf(abs(diff) / se)))


def clustered_delong_test(y_true: object, score_a: object, score_b: object, *, patient_ids: object) -> DeLongResult:
    r"""DeLong's test for two correlated AUROCs with studies clustered in patients (Obuchowski 1997).

    Placement values are summed per patient :math:`k` (the cluster): with :math:`m_k` positive and
    :math:`n_k` negative studies of patient :math:`k`, :math:`M = \sum_k m_k`, :math:`N = \sum_k n_k`,

    .. math:: X_k = \sum_{i \in k,\, y_i = 1} V_{10}(i), \quad Y_k = \sum_{j \in k,\, y_j = 0} V_{01}(j),
              \quad \hat A = rac{\sum_k X_k}{M} = rac{\sum_k Y_k}{N}

    and, for the difference of the two scores, :math:`D^X_k = (X^a_k - m_k\hat A_a) - (X^b_k - m_k\hat A_b)`,
    :math:`D^Y_k` alike:

    .. math:: \mathrm{Var}(\hat A_a - \hat A_b) = rac{K_1}{K_1 - 1}rac{\sum_k (D^X_k)^2}{M^2}
              + rac{K_0}{K_0 - 1}rac{\sum_k (D^Y_k)^2}{N^2}
              + rac{2K}{K - 1}rac{\sum_k D^X_k D^Y_k}{M N}

    with :math:`K_1` (:math:`K_0`) the patients with a positive (negative) study and :math:`K` all
    patients: Obuchowski's clustered variance with DeLong's per-class small-sample factors, so that
    it **equals** :func:`delong_test` when every patient has one study.  :math:`z = \Delta / SE`,
    :math:`p = 2(1 - \Phi(|z|))`.

    Returns
    -------
    DeLongResult
        ``(difference, standard_error, p_value)``; p is 1 when the two scores order every pair alike.
    """
    y = as_binary(y_true, "y_true")
    pcode, labels = group_codes(patient_ids, "patient_ids")
    k = len(labels)
    check_same_length(y_true=y, patient_ids=pcode)
    pos = y == 1
    m, n = int(pos.sum()), int((~pos).sum())
    if m == 0 or n == 0:
        raise ValueError(f"clustered_delong_test: needs positives and negatives; got {m} and {n}")
    mk = np.bincount(pcode[pos], minlength=k).astype(np.float64)
    nk = np.bincount(pcode[~pos], minlength=k).astype(np.float64)
    dx, dy, diff = np.zeros(k), np.zeros(k), 0.0
    for sign, sc in ((1.0, score_a), (-1.0, score_b)):
        v10, v01 = placement_values(y, sc)
        a = float(v10.mean())
        dx += sign * (np.bincount(pcode[pos], weights=v10, minlength=k) - mk * a)
        dy += sign * (np.bincount(pcode[~pos], weights=v01, minlength=k) - nk * a)
        diff += sign * a
    k1, k0 = int((mk > 0).sum()), int((nk > 0).sum())

    def factor(c: int) -> float:
        return c / (c - 1) if c > 1 else 0.0

    var = (factor(k1) * float((dx**2).sum()) / m**2 + factor(k0) * float((dy**2).sum()) / n**2
           + 2 * factor(k) * float((dx * dy).sum()) / (m * n))
    se = float(np.sqrt(max(var, 0.0)))
    if se == 0:
        return DeLongResult(diff, 0.0, 1.0 if diff == 0 else 0.0)
    return DeLongResult(diff, se, float(2 * sps.norm.sf(abs(diff) / se)))
