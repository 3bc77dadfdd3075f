"""Analyses of trained models (DESIGN.md §2.5, §3): library functions that write numbers (JSON) and figures (PNG).

classification: logistic-regression probes on the mean code over inference steps, confidence intervals;
frontier: rate–distortion frontier, Pareto fronts, effects of β and T_train; ood: out-of-distribution test
sets for MNIST models; gabor: Gabor fits of dictionary atoms and grating tuning; temporal: contrast-
dependent latency, serial dependence, tracking of changing input; commands: ``fond analyze``.
"""

from fond.analysis.classification import (
    ClassificationResult,
    chance_level,
    classification_over_steps,
    confidence_interval,
    features_over_steps,
    plot_classification,
    probe_accuracy,
    record_schedule,
)
from fond.analysis.frontier import frontier_table, pareto_front, plot_effects, plot_frontier, summarize_effects
from fond.analysis.gabor import (
    GaborFit,
    GaborSummary,
    TuningResult,
    fit_dictionary,
    fit_gabor,
    gabor_patch,
    grating_tuning,
    gratings,
    plot_gabor_summary,
    plot_tuning,
)
from fond.analysis.ood import OOD_SETS, OODResult, ood_evaluation, ood_sets, ood_table, plot_ood
from fond.analysis.temporal import (
    LatencyResult,
    SerialDependenceResult,
    TrackingResult,
    contrast_latency,
    plot_contrast_latency,
    plot_serial_dependence,
    plot_tracking,
    response_latency,
    rotating_sequence,
    serial_dependence,
    shifting_sequence,
    tracking,
)

__all__ = [
    "ClassificationResult", "chance_level", "classification_over_steps", "confidence_interval",
    "features_over_steps", "plot_classification", "probe_accuracy", "record_schedule",
    "frontier_table", "pareto_front", "plot_effects", "plot_frontier", "summarize_effects",
    "GaborFit", "GaborSummary", "TuningResult", "fit_dictionary", "fit_gabor", "gabor_patch", "grating_tuning",
    "gratings", "plot_gabor_summary", "plot_tuning",
    "OOD_SETS", "OODResult", "ood_evaluation", "ood_sets", "ood_table", "plot_ood",
    "LatencyResult", "SerialDependenceResult", "TrackingResult", "contrast_latency", "plot_contrast_latency",
    "plot_serial_dependence", "plot_tracking", "response_latency", "rotating_sequence", "serial_dependence",
    "shifting_sequence", "tracking",
]
