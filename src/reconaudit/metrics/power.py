r"""Sample-size planning for a change in a fairness gap (two-sided z-test at level :math:`\alpha`).

With :math:`\widehat{SE}` the bootstrap standard error of the change :math:`\hat\Delta` observed
on :math:`N` test patients, the per-patient standard deviation is :math:`\sigma = \widehat{SE}\sqrt N`
(the standard error of a patient-level statistic falls as :math:`1/\sqrt n`).  To detect a change of
size :math:`\delta` with power :math:`1-\beta`:

.. math:: n = \left\lceil \left(\frac{(z_{1-\alpha/2} + z_{1-\beta})\,\sigma}{\delta}\right)^2 \right\rceil,
          \qquad \text{power}(n) = \Phi\!\left(\frac{|\delta|\sqrt n}{\sigma} - z_{1-\alpha/2}\right)
                                 + \Phi\!\left(-\frac{|\delta|\sqrt n}{\sigma} - z_{1-\alpha/2}\right)

A bootstrap interval gives :math:`\widehat{SE} = (\text{hi} - \text{lo}) / (2 z_{(1+c)/2})` for
confidence :math:`c` (:func:`se_from_interval`).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as sps

__all__ = ["se_from_interval", "power_at", "required_patients"]


def se_from_interval(ci_low: float, ci_high: float, confidence: float = 0.95) -> float:
    """Standard error of a normal interval: :math:`(hi - lo) / (2 z_{(1+c)/2})`."""
    return float((ci_high - ci_low) / (2 * sps.norm.ppf((1 + confidence) / 2)))


def power_at(n_patients: float, sd: float, effect: float, alpha: float = 0.05) -> float:
    """Power of the two-sided z-test with ``n_patients`` patients and per-patient ``sd`` (module docstring)."""
    if not (np.isfinite(sd) and sd > 0 and n_patients > 0):
        return float("nan")
    z = sps.norm.ppf(1 - alpha / 2)
    ncp = abs(effect) * math.sqrt(n_patients) / sd
    return float(sps.norm.cdf(ncp - z) + sps.norm.cdf(-ncp - z))


def required_patients(
    se: float, n_patients: int, effect: float, *, alpha: float = 0.05, power: float = 0.8
) -> float:
    """Test patients needed to detect a change of ``effect`` with ``power`` (module docstring).

    ``se`` is the standard error observed with ``n_patients`` patients.  NaN when ``se`` is
    undefined or not positive.

    Raises
    ------
    ValueError
        For ``effect == 0``, ``alpha`` or ``power`` outside (0, 1), or ``n_patients < 1``.
    """
    if effect == 0 or not np.isfinite(effect):
        raise ValueError(f"effect: expected a non-zero change to detect, got {effect!r}")
    if not (0 < alpha < 1 and 0 < power < 1):
        raise ValueError(f"alpha and power: expected values in (0, 1), got {alpha!r} and {power!r}")
    if n_patients < 1:
        raise ValueError(f"n_patients: expected at least 1, got {n_patients!r}")
    if not (np.isfinite(se) and se > 0):
        return float("nan")
    sd = se * math.sqrt(n_patients)
    z = sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(power)
    return float(math.ceil((z * sd / abs(effect)) ** 2))
