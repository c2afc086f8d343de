"""The one stage loop: every training stage — SFT / RM / CM / DPO / SafeDPO / moderation and PPO / PPO-Lag / GRPO(-Lag)
/ reward shaping — is driven by `drive`, which owns everything between two optimizer steps (or RL iterations):

    the progress bar · interrupt polling · metrics rows · the skipped-update check · evaluation cadence ·
    checkpoint cadence · `train.stop_after_steps` · save-then-raise on SIGINT / SIGTERM

A stage supplies only what is its own, the `LoopStage` protocol: how to draw the next batch, one step, its data
position and checkpoint meta, its evaluation and its counters. The run directory, lock, resume check and export
are the `Run`'s (training/run.py), which this module drives.

Order inside one step, the same for every stage (a checkpoint always holds the state of the last completed step
together with the data position that belongs to it):
  position ← data_position(); batch ← next_batch(); step (None: the stage saw the stop flag mid-step — the state
  before it is saved with `position`, then the run stops) → log rows → skipped check → evaluate when due →
  save when due (cadence, last step, a signal, stop_after_steps) → raise when a signal arrived → stop when asked.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Protocol

from saferlhf_jax.errors import TrainingError

log = logging.getLogger(__name__)

# the config entries the loop reads that a resumed run may change (how far to go in this invocation, how often to
# log, how many skipped updates to tolerate: none of them changes a completed step)
RESUME_IGNORED = ("train.stop_after_steps", "train.log_every", "train.max_skipped_fraction")


@dataclasses.dataclass(frozen=True)
class Cadence:
    """When the loop logs, evaluates, saves and stops; `total` steps (or RL iterations) make the run complete."""

    total: int
    eval_every: int = 0         # > 0: evaluate every so many steps; 0: at epoch ends (when `epoch` > 0) only
    epoch: int = 0              # steps per epoch (supervised stages); 0: no epoch rule
    checkpoint_every: int = 0   # > 0: save every so many steps (the last step and a signal always save)
    stop_after: int = 0         # > 0: save and stop after so many steps (as a preempted run would)
    max_skipped: float = 0.1    # stop (no export) when more updates than this fraction were non-finite
    eval_at_start: bool = True  # evaluate the initial state of a fresh run
    progress: bool = True       # a tqdm bar with ETA

    @classmethod
    def from_config(cls, cfg, total: int, epoch: int = 0) -> "Cadence":
        t = cfg.train
        return cls(total=int(total), eval_every=int(t.get("eval_every", 0)), epoch=int(epoch),
                   checkpoint_every=int(cfg.checkpoint.every), stop_after=int(t.get("stop_after_steps", 0)),
                   max_skipped=float(t.get("max_skipped_fraction", 0.1)),
                   eval_at_start=bool(t.get("eval_at_start", True)),
                   progress=bool(cfg.logging.get("progress", True)))

    def eval_due(self, step: int) -> bool:
        """The last step always evaluates: a run that ends mid-epoch still gets its numbers."""
        return bool((self.eval_every and step % self.eval_every == 0)
                    or (not self.eval_every and self.epoch and step % self.epoch == 0) or step == self.total)

    def save_due(self, step: int) -> bool:
        return bool((self.checkpoint_every and step % self.checkpoint_every == 0) or step == self.total
                    or (self.stop_after and step >= self.stop_after))

    def too_many_skipped(self, skipped: int, updates: int) -> bool:
        return skipped > self.max_skipped * max(updates, 1)


class LoopStage(Protocol):
    """What a stage gives the loop. `unit` names a loop step in messages ('step', 'iteration'); `skip_hint` is
    what to do when updates keep going non-finite."""

    name: str
    unit: str
    skip_hint: str
    can_evaluate: bool

    def next_batch(self) -> Any: ...

    def step(self, state, batch, number: int, stop: Callable[[], bool]) -> tuple[Any, list[dict]] | None:
        """Step `number` (1-based) → (state, metric rows to log, maybe none); None when the stage polled `stop()`
        mid-step and abandoned it (the state passed in is then untouched)."""

    def data_position(self) -> dict: ...

    def checkpoint_meta(self, state, step: int, position: dict) -> dict: ...

    def evaluate(self, state, step: int) -> Any: ...

    def counts(self, state, step: int) -> tuple[int, int]:
        """(skipped updates, updates tried) after `step` loop steps; the second also names the step a signal
        stopped at."""

    def postfix(self, row: dict) -> dict[str, str]: ...


@dataclasses.dataclass
class LoopResult:
    state: Any
    step: int                    # loop steps completed (a resumed run counts the earlier ones)
    complete: bool
    last_row: dict               # the last metrics row logged ({} when none)
    last_eval: Any               # the last evaluation's result (None when none ran in this invocation)
    skipped: int                 # non-finite updates skipped over the whole run


def _check_skipped(stage: LoopStage, cadence: Cadence, state, step: int, ending: bool) -> int:
    skipped, updates = stage.counts(state, step)
    if (skipped >= 3 or ending) and cadence.too_many_skipped(skipped, updates):
        raise TrainingError(f"{skipped} of {updates} updates of {stage.name} were non-finite and skipped (more than "
                            f"train.max_skipped_fraction={cadence.max_skipped}); "
                            + ("no export was written" if ending else "stopping without an export")
                            + f" — {stage.skip_hint}")
    return skipped


def drive(run, stage: LoopStage, state, start: int, cadence: Cadence) -> LoopResult:
    """Run `stage` from loop step `start` to `cadence.total` (or a stop) on `run` (a training.run.Run); see the
    module docstring for the order of things inside a step. Raises RunInterrupted after a signal (checkpoint
    saved) and TrainingError when too many updates were skipped."""
    from tqdm.auto import tqdm

    last_eval, evaluated_at, last_row = None, None, {}
    if start == 0 and stage.can_evaluate and cadence.eval_at_start:
        last_eval, evaluated_at = stage.evaluate(state, 0), 0
    progress = tqdm(total=cadence.total, initial=start, desc=stage.name, unit=stage.unit[:4], dynamic_ncols=True,
                    disable=not cadence.progress, leave=True)
    step = start
    try:
        with run.guard() as guard:
            while step < cadence.total:
                position = stage.data_position()
                out = stage.step(state, stage.next_batch(), step + 1, guard.requested)
                if out is None:  # the stage stopped mid-step: the state of the last completed step is saved
                    run.save(step, state, stage.checkpoint_meta(state, step, position))
                    raise run.interrupted(guard, stage.counts(state, step)[1])
                state, rows = out
                step += 1
                for row in rows:
                    run.log(row)
                if rows:
                    last_row = rows[-1]
                    progress.set_postfix(stage.postfix(last_row))
                    _check_skipped(stage, cadence, state, step, ending=False)
                progress.update(1)
                if stage.can_evaluate and cadence.eval_due(step):
                    last_eval, evaluated_at = stage.evaluate(state, step), step
                stop_now = guard.requested()
                if cadence.save_due(step) or stop_now:
                    run.save(step, state, stage.checkpoint_meta(state, step, stage.data_position()))
                if stop_now:
                    raise run.interrupted(guard, stage.counts(state, step)[1])
                if cadence.stop_after and cadence.stop_after <= step < cadence.total:
                    log.info("%s: stopping after %d %ss as configured (train.stop_after_steps)", stage.name, step,
                             stage.unit)
                    break
    finally:
        progress.close()
    complete = step >= cadence.total
    skipped = _check_skipped(stage, cadence, state, step, ending=complete) if complete else \
        stage.counts(state, step)[0]
    if complete and stage.can_evaluate and evaluated_at != step:  # resumed after its last step: still evaluated
        last_eval = stage.evaluate(state, step)
    return LoopResult(state=state, step=step, complete=complete, last_row=last_row, last_eval=last_eval,
                      skipped=skipped)


__all__ = ["Cadence", "LoopResult", "LoopStage", "RESUME_IGNORED", "drive"]
