"""turn_core: TURN (Ahn et al., IJCAI 2024) label-error auditing as a library.

No Streamlit here. Heavy imports (torch, timm) happen inside the functions that need them, so
``import turn_core`` stays fast for the app's pages and the CLI's --help.
"""
from .config import METHODS, RunConfig
from .errors import Cancelled, InputError, TurnAuditError
from .rundir import Run, list_runs, read_status

__version__ = "0.1.0"


def run(config, progress=None, cancel=None):
    """Run TURN (or a baseline) end to end; see ``turn_core.pipeline.run``."""
    from .pipeline import run as _run

    return _run(config, progress=progress, cancel=cancel)


__all__ = ["METHODS", "Cancelled", "InputError", "Run", "RunConfig", "TurnAuditError", "__version__", "list_runs",
           "read_status", "run"]
