"""The run skeleton every stage shares (SFT / RM / CM / DPO / moderation and PPO / PPO-Lag / GRPO / reward shaping):
the output directory and its lock, the mesh, the resume check, config.json, the checkpointer, the metrics log, the
interrupt guard and the end (non-finite check, export, summary.json, curves, results page). The loop between two
steps is `training.loop.drive`, the one loop every stage runs on:

    with Run(cfg, "ppo_lag", validate=...) as run:       # refused configs leave no directory behind
        state, meta = run.restore(state) if run.resuming else (state, None)
        done = loop.drive(run, stage, state, start, loop.Cadence.from_config(cfg, total))
        run.finish(summary, complete=done.complete, export=..., curves=...)

What this buys the user: a preempted job (SIGTERM from a TPU/cloud scheduler) or a Ctrl-C saves a checkpoint of the
last completed step together with the data position that belongs to it, and the same command resumes bitwise; a
second SIGINT aborts at once (the previous checkpoint stays intact, stale temporary directories are cleaned at the
next start), a repeated SIGTERM does not (a process group and a wrapper deliver it twice); a second run in the same
output directory is refused while the first holds its lock; a resume with another config is refused *before*
anything in the directory is touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import pathlib
import shutil
import signal
import threading
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

from saferlhf_jax.checkpoint import Checkpointer
from saferlhf_jax.errors import ConfigError, DataError, ModelError, RunInterrupted, TrainingError
from saferlhf_jax.training import run_page
from saferlhf_jax.training.loop import RESUME_IGNORED as LOOP_RESUME_IGNORED
from saferlhf_jax.parallel import mesh as mesh_lib

log = logging.getLogger(__name__)

# config entries a resumed run may change (where it writes, how it logs, how it is laid out on devices, how the
# sampler loops and lays out its weights: the same tokens)
RESUME_IGNORED = ("output_dir", "logging", "checkpoint", "distributed", "mesh", *LOOP_RESUME_IGNORED,
                  "train.max_weight_abs", "generation.decode_segment", "generation.rollout_layout")


# ---------------------------------------------------------------------------------------------------- pieces


def config_entries(node, prefix: str = ""):
    """(dotted path, value) of every leaf entry of a (nested) config."""
    for key in node.keys():
        value = node[key]
        if hasattr(value, "keys"):
            yield from config_entries(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def resume_fingerprint(cfg) -> dict:
    """The config entries a resumed run must share with the run that wrote the checkpoint (flat, JSON-able)."""
    flat = {path: list(value) if isinstance(value, (tuple, list)) else value
            for path, value in config_entries(cfg)
            if not any(path == ig or path.startswith(ig + ".") for ig in RESUME_IGNORED)}
    return json.loads(json.dumps(flat, default=str))


# config sections added after checkpoints were written, with the entry and value that mean "feature off": a run
# saved before a section existed still resumes while the section is off (an upgrade does not strand a checkpoint)
ADDED_SECTIONS = {"lora.": ("lora.rank", 0), "lora.critics": ("lora.rank", 0), "lora.export": ("lora.export", "merged"),
                  "rl.constraints": ("rl.constraints", []), "rl.cost_models": ("rl.constraints", []),
                  "rl.missing_eos_penalty": ("rl.missing_eos_penalty", 0.0)}


def added_while_off(key: str, current: dict) -> bool:
    for prefix, (switch, off) in ADDED_SECTIONS.items():
        if key.startswith(prefix) and current.get(switch, off) == off:
            return True
    return False


def config_difference(saved, cfg, flat: bool = False) -> list[str]:
    """'entry: saved → current' for every entry (sorted) in which `cfg` differs from a run's `saved` config — the
    nested config.json a run wrote, or (flat=True) the fingerprint its checkpoint holds — over the entries a resumed
    or reused run must share (`resume_fingerprint`); a section added since and switched off is no difference."""
    saved = saved if flat else resume_fingerprint(saved)
    current = resume_fingerprint(cfg)
    changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k)
                     and not (k not in saved and added_while_off(k, current)))
    return [f"{k}: {saved.get(k)!r} → {current.get(k)!r}" for k in changed]


# the files that hold a model's weights and shape; a fingerprint reads their names, sizes and a few MiB of each
_WEIGHT_FILES = ("*.safetensors", "*.bin", "*.gguf", "*.pt", "config.json")
_EDGE_BYTES = 1 << 20


def model_fingerprint(path) -> str | None:
    """sha256 over a model's weight files (directory or single file): each name and size, its first and last MiB.
    It tells which weights a run was built on — a model re-trained into the same path differs in every tensor, so in
    the first MiB — for a few MiB of reads, not a 7B model's 14 GB. None when `path` is not a local file/directory
    (a registry name)."""
    root = pathlib.Path(str(path)).expanduser()
    if root.is_file():
        files = [root]
    elif root.is_dir():
        files = sorted({f for pat in _WEIGHT_FILES for f in root.glob(pat) if f.is_file()})
    else:
        files = []
    if not files:
        return None
    digest = hashlib.sha256()
    for f in files:
        size = f.stat().st_size
        digest.update(f"{f.name}\0{size}\0".encode())
        with open(f, "rb") as fh:
            digest.update(fh.read(_EDGE_BYTES))
            if size > _EDGE_BYTES:
                fh.seek(max(_EDGE_BYTES, size - _EDGE_BYTES))
                digest.update(fh.read(_EDGE_BYTES))
    return digest.hexdigest()


def model_fingerprints(cfg) -> dict[str, str]:
    """{config entry: fingerprint} of every model a run reads (`*model_name_or_path`, `rl.cost_models`): the frozen
    bases a LoRA checkpoint's adapters sit on, the reward/cost models RL scores with. A resume refuses a change."""
    found: dict[str, str] = {}
    for path, value in config_entries(cfg):
        names_a_model = path.endswith("model_name_or_path") or path.startswith("rl.cost_models.")
        if names_a_model and isinstance(value, str) and value and (fp := model_fingerprint(value)) is not None:
            found[path] = fp
    return found


