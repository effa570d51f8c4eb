r"""Statistics, in one namespace: the patient-level bootstrap (:mod:`.bootstrap`), its weights and
generic loop (:mod:`.resampling`), intervals and p-values (:mod:`.intervals`), the paired
permutation test (:mod:`.permutation`), DeLong's tests (:mod:`.delong`), multiple-comparison
corrections (:mod:`.corrections`) and aggregation across seeds (:mod:`.aggregation`).

Each concept lives in its own module; this one re-exports them (as does :mod:`reconaudit.metrics`).
"""

from __future__ import annotations

from ..schema import COUNT_METRICS  # the records schema's metric family
from .aggregation import ChangeResult, aggregate_seeds, metric_change
from .bootstrap import BootstrapResult, bootstrap_metrics
from .corrections import adjust_pvalues, benjamini_hochberg, holm
from .delong import DeLongResult, clustered_delong_test, delong_test, placement_values
from .intervals import (
    bca_interval,
    bootstrap_p_value,
    floor_p_value,
    needs_second_stage,
    percentile_interval,
    two_stage_resamples,
)
from .permutation import PermutationResult, paired_permutation_test
from .resampling import bootstrap_weights, iter_bootstrap_weights, weighted_auroc, weighted_confusion_counts

__all__ = [
    "bootstrap_weights",
    "iter_bootstrap_weights",
    "weighted_confusion_counts",
    "weighted_auroc",
    "percentile_interval",
    "bootstrap_p_value",
    "floor_p_value",
    "two_stage_resamples",
    "needs_second_stage",
    "bca_interval",
    "BootstrapResult",
    "bootstrap_metrics",
    "DeLongResult",
    "placement_values",
    "delong_test",
    "clustered_delong_test",
    "PermutationResult",
    "paired_permutation_test",
    "holm",
    "benjamini_hochberg",
    "adjust_pvalues",
    "aggregate_seeds",
    "ChangeResult",
    "metric_change",
    "COUNT_METRICS",
]
