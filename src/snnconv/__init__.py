"""snnconv: ANN-to-SNN conversion experiments (QCFS, offset-spike calibration, FTBC) driven by Hydra.

Pipeline, one module per step: data -> models / ann -> train -> snn (convert, simulate) -> methods (calibrate)
-> evaluate -> report; `runner.run(cfg)` walks it top to bottom.
"""

__version__ = "0.1.0"


class SnnconvError(Exception):
    """A user-facing error: printed as one line by run.py, which then exits non-zero."""
