"""The errors a user can cause, each reported by the launchers as one line (exit 2) before anything compiles.

`ConfigError`: a configuration that cannot run (bad value, mesh that does not fit, a run already holding the output
directory). `DataError`: a problem with input data, naming the file and line it came from. `ModelError`: a model
directory we cannot use as asked (unsupported architecture, remote code, a score model without a score head). `TrainingError`: a run that
went wrong in a way the user must act on (too many non-finite updates); nothing is exported.
"""

from __future__ import annotations

import errno
import os


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


# writes that fail for a reason outside the run (a full disk, a file-size limit or quota on a shared cluster, a
# directory made read-only): what happened, and what to do before re-running the same command
STORAGE_ERRNOS = {
    errno.ENOSPC: ("no space left on device", "free space (or lower checkpoint.keep)"),
    errno.EFBIG: ("file too large for this filesystem's or shell's file-size limit (ulimit -f)",
                  "raise the limit or write elsewhere"),
    errno.EDQUOT: ("disk quota exceeded", "free space under the quota or raise it"),
    errno.EACCES: ("permission denied", "make the directory writable"),
    errno.EROFS: ("read-only file system", "write to a writable output_dir"),
}


def storage_failure(err: BaseException) -> tuple[int, str, str] | None:
    """(errno, what happened, what to do) when `err` is a write that failed for a storage reason — an OSError, or
    orbax's ValueError that carries the OS error in its text — else None."""
    code = getattr(err, "errno", None)
    if code not in STORAGE_ERRNOS:
        text = str(err)
        code = next((c for c in STORAGE_ERRNOS if f"os_error_code='{c}'" in text or os.strerror(c) in text), None)
    return None if code is None else (code, *STORAGE_ERRNOS[code])


__all__ = ["ConfigError", "DataError", "ModelError", "RunInterrupted", "STORAGE_ERRNOS", "TrainingError",
           "storage_failure"]
