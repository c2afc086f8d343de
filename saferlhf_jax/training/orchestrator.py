"""The one orchestrator of a job made of stages (the main pipeline, the ground-truth testbed): each stage owns a
directory `OUT/<name>`, is skipped when it already finished *with the same resolved config and inputs*, resumes when
it was interrupted, and is timed into `OUT/timings.json`.

    stages = Orchestrator(out)
    stages.run("sft", sft_cfg, lambda c: trainer.train(sft.STAGE, c))        # skipped when finished alike
    stages.timed("sample_pairs", lambda: ...)                               # a step without a directory: timed only

"Finished alike" is checked, never assumed: a finished stage whose saved config (`<dir>/config.json`, written by the
stage's `Run`) or input weights (`model_fingerprints`) differ from what this invocation would run is refused with a
one-line ConfigError naming the first difference — a seed-1 testbed pointed at a seed-0 directory, or a pipeline
re-run with a changed stage config, would otherwise reuse the old results under the new name.
"""

from __future__ import annotations

import json
import logging
import pathlib
import time
from typing import Any, Callable

from saferlhf_jax.errors import ConfigError
from saferlhf_jax.training.run import config_difference, model_fingerprints, write_config

log = logging.getLogger(__name__)


class StageTimes:
    """Seconds per stage, merged into OUT/timings.json (`stage_seconds`) as each stage finishes: a resumed or
    re-run job keeps the times of the stages that earlier invocations finished."""

    def __init__(self, out: pathlib.Path):
        self.record = out / "timings.json"
        data = json.loads(self.record.read_text()) if self.record.is_file() else {}
        # `timings`: the testbed's own file before the orchestrator was shared
        self.seconds: dict[str, float] = dict(data.get("stage_seconds", data.get("timings", {})))
        self.this_invocation: dict[str, float] = {}

    def finished(self, name: str, started: float) -> None:
        self.this_invocation[name] = time.perf_counter() - started
        self.seconds[name] = round(self.this_invocation[name], 1)
        self._write()

    def close(self, wall: float) -> None:
        self._write(wall_seconds_last_invocation=round(wall, 1))

    def _write(self, **extra) -> None:
        data = json.loads(self.record.read_text()) if self.record.is_file() else {}
        data.pop("timings", None)
        data.update(stage_seconds=self.seconds, **extra)
        self.record.write_text(json.dumps(data, indent=2) + "\n")


def finished_marker(directory: pathlib.Path) -> bool:
    """A training stage finished: its summary names an export (an interrupted one has no export yet)."""
    summary = directory / "summary.json"
    return summary.is_file() and "export" in json.loads(summary.read_text())


class Orchestrator:
    """Stages under one output directory (see the module docstring)."""

    def __init__(self, out: pathlib.Path):
        self.out = pathlib.Path(out).expanduser()
        self.out.mkdir(parents=True, exist_ok=True)
        self.times = StageTimes(self.out)

    def finished(self, name: str, cfg, done: Callable[[pathlib.Path], bool] = finished_marker) -> bool:
        """True when stage `name` finished with this very config and input weights; ConfigError when it finished
        with others; False when it has not finished (a fresh start or a resume)."""
        directory = self.out / name
        if not done(directory):
            return False
        check_same_run(directory, cfg)
        return True

    def run(self, name: str, cfg, fn: Callable[[Any], Any], done: Callable[[pathlib.Path], bool] = finished_marker):
        """fn(cfg) unless the stage finished alike (then None); timed as `name`."""
        if self.finished(name, cfg, done):
            log.info("%s already finished with this config, skipping", name)
            return None
        return self.timed(name, lambda: fn(cfg))

    def timed(self, name: str, fn: Callable[[], Any]):
        started = time.perf_counter()
        result = fn()
        self.times.finished(name, started)
        return result


def check_same_run(directory: pathlib.Path, cfg) -> None:
    """ConfigError naming the first difference when the finished run in `directory` had another config (its
    config.json) or was built on other input weights (its summary's `inputs`) than `cfg` would use."""
    saved_config = directory / "config.json"
    if saved_config.is_file():
        diffs = config_difference(json.loads(saved_config.read_text()), cfg)
        if diffs:
            raise ConfigError(f"{directory} finished with another config ({diffs[0]}); use a new output_dir, or "
                              f"remove {directory} to run it again")
    summary = directory / "summary.json"
    saved_inputs = json.loads(summary.read_text()).get("inputs", {}) if summary.is_file() else {}
    moved = sorted(k for k, fp in model_fingerprints(cfg).items() if k in saved_inputs and saved_inputs[k] != fp)
    if moved:
        raise ConfigError(f"{directory} finished on other weights: {moved[0]} changed since; use a new output_dir, "
                          f"or remove {directory} to run it again")


__all__ = ["Orchestrator", "StageTimes", "check_same_run", "finished_marker", "write_config"]
