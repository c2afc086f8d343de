"""The errors a user can cause, each reported by the launchers as one line (exit 2) before anything compiles.

`ConfigError`: a configuration that cannot run (bad value, mesh that does not fit, a run already holding the output
directory). `DataError`: a problem with input data, naming the file and line it came from. `ModelError`: a model
directory we cannot use as asked (unsupported architecture, remote code, a score model without a score head). `TrainingError`: a run that
went wrong in a way the user must act on (too many non-finite updates); nothing is exported.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration that cannot run; reported as one line before anything compiles."""


class DataError(ValueError):
    """A problem with input data, with the file and line it came from."""


class ModelError(ValueError):
    """A model or tokenizer directory that cannot be used as asked."""


class TrainingError(RuntimeError):
    """Training went wrong in a way the user must act on (e.g. too many non-finite updates); nothing is exported."""


class RunInterrupted(KeyboardInterrupt):
    """SIGINT / SIGTERM ended a run after it saved a consistent checkpoint (exit 130)."""


__all__ = ["ConfigError", "DataError", "ModelError", "RunInterrupted", "TrainingError"]
