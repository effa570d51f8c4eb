"""Operating thresholds of the diagnostic models: re-exported from :mod:`reconaudit.metrics.thresholds`.

There is one operating-point function in the package (:func:`reconaudit.metrics.choose_threshold`);
this module keeps the import path the task models use.
"""

from reconaudit.metrics.thresholds import (
    FALLBACK_THRESHOLD,
    THRESHOLD_POLICIES,
    ThresholdPolicy,
    apply_thresholds,
    choose_threshold,
    choose_thresholds,
)

__all__ = [
    "FALLBACK_THRESHOLD",
    "THRESHOLD_POLICIES",
    "ThresholdPolicy",
    "apply_thresholds",
    "choose_threshold",
    "choose_thresholds",
]
