"""Every session-state key the frame and the pages share, in one place (not a page).

Streamlit's ``st.session_state`` is a dict of strings; a key spelled two ways in two files is
two different values. Keys read by more than one file, and keys built per run, come from here.
Widget keys used by one page only are local to that page (the AppTests find widgets by them).
"""
from __future__ import annotations

RUN = "run"                      # the selected run's folder name (the sidebar picker's key)
PENDING_RUN = "_pending_run"     # a page asks the frame to select this run on the next rerun
REVIEWER = "reviewer"            # the reviewer's name, kept across pages
REVIEWER_WIDGET = "_reviewer_w"  # the sidebar text input (widget keys vanish with their page)


def cutoff(run: str) -> str:
    """The cut-off the Loss distributions slider last showed for ``run`` (the value itself lives in
    RUN_DIR/review.json: ``turn_core.review.save_cutoff``)."""
    return f"cutoff::{run}"


def cutoff_widget(run: str) -> str:
    """The cut-off slider of ``run`` on Loss distributions."""
    return f"_cutoff_w::{run}"


def review(name: str, run: str) -> str:
    """A per-run key of the Review page: ``name`` is cls, pair, status, pp (per page), cur
    (the suspect in focus), relabel, page."""
    return f"rv_{name}::{run}"


def event_tail(run_dir: str) -> str:
    """The Training page's ``views.EventTail`` over ``run_dir``'s events.jsonl: kept across
    reruns so that each poll parses only the lines appended since the last one."""
    return f"_events::{run_dir}"


REVIEW_TOAST = "_rv_toast"       # message shown once after a review callback
REVIEW_ERROR = "_rv_error"       # error shown once after a review callback
DELETE_PICK, DELETE_SURE = "delete_pick", "delete_sure"   # Overview: the run to delete, confirmed