def check_seed(seed, name: str = "seed") -> int:
    """A seed numpy and JAX both take: an integer in [0, 2³²) (numpy refuses a negative one deep inside a run)."""
    try:
        value = int(seed)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be an integer in [0, 2**32), got {seed!r}") from None
    if not 0 <= value < 2 ** 32 or value != seed:
        raise ConfigError(f"{name} must be an integer in [0, 2**32), got {seed!r}")
    return value


def write_config(directory: pathlib.Path, cfg) -> None:
    """DIR/config.json (written whole, then renamed): what a later resume or reuse of the run must match
    (`Run._check_resume`; for a composite stage such as the testbed, written when it finishes:
    `orchestrator.check_same_run`)."""
    tmp = pathlib.Path(directory) / "config.json.tmp"
    tmp.write_text(cfg.to_json_best_effort(indent=2) + "\n")
    tmp.replace(pathlib.Path(directory) / "config.json")


def prepare_output_dir(path) -> pathlib.Path:
    """Create `path` (one-line ConfigError when it is a file or not writable)."""
    out = pathlib.Path(str(path)).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir {out} is a file, not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create output_dir {out}: {err.strerror or err}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ConfigError(f"output_dir {out} is not writable")
    return out


class OutputDirLock:
    """An exclusive `flock` on `<dir>/.lock` for the life of the run (released by the OS even on SIGKILL)."""

    def __init__(self, directory: pathlib.Path):
        self.path = directory / ".lock"
        try:
            self._file = open(self.path, "a+")
        except OSError as err:  # /proc, a read-only or vanished directory: not a place a run can write to
            raise ConfigError(f"output_dir {directory} cannot hold a run ({err.strerror or err} on {self.path}); "
                              "use another output_dir") from None
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._file.seek(0)
            holder = self._file.read().strip() or "another process"
            self._file.close()
            raise ConfigError(f"{directory} is in use by a live run ({holder}); wait for it to finish or use "
                              "another output_dir") from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
        self._file.flush()

    def release(self) -> None:
        if not self._file.closed:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()


