"""Analyses of trained models (DESIGN.md §2.5, §3): library functions that write numbers (JSON) and figures (PNG).

classification: logistic-regression probes on the mean code over inference steps, confidence intervals;
frontier: rate–distortion frontier, Pareto fronts, effects of β and T_train; ood: out-of-distribution test
sets for MNIST models; gabor: Gabor fits of dictionary atoms; tuning: orientation tuning to gratings;
temporal: contrast-dependent latency, serial dependence, tracking of changing input, spike rasters;
stimuli: every input the analyses build (gratings, contrast series, pairs, rotated, shifted and moving
images); summary: JSON-ready numbers; commands: ``fond analyze``.
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
from fond.analysis.gabor import GaborFit, GaborSummary, fit_dictionary, fit_gabor, gabor_patch, plot_gabor_summary
from fond.analysis.ood import OOD_SETS, OODResult, ood_evaluation, ood_sets, ood_table, plot_ood
from fond.analysis.stimuli import (
    contrast_series,
    gratings,
    pair_sequence,
    rotate_images,
    rotating_frames,
    rotating_sequence,
    shift_images,
    shifting_sequence,
)
from fond.analysis.temporal import (
    LatencyResult,
    SerialDependenceResult,
    TrackingResult,
    contrast_latency,
    plot_contrast_latency,
    plot_serial_dependence,
    plot_tracking,
    response_latency,
    serial_dependence,
    spike_raster,
    tracking,
)
from fond.analysis.tuning import TuningResult, grating_tuning, plot_tuning

__all__ = [
    "ClassificationResult", "chance_level", "classification_over_steps", "confidence_interval",
    "features_over_steps", "plot_classification", "probe_accuracy", "record_schedule",
    "frontier_table", "pareto_front", "plot_effects", "plot_frontier", "summarize_effects",
    "GaborFit", "GaborSummary", "fit_dictionary", "fit_gabor", "gabor_patch", "plot_gabor_summary",
    "TuningResult", "grating_tuning", "plot_tuning",
    "OOD_SETS", "OODResult", "ood_evaluation", "ood_sets", "ood_table", "plot_ood",
    "contrast_series", "gratings", "pair_sequence", "rotate_images", "rotating_frames", "rotating_sequence",
    "shift_images", "shifting_sequence",
    "LatencyResult", "SerialDependenceResult", "TrackingResult", "contrast_latency", "plot_contrast_latency",
    "plot_serial_dependence", "plot_tracking", "response_latency", "serial_dependence", "spike_raster", "tracking",
]
