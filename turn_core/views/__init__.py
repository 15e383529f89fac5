"""Derived tables and arrays for the app's pages, as plain functions (no Streamlit here).

Every page reads a run directory through ``turn_core.rundir.Run`` and asks this package for
what it shows. One module per job:

==============  ==========================================================================
``samples``     masks over ``samples.csv``: truth known?, truly wrong, flagged; true labels
``tables``      overview and data-preview tables (runs, confusion, noise per class) + formatting
``progress``    where a run is, from its event log (phase, ETA, loss / clean-set curves)
``losses``      loss histograms and the run's GMM drawn over them
``cutoff``      the suspicion cut-off: default, precision/recall, sweep
``queue``       the reviewer's queue of suspects: order, filters, pages, next
``neighbours``  nearest neighbours in feature space
``images``      thumbnails as PNG bytes
==============  ==========================================================================

Words: *flagged* is the run's own rule (the ``flagged`` column); *suspects* are the reviewer's
queue, the images whose suspicion is at or above the saved cut-off.

Inputs are the ``samples.csv`` DataFrame (``Run.samples()``), numpy arrays, or the event list;
every function accepts a run that is half written and returns something empty instead of raising.
``from turn_core import views`` gives every public name of the modules below.
"""
from __future__ import annotations

from .cutoff import cutoff_stats, default_cutoff, pr_curve
from .images import png_bytes, upscale_nearest
from .losses import (
    gmm_curves,
    gmm_for_class,
    gmm_for_column,
    gmm_tau_loss,
    histogram,
    loss_columns,
    loss_groups,
)
from .neighbours import (
    nearest_neighbours,
    needs_search,
    neighbour_table,
    neighbour_vote,
    normalise_rows,
    panel_view,
    run_neighbour_table,
    saved_neighbours,
)
from .progress import PHASE_NAMES, EventTail, loss_curve_rows, per_class_spread, progress_summary
from .queue import (
    REVIEW_STATUSES,
    after_decision,
    decision_name,
    filter_queue,
    next_in_queue,
    paginate,
    pair_counts,
    review_queue,
    step,
    suspect_order,
)
from .samples import TRUE_LABEL, flagged_mask, has_truth, true_labels, truth_mask
from .tables import (
    GRID_MAX_CLASSES,
    RUNS_COLUMNS,
    TOP_ROWS,
    changed_pairs,
    class_count_table,
    confusion_table,
    detection_summary,
    fmt_duration,
    fmt_round,
    fmt_seconds,
    fmt_time,
    n_classes,
    noise_per_class,
    runs_table,
    sample_per_class,
    search_rows,
)

__all__ = [
    "GRID_MAX_CLASSES",
    "PHASE_NAMES",
    "REVIEW_STATUSES",
    "RUNS_COLUMNS",
    "TOP_ROWS",
    "TRUE_LABEL",
    "EventTail",
    "after_decision",
    "changed_pairs",
    "class_count_table",
    "confusion_table",
    "cutoff_stats",
    "decision_name",
    "default_cutoff",
    "detection_summary",
    "filter_queue",
    "flagged_mask",
    "fmt_duration",
    "fmt_round",
    "fmt_seconds",
    "fmt_time",
    "gmm_curves",
    "gmm_for_class",
    "gmm_for_column",
    "gmm_tau_loss",
    "has_truth",
    "histogram",
    "loss_columns",
    "loss_curve_rows",
    "loss_groups",
    "n_classes",
    "nearest_neighbours",
    "needs_search",
    "neighbour_table",
    "neighbour_vote",
    "next_in_queue",
    "noise_per_class",
    "normalise_rows",
    "paginate",
    "pair_counts",
    "panel_view",
    "per_class_spread",
    "png_bytes",
    "pr_curve",
    "progress_summary",
    "review_queue",
    "run_neighbour_table",
    "runs_table",
    "sample_per_class",
    "saved_neighbours",
    "search_rows",
    "step",
    "suspect_order",
    "true_labels",
    "truth_mask",
    "upscale_nearest",
]