class MetricsLog:
    """metrics.jsonl (one JSON object per line) + TensorBoard, written by process 0 only."""

    def __init__(self, output_dir: pathlib.Path, tensorboard: bool):
        self.path = output_dir / "metrics.jsonl"
        self.writer = None
        if tensorboard and jax.process_index() == 0:
            try:
                from tensorboardX import SummaryWriter

                self.writer = SummaryWriter(str(output_dir / "tensorboard"))
            except ImportError:
                log.warning("tensorboardX is not installed: no TensorBoard events")

    def rows(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate_after(self, step: int) -> None:
        """Keep only the rows of steps ≤ `step` (a resumed run rewrites what came after its checkpoint)."""
        if jax.process_index() != 0 or not self.path.is_file():
            return
        kept = [json.dumps(r) for r in self.rows() if r.get("step", 0) <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, row: dict) -> None:
        if jax.process_index() != 0:
            return
        row = {k: (float(v) if isinstance(v, (np.floating, float, jax.Array, np.ndarray)) else v)
               for k, v in row.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self.writer.add_scalar(k if "/" in k else f"train/{k}", v, row["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class InterruptGuard:
    """SIGINT and SIGTERM set a flag that the loop reads between steps; a second SIGINT aborts at once (a repeated
    SIGTERM does not: schedulers and wrappers deliver one request more than once).

    A signal therefore never lands inside a running (donated) step or a checkpoint save. `requested()` is a
    collective in multi-host runs (every host must stop at the same step), so call it at the same point on all."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame):
        if self.signum is not None:
            if signum == signal.SIGINT:  # a person pressing Ctrl-C again
                raise KeyboardInterrupt("aborted by a second signal before the checkpoint was written; the previous "
                                        "checkpoint is intact, re-run the same command to resume from it")
            # a repeated SIGTERM is a scheduler signalling the process group and a wrapper forwarding it (`timeout`,
            # a launcher script): one request, so the save goes on
            log.warning("received %s again: still saving the checkpoint (SIGINT aborts at once)",
                        signal.Signals(signum).name)
            return
        self.signum = signum
        log.warning("received %s: finishing the current step, then saving a checkpoint (SIGINT again aborts)",
                    signal.Signals(signum).name)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        return False

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else "interrupt"

    def requested(self) -> bool:
        flag = self.signum is not None
        if jax.process_count() > 1:
            flag = bool(mesh_lib.global_max(int(flag)))
        return flag


# ---------------------------------------------------------------------------------------------------- the run


class Run:
    """One stage's run directory and everything around its loop (see the module docstring)."""

    def __init__(self, cfg, name: str, validate=None):
        """validate(cfg, mesh): the stage's own config checks, run before anything is written (a refused config
        leaves no output directory behind)."""
        self.cfg, self.name = cfg, name
        self.started = time.perf_counter()
        try:
            self.mesh = mesh_lib.make_mesh(int(cfg.mesh.data), int(cfg.mesh.fsdp), int(cfg.mesh.tensor))
            self.rules = mesh_lib.rules_from_config(cfg.mesh)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        check_seed(cfg.get("seed", 0))
        if validate is not None:
            validate(cfg, self.mesh)
        # a directory this run creates is removed again when the run is refused before its first checkpoint
        self.created = not pathlib.Path(str(cfg.output_dir)).expanduser().exists()
        self.out = prepare_output_dir(cfg.output_dir)
        try:
            self.lock = OutputDirLock(self.out) if jax.process_index() == 0 else None
        except ConfigError:
            self._remove_if_refused(ConfigError)
            raise
        try:
            self.ckpt = Checkpointer(self.out / "checkpoints", max_to_keep=int(cfg.checkpoint.keep))
            self.models = model_fingerprints(cfg)
            self.resume_meta = self._check_resume()
            if jax.process_index() == 0:  # only after the resume check: a refused run leaves the directory as it was
                write_config(self.out, cfg)
            self.metrics = MetricsLog(self.out, bool(cfg.logging.get("tensorboard", True)))
            if self.resume_meta is None and jax.process_index() == 0:
                self.metrics.path.unlink(missing_ok=True)  # a dead run that saved nothing leaves no rows behind
                shutil.rmtree(self.out / "tensorboard", ignore_errors=True)
        except BaseException as err:
            self.release()
            self._remove_if_refused(type(err))
            raise

    # ------------------------------------------------------------------ resume

    def _check_resume(self) -> dict | None:
        if self.ckpt.latest_step() is None:
            return None
        meta = self.ckpt.read_meta()
        saved = meta.get("config", {})
        if saved and (diffs := config_difference(saved, self.cfg, flat=True)):
            raise ConfigError(f"{self.out} holds a run with another config ({', '.join(diffs[:5])}); use a new "
                              "output_dir to start over")
        saved_models = meta.get("models", {})  # absent in checkpoints written before fingerprints: not checked
        moved = sorted(k for k, fp in self.models.items() if k in saved_models and saved_models[k] != fp)
        if moved:
            path = resume_fingerprint(self.cfg).get(moved[0])
            raise ConfigError(f"{self.out} holds a run built on other weights: {moved[0]} ({path}) changed since its "
                              "checkpoint was written; restore that model or use a new output_dir")
        return meta

    @property
    def resuming(self) -> bool:
        return self.resume_meta is not None

    def restore(self, like) -> tuple[Any, dict]:
        """The latest checkpoint shaped and sharded like `like`; metrics rows after it are dropped (`metrics_step` in
        the meta when the rows count another step than the checkpoint, as RL's rl_step vs iteration)."""
        state, meta = self.ckpt.restore(None, like)
        self.metrics.truncate_after(int(meta.get("metrics_step", meta["step"])))
        log.info("%s: resumed from %s at step %d", self.name, self.ckpt.directory, int(meta["step"]))
        return state, meta

    def save(self, step: int, state, meta: dict) -> None:
        """Checkpoint `state` at `step` (skipped when that step is already saved); `meta` must describe the same
        step (data position, counters)."""
        if self.ckpt.latest_step() == step:
            return
        self.ckpt.save(step, state, {**meta, "step": int(step), "stage": self.name,
                                     "config": resume_fingerprint(self.cfg), "models": self.models})

    # ------------------------------------------------------------------ loop helpers

    def guard(self) -> InterruptGuard:
        return InterruptGuard()

    def interrupted(self, guard: InterruptGuard, step: int) -> RunInterrupted:
        return RunInterrupted(f"{self.name}: {guard.name} at step {step}; checkpoint saved, re-run the same command "
                              "to resume")

    def log(self, row: dict) -> None:
        self.metrics.write(row)

    # ------------------------------------------------------------------ the end

    def finish(self, summary: dict, *, complete: bool, export: Callable[[pathlib.Path], None] | None,
               curves: Sequence[str] = (), title: str | None = None) -> dict:
        """summary.json, curves.png and results.md; `export(dir)` runs only when the run is complete."""
        summary = {**summary, "seconds": time.perf_counter() - self.started, "output_dir": str(self.out),
                   "inputs": self.models}  # the weights it was built on: a later reuse of this run checks them
        if complete and export is not None:
            export_dir = self.out / "export"
            export(export_dir)
            summary["export"] = str(export_dir)
            # the export is the result; the states before the last only served a resume that can no longer happen
            # (a 135M-parameter PPO-Lag run keeps ~4 GB per checkpoint)
            keep = int(self.cfg.checkpoint.get("keep_when_done", 1))
            if pruned := self.ckpt.prune(keep):
                log.info("%s: finished; removed %d earlier checkpoint(s) (checkpoint.keep_when_done=%d)", self.name,
                         len(pruned), keep)
        if jax.process_index() == 0:
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
            images = ()
            if curves and run_page.plot_curves(self.metrics.rows(), curves, self.out / "curves.png"):
                images = ("curves.png",)
            run_page.write_run_page(self.out, title or f"{self.name} run", self.cfg, summary, images)
        return summary

    def release(self) -> None:
        for close in (getattr(getattr(self, "metrics", None), "close", None),
                      getattr(getattr(self, "ckpt", None), "close", None)):
            if close is not None:
                with contextlib.suppress(Exception):
                    close()
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.release()
        self._remove_if_refused(exc_type)
        return False

    def _remove_if_refused(self, exc_type) -> None:
        """A run refused for its config, data or model before it saved anything leaves no directory it created
        (config.json, an empty checkpoints/ and a lock would otherwise make the next run look like a resume)."""
        refused = exc_type is not None and issubclass(exc_type, (ConfigError, DataError, ModelError))
        if not (refused and self.created and jax.process_index() == 0):
            return
        if not any(p.name.isdigit() for p in (self.out / "checkpoints").glob("*")):
            shutil.rmtree(self.out, ignore_errors=True)


def assert_finite(tree, what: str, max_abs: float | None = None) -> None:
    """One-line error when any leaf of `tree` holds a NaN/Inf, or (max_abs) a weight larger in magnitude than
    `max_abs`: nothing non-finite, and nothing a diverged run blew up (finite garbage such as 1e30 after one step
    at a learning rate of 1e30), is ever exported."""
    leaves = [(".".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path), np.asarray(x))
              for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]]
    leaves = [(name, x) for name, x in leaves if np.issubdtype(x.dtype, np.floating) and x.size]
    bad = [name for name, x in leaves if not np.all(np.isfinite(x))]
    if bad:
        raise TrainingError(f"{what} holds non-finite values ({', '.join(bad[:3])}{' …' if len(bad) > 3 else ''}); "
                            "nothing was exported — lower the learning rate or check the data")
    if max_abs:
        name, largest = max(((name, float(np.max(np.abs(x)))) for name, x in leaves), key=lambda p: p[1])
        if largest > max_abs:
            raise TrainingError(f"{what} holds weights up to {largest:.3g} in magnitude ({name}), beyond "
                                f"train.max_weight_abs={max_abs:g}: the run diverged; nothing was exported — lower "
                                "the learning rate (or raise train.max_weight_abs if the model's own weights are "
                                "this large)")


__all__ = ["InterruptGuard", "check_seed", "MetricsLog", "OutputDirLock", "Run", "assert_finite", "model_fingerprint",
           "model_fingerprints", "prepare_output_dir", "resume_fingerprint"]
