"""clinfl's Flower ServerApp: the component ``clinfl coordinator start`` submits.

It runs at the coordinator, in the process Flower starts for the run, and only reads the run
folder's plan and drives :func:`~coordinator.deploy.deployment.run_deployment`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from clinfl.errors import ClinflError
from clinfl.transport.flower.bundle import RUN_DIR_KEY
from coordinator.control import RunControl
from coordinator.deploy.deployment import run_deployment

app = ServerApp()
log = logging.getLogger("clinfl.coordinator")


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the federation whose folder the run configuration names."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    run_dir = Path(str(context.run_config[RUN_DIR_KEY]))
    try:
        run_deployment(grid, run_dir)
    except Exception as error:  # the operator's shell must learn why, not wait forever
        reason = error.one_line() if isinstance(error, ClinflError) else repr(error)
        log.exception("the federation failed: %s", reason)
        control = RunControl(run_dir)
        control.set_status("failed", stopped=reason)
        control.close()
        raise SystemExit(getattr(error, "exit_code", 1)) from None
