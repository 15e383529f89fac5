"""User-facing errors.

Anything the user can fix (a bad file, a bad value, a missing column) is raised as an
``InputError`` whose message names the file, row or value at fault. The CLI prints it as one
line and exits non-zero; the app shows it with ``st.error``. Nothing else is caught broadly:
a bug should still produce a traceback in the run's log.
"""


class TurnAuditError(Exception):
    """Base class of every error turn_core raises on purpose."""


class InputError(TurnAuditError, ValueError):
    """Bad user input: the message is a complete, one-line explanation for a person."""


class Cancelled(TurnAuditError):
    """Raised inside a run when its cancellation token is set; the run stops within a batch."""
