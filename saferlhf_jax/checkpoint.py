"""Checkpoints: one orbax step = the train-state pytree (flattened to string keys) + a JSON sidecar (data position,
counters, config). Saves are atomic (orbax writes a temporary directory and renames it), keep the newest N, and
restore onto any mesh: arrays come back with the shardings of the abstract target you pass.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import gc
import logging
import os
import pathlib
import shutil
import sys
import time
import warnings
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from saferlhf_jax.errors import TrainingError, storage_failure

log = logging.getLogger(__name__)


def key_name(k) -> str:
    """A pytree path entry as text (a dict key, a sequence index, an attribute name): the one spelling of a leaf's
    path that checkpoints, the state layout and the evaluation loader share."""
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def flatten(tree) -> tuple[dict[str, Any], Any]:
    """tree → ({'a.b.0.c': leaf}, treedef)."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    flat = {".".join(key_name(k) for k in path): leaf for path, leaf in leaves}
    if len(flat) != len(leaves):
        raise ValueError("checkpoint: two leaves map to the same key")
    return flat, treedef


def unflatten(flat: dict[str, Any], like) -> Any:
    leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
    return jax.tree_util.tree_unflatten(treedef, [flat[".".join(key_name(k) for k in p)] for p, _ in leaves])


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, or None (another C library)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def return_freed_memory() -> None:
    """Give the C heap's free pages back to the OS. Writing a checkpoint allocates compression and write buffers
    about the size of the state on orbax/tensorstore threads; glibc keeps them in per-thread arenas after they are
    freed, so the resident set grew by ~0.6× the state per save (SmolLM2 PPO-Lag, a save every iteration: +1 GB per
    iteration to a 16 GB peak; docs/ppo_lag_smollm2_rss.json)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _quiet_abandoned_writes(manager) -> None:
    """After a write failed for a storage reason the run ends with one line; what the abandoned write still reports
    from orbax's and tensorstore's threads — later, and the later the busier the machine — is the same failure
    again: the manager is closed (its threads joined), and for the rest of the process asyncio's "Task exception
    was never retrieved" records of storage failures, tensorstore's "Event loop is closed" callback errors and the
    never-awaited write coroutines are dropped."""
    with contextlib.suppress(Exception):
        manager.close()
    gc.collect()
    time.sleep(0.2)
    logging.getLogger("asyncio").addFilter(lambda record: storage_failure(
        record.exc_info[1] if record.exc_info else Exception(record.getMessage())) is None)
    previous = sys.excepthook

    def hook(kind, value, tb):
        if not (isinstance(value, RuntimeError) and "Event loop is closed" in str(value)):
            previous(kind, value, tb)

    sys.excepthook = hook
    warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)


@contextlib.contextmanager
def _stderr_held():
    """Holds back what is written to file descriptor 2 inside the block (tensorstore's writer threads print the
    Python errors of their callbacks there directly, bypassing logging) and yields a one-item list: a caller that
    clears it drops the text; otherwise it is written out when the block ends, an exception or not."""
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        held = [True]
        try:
            yield held
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if held:
                capture.seek(0)
                text = capture.read()
                if text:
                    os.write(2, text)


@contextlib.contextmanager
def _errors_held(logger: logging.Logger):
    """Holds back the error records `logger` gets inside the block and yields them as a list: a caller that clears
    it drops them (a full disk then reads as one line: the writer threads' tracebacks add nothing to it); whatever is
    left is logged, in order, when the block ends, an exception or not."""
    held: list[logging.LogRecord] = []

    def hold(record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            held.append(record)
            return False
        return True

    logger.addFilter(hold)
    try:
        yield held
    finally:
        logger.removeFilter(hold)
        for record in held:
            logger.handle(record)


class Checkpointer:
    """Periodic train-state checkpoints under `directory` (step-numbered subfolders)."""

    def __init__(self, directory, max_to_keep: int | None = 3, read_only: bool = False):
        self.directory = pathlib.Path(directory).absolute()
        if not read_only and jax.process_index() == 0:  # a save killed half-way leaves a temporary directory behind: never a step
            for stale in self.directory.glob("*.orbax-checkpoint-tmp*"):
                log.warning("removing the unfinished checkpoint %s", stale)
                shutil.rmtree(stale, ignore_errors=True)
        # cleanup_tmp_directories off: the loop above already did it, synchronously; orbax's own cleanup is a
        # background thread that close() does not wait for — a run refused at once (its directory removed) had it
        # fail later, and its traceback landed under the run's one-line error
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=not read_only, read_only=read_only,
                                               enable_async_checkpointing=False, cleanup_tmp_directories=False)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state, meta: dict) -> None:
        flat, _ = flatten(state)
        # orbax's writer threads log their exceptions on the absl logger, with tracebacks; asyncio logs the failed
        # writes' tasks once they are collected; tensorstore prints its callbacks' errors straight to stderr
        with _stderr_held() as printed, _errors_held(logging.getLogger("absl")) as held, \
                _errors_held(logging.getLogger("asyncio")) as held_asyncio:
            try:
                self.manager.save(int(step), args=ocp.args.Composite(state=ocp.args.StandardSave(flat),
                                                                     meta=ocp.args.JsonSave(meta)), force=True)
                self.manager.wait_until_finished()
            except Exception as err:  # noqa: BLE001 — orbax reports a full disk as ValueError/OSError from its threads
                failure = storage_failure(err)
                if failure is None:
                    raise
                _quiet_abandoned_writes(self.manager)
                held.clear()
                held_asyncio.clear()
                printed.clear()
                code, what, fix = failure
                # orbax writes into a temporary directory and renames it when complete: the last checkpoint is intact
                raise TrainingError(f"checkpoint {step} could not be written to {self.directory} "
                                    f"({errno.errorcode[code]}): {what}; {fix} and re-run the same command: it "
                                    "resumes from the last complete checkpoint") from None
        return_freed_memory()

    def prune(self, keep: int) -> list[int]:
        """Delete all but the newest `keep` steps (0 = all); returns the deleted steps. For a finished run, whose
        export is written: the intermediate states only served a resume that can no longer happen."""
        steps = sorted(self.all_steps())
        gone = steps[:max(0, len(steps) - int(keep))]
        for step in gone:  # every process calls it: orbax deletes on the primary host and syncs the others
            self.manager.delete(step)
        return gone

    def restore(self, step: int | None, abstract_state) -> tuple[Any, dict]:
        """Restore `step` (latest if None) shaped and sharded like `abstract_state` (arrays or ShapeDtypeStructs)."""
        step = self.latest_step() if step is None else int(step)
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        flat_abstract, _ = flatten(abstract_state)

        def as_abstract(x):
            sharding = getattr(x, "sharding", None)
            return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)

        target = {k: as_abstract(v) for k, v in flat_abstract.items()}
        restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                                      meta=ocp.args.JsonRestore()))
        return unflatten(restored["state"], abstract_state), dict(restored["meta"])

    def restore_raw(self, step: int | None = None) -> dict[str, np.ndarray]:
        """The saved flat {key: array} of a step as host arrays, without a target structure."""
        step = self.latest_step() if step is None else int(step)
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        if step not in self.all_steps():
            raise FileNotFoundError(f"no step {step} in {self.directory} (have {self.all_steps()}; a finished run "
                                    "keeps its newest checkpoint.keep_when_done steps)")
        restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
        return dict(restored["state"])

    def read_meta(self, step: int | None = None) -> dict:
        step = self.latest_step() if step is None else int(step)
        restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored["meta"])

    def close(self) -> None:
        self.manager.close()
