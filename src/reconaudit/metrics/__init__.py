"""Image quality, task and fairness metrics, and their statistics: pure array code.

Everything here works on numpy arrays (torch tensors are accepted at the boundary) so that it can be
called on any predictions, without the rest of reconaudit.  See docs/metrics.md for the formulas.
"""

from .fairness import (
    CONFUSION_FIELDS,
    EODD_AGGS,
    METRIC_NEEDS,
    FairnessUndefinedWarning,
    auroc_gap,
    by_group,
    confusion_counts,
    demographic_parity_difference,
    dice_gap,
    dice_skewed_error_ratio,
    equal_opportunity_difference,
    equalized_odds_difference,
    fairness_from_counts,
    group_rates,
    group_support,
    guard_reasons,
    operating_point_flag,
    ser_from_group_means,
    skewed_error_ratio,
    worst_group,
)
from .growth import series_growth
from .hallucination import (
    decision_flips,
    false_positive_volume,
    hallucination_map,
    pixel_correlation,
    record_flips,
    record_sample_spread,
    sample_spread,
    spread_error_correlation,
    uncertainty_coverage,
)
from .image import nmse, psnr, ssim, ssim_map
from .observer import CHOResult, channelized_hotelling, laguerre_gauss_channels
from .perception import feature_distance, frechet_distance
from .region import REGION_METRICS, REGIONS, group_mean_summary, region_masks, region_quality
from .regression import group_mae, mae, r2, regression_summary, rmse, weighted_regression_metrics
from .stats import (
    BootstrapResult,
    ChangeResult,
    DeLongResult,
    PermutationResult,
    adjust_pvalues,
    aggregate_seeds,
    bca_interval,
    benjamini_hochberg,
    bootstrap_metrics,
    bootstrap_p_value,
    bootstrap_weights,
    clustered_delong_test,
    delong_test,
    floor_p_value,
    holm,
    iter_bootstrap_weights,
    metric_change,
    needs_second_stage,
    paired_permutation_test,
    percentile_interval,
    placement_values,
    two_stage_resamples,
    weighted_auroc,
    weighted_confusion_counts,
)
from .task import (
    MetricUndefinedWarning,
    auprc,
    auroc,
    dice,
    hd95,
    normalized_surface_dice,
    patient_level,
    sensitivity_specificity,
)
from .thresholds import THRESHOLD_POLICIES, apply_thresholds, choose_threshold, choose_thresholds

__all__ = [
    "group_mae",
    "mae",
    "r2",
    "regression_summary",
    "rmse",
    "series_growth",
    "weighted_regression_metrics",
    "CHOResult",
    "channelized_hotelling",
    "decision_flips",
    "false_positive_volume",
    "feature_distance",
    "frechet_distance",
    "hallucination_map",
    "laguerre_gauss_channels",
    "pixel_correlation",
    "record_flips",
    "record_sample_spread",
    "sample_spread",
    "spread_error_correlation",
    "uncertainty_coverage",
    "REGIONS",
    "REGION_METRICS",
    "group_mean_summary",
    "region_masks",
    "region_quality",
    "CONFUSION_FIELDS",
    "METRIC_NEEDS",
    "EODD_AGGS",
    "dice_skewed_error_ratio",
    "ser_from_group_means",
    "operating_point_flag",
    "bootstrap_p_value",
    "floor_p_value",
    "needs_second_stage",
    "two_stage_resamples",
    "clustered_delong_test",
    "group_support",
    "guard_reasons",
    "BootstrapResult",
    "ChangeResult",
    "DeLongResult",
    "FairnessUndefinedWarning",
    "MetricUndefinedWarning",
    "PermutationResult",
    "adjust_pvalues",
    "aggregate_seeds",
    "auprc",
    "auroc",
    "auroc_gap",
    "bca_interval",
    "benjamini_hochberg",
    "bootstrap_metrics",
    "bootstrap_weights",
    "by_group",
    "choose_threshold",
    "choose_thresholds",
    "apply_thresholds",
    "THRESHOLD_POLICIES",
    "confusion_counts",
    "delong_test",
    "demographic_parity_difference",
    "dice",
    "dice_gap",
    "equal_opportunity_difference",
    "equalized_odds_difference",
    "fairness_from_counts",
    "group_rates",
    "hd95",
    "normalized_surface_dice",
    "holm",
    "iter_bootstrap_weights",
    "metric_change",
    "nmse",
    "paired_permutation_test",
    "patient_level",
    "percentile_interval",
    "placement_values",
    "psnr",
    "sensitivity_specificity",
    "skewed_error_ratio",
    "ssim",
    "ssim_map",
    "weighted_auroc",
    "weighted_confusion_counts",
    "worst_group",
]

# the fairness audit in depth (docs/metrics.md, "Fairness audit in depth")
from .calibration import (  # noqa: E402
    calibration_bins,
    calibration_by_group,
    calibration_slope_intercept,
    expected_calibration_error,
    reliability_curve,
)
from .intersections import INTERSECTION_SEPARATOR, group_guard, intersect_groups, intersection_name  # noqa: E402
from .onset import OnsetResult, onset_level  # noqa: E402
from .operating_point import OPERATING_POINT_QUANTITIES, operating_point_audit, restoring_threshold  # noqa: E402
from .power import power_at, required_patients, se_from_interval  # noqa: E402
from .ranking import FriedmanResult, bootstrap_ranks, friedman_test, overlap_text  # noqa: E402
from .resampling import bootstrap_statistic  # noqa: E402
from .segmentation_equity import SEGMENTATION_EQUITY_METRICS, equity_scaled, segmentation_equity  # noqa: E402
from .shortcut import probe_auroc, probe_folds, probe_scores, shortcut_probe  # noqa: E402

__all__ += [
    "INTERSECTION_SEPARATOR", "OPERATING_POINT_QUANTITIES", "SEGMENTATION_EQUITY_METRICS", "FriedmanResult",
    "OnsetResult", "bootstrap_ranks", "calibration_bins", "calibration_by_group", "calibration_slope_intercept",
    "equity_scaled", "expected_calibration_error", "friedman_test", "group_guard", "intersect_groups",
    "intersection_name", "onset_level", "operating_point_audit", "overlap_text", "power_at", "reliability_curve",
    "required_patients", "restoring_threshold", "se_from_interval", "segmentation_equity", "bootstrap_statistic",
    "probe_auroc", "probe_folds", "probe_scores", "shortcut_probe",
]
