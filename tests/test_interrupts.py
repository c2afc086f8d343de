"""Preemption and interruption: SIGTERM / SIGINT at any moment end with a consistent checkpoint and one line, and the
same command then finishes exactly as an uninterrupted run would (bitwise on CPU); the output directory is guarded.

Signals are sent to this very process from inside the run (at a chosen call of a function), so the moment is exact;
one test sends SIGTERM to a real `python -m launch.ppo_lag` process, as a scheduler would.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from launch.common import run_rl_cli, run_training_cli
from saferlhf_jax import models
from saferlhf_jax.algorithms.rl_runner import RLRunner
from saferlhf_jax.training import run as run_lib

REPO = pathlib.Path(__file__).resolve().parents[1]


def _rl_argv(models_dir, out, *extra):
    return ["prog", "--config=configs/ppo_lag.py:tiny", f"--config.output_dir={out}",
            f"--config.actor_model_name_or_path={models_dir / 'sft'}",
            f"--config.reward_model_name_or_path={models_dir / 'reward'}",
            f"--config.cost_model_name_or_path={models_dir / 'cost'}",
            "--config.generation.max_length=64", "--config.data.max_prompt_length=40",
            "--config.data.prompt_buckets=(40,)", "--config.logging.progress=False",
            "--config.logging.tensorboard=False", "--config.mesh.fsdp=1", "--config.train.max_steps=2",
            "--config.train.prompt_batch_size=8", "--config.train.train_batch_size=4",
            "--config.checkpoint.every=0", *extra]


def _sft_argv(out, *extra):
    return ["prog", "--config=configs/sft.py:tiny", f"--config.output_dir={out}", "--config.data.max_length=128",
            "--config.data.buckets=(128,)", "--config.logging.progress=False", "--config.logging.tensorboard=False",
            "--config.mesh.fsdp=1", "--config.train.max_steps=4", "--config.checkpoint.every=0",
            "--config.train_datasets=alpaca:32/-1", "--config.eval_datasets=()", *extra]


def _rows(out):
    return [{k: v for k, v in json.loads(line).items() if not k.startswith("time/") and k != "tokens_per_sec"}
            for line in (pathlib.Path(out) / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _same_export(a, b):
    ta, tb = models.safetensors_io.load_dir(a / "export"), models.safetensors_io.load_dir(b / "export")
    assert sorted(ta) == sorted(tb)
    for k in tb:
        np.testing.assert_array_equal(ta[k], tb[k], err_msg=k)


def _signal_on_call(monkeypatch, owner, name, call: int, sig: int):
    """Send `sig` to this process during the `call`-th call of owner.name (1-based)."""
    original = getattr(owner, name)
    calls = {"n": 0}

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            os.kill(os.getpid(), sig)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapped)
    return calls


@pytest.fixture(scope="module")
def straight_rl(tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("rl_straight")
    assert run_rl_cli("", _rl_argv(tiny_models, out)) == 0
    return out


def test_ppo_lag_sigint_mid_rollout_then_rerun_equals_uninterrupted(tiny_models, straight_rl, tmp_path, monkeypatch,
                                                                     capsys):
    """Two rollout micro-batches per iteration; SIGINT during the first one of the run: the iteration is abandoned
    (its second micro-batch never generated) and the initial state is saved with its own data position — with
    checkpoint.every=0 nothing else would ever have been saved."""
    _signal_on_call(monkeypatch, RLRunner, "sample", 1, signal.SIGINT)
    assert run_rl_cli("", _rl_argv(tiny_models, tmp_path)) == 130
    err = capsys.readouterr().err
    assert "SIGINT at step 0" in err and "re-run the same command" in err and "Traceback" not in err
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["0"]
    assert not (tmp_path / "export").exists()
    monkeypatch.undo()
    assert run_rl_cli("", _rl_argv(tiny_models, tmp_path)) == 0  # the same command resumes
    assert _rows(tmp_path) == _rows(straight_rl)
    _same_export(tmp_path, straight_rl)


def test_ppo_lag_sigterm_during_an_update_saves_that_iteration(tiny_models, straight_rl, tmp_path, monkeypatch):
    """A signal during the updates (not a rollout): the iteration completes, is saved, and the run stops."""
    _signal_on_call(monkeypatch, RLRunner, "update", 1, signal.SIGTERM)
    assert run_rl_cli("", _rl_argv(tiny_models, tmp_path)) == 130
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1"]
    monkeypatch.undo()
    assert run_rl_cli("", _rl_argv(tiny_models, tmp_path)) == 0
    assert _rows(tmp_path) == _rows(straight_rl)
    _same_export(tmp_path, straight_rl)


def test_sft_sigterm_then_rerun_equals_uninterrupted(tmp_path, monkeypatch):
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    assert run_training_cli("sft", "", _sft_argv(straight)) == 0
    _signal_on_call(monkeypatch, run_lib.MetricsLog, "write", 2, signal.SIGTERM)  # while logging step 2
    assert run_training_cli("sft", "", _sft_argv(cut)) == 130
    assert sorted(p.name for p in (cut / "checkpoints").iterdir()) == ["2"]
    monkeypatch.undo()
    assert run_training_cli("sft", "", _sft_argv(cut)) == 0
    assert _rows(cut) == _rows(straight)
    _same_export(cut, straight)


def test_second_signal_aborts_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert run_training_cli("sft", "", _sft_argv(out, "--config.train.stop_after_steps=1")) == 0
    original = run_lib.Run.save

    def two_signals(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)  # a second SIGINT (Ctrl-C) aborts inside the save
        return original(self, *args, **kwargs)

    monkeypatch.setattr(run_lib.Run, "save", two_signals)
    assert run_training_cli("sft", "", _sft_argv(out)) == 130
    assert "previous checkpoint is intact" in capsys.readouterr().err
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.isdigit()) == ["1"]
    (out / "checkpoints" / "7.orbax-checkpoint-tmp-123").mkdir()  # what a save killed half-way leaves
    monkeypatch.undo()
    assert run_training_cli("sft", "", _sft_argv(out)) == 0
    assert not list((out / "checkpoints").glob("*tmp*"))
    assert [r["step"] for r in _rows(out) if "loss" in r] == [1, 2, 3, 4]


def test_a_repeated_sigterm_still_saves_then_the_rerun_equals_uninterrupted(tmp_path, monkeypatch, capsys):
    """A scheduler signalling the process group and a wrapper (`timeout`, a launcher) forwarding it: SIGTERM arrives
    twice. That is one request to stop, not "abort now": the step finishes, its checkpoint is saved, exit 130, and
    the same command then finishes exactly as an uninterrupted run."""
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    assert run_training_cli("sft", "", _sft_argv(straight)) == 0
    original = run_lib.MetricsLog.write
    calls = {"n": 0}

    def twice(self, row):
        calls["n"] += 1
        if calls["n"] == 2:  # while logging step 2
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, row)

    monkeypatch.setattr(run_lib.MetricsLog, "write", twice)
    assert run_training_cli("sft", "", _sft_argv(cut)) == 130
    err = capsys.readouterr().err
    assert "SIGTERM at step 2; checkpoint saved" in err and "aborted" not in err and "Traceback" not in err
    assert sorted(p.name for p in (cut / "checkpoints").iterdir()) == ["2"]
    monkeypatch.undo()
    assert run_training_cli("sft", "", _sft_argv(cut)) == 0
    assert _rows(cut) == _rows(straight)
    _same_export(cut, straight)


def test_output_dir_guards(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    lock = run_lib.OutputDirLock(out)  # a live run holds the directory
    assert run_training_cli("sft", "", _sft_argv(out)) == 2
    assert "in use by a live run" in capsys.readouterr().err
    lock.release()
    assert run_training_cli("sft", "", _sft_argv(out, "--config.train.stop_after_steps=2")) == 0
    config_before = (out / "config.json").read_text()
    assert run_training_cli("sft", "", _sft_argv(out, "--config.train.learning_rate=0.5")) == 2
    assert "another config" in capsys.readouterr().err
    assert (out / "config.json").read_text() == config_before  # a refused resume touches nothing
    # a run that died before its first checkpoint leaves rows behind: the re-run starts them afresh
    dead = tmp_path / "dead"
    dead.mkdir()
    (dead / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n{"step": 2, "loss": 9.0}\n')
    assert run_training_cli("sft", "", _sft_argv(dead)) == 0
    assert [r["step"] for r in _rows(dead) if "loss" in r] == [1, 2, 3, 4]
    assert all(r["loss"] != 9.0 for r in _rows(dead) if "loss" in r)
    file_out = tmp_path / "a_file"
    file_out.write_text("x")
    assert run_training_cli("sft", "", _sft_argv(file_out)) == 2
    assert "is a file" in capsys.readouterr().err


@pytest.mark.slow
def test_real_sigterm_to_a_ppo_lag_process(tiny_models, straight_rl, tmp_path):
    """What a preempting scheduler does: SIGTERM to the process once its first iteration is logged (it is then in
    the second rollout, which it abandons); exit 130 with one line, then the same command finishes the run exactly
    as the uninterrupted one (same XLA_FLAGS as this process: same devices, same numerics)."""
    args = _rl_argv(tiny_models, tmp_path)[1:]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "launch.ppo_lag", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and metrics.read_text().count("\n") >= 2:  # iteration 1 (2 rl steps) is done
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.02)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    # the signal lands in the second iteration (step 2 saved) or, when that iteration outran the poll, after it
    # (step 4); either way the checkpoint is the last finished iteration's and the resumed run must equal the straight
    stopped = re.search(r"SIGTERM at step (\d+); checkpoint saved", err)
    assert stopped and int(stopped.group(1)) in (2, 4) and "Traceback" not in err, err[-3000:]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [str(int(stopped.group(1)) // 2)]
    assert not (tmp_path / "export").exists()
    assert run_rl_cli("", _rl_argv(tiny_models, tmp_path)) == 0
    assert _rows(tmp_path) == _rows(straight_rl)
    _same_export(tmp_path, straight_rl)


def test_a_finished_stage_is_reused_only_with_the_same_config_and_inputs(tmp_path, capsys):
    """The one orchestrator of the main job and the testbed: a finished stage is skipped when its saved config and
    input weights equal this invocation's, refused with the first difference otherwise (before anything runs or is
    written), and a run under another seed never reuses — and relabels — the finished one."""
    from launch.common import parse_config
    from saferlhf_jax.algorithms import sft
    from saferlhf_jax.errors import ConfigError
    from saferlhf_jax.training import trainer
    from saferlhf_jax.training.orchestrator import Orchestrator

    def cfg(*extra):
        return parse_config(_sft_argv(tmp_path / "sft", "--config.train.max_steps=2", *extra), "")[0]

    calls = []

    def train(c):
        calls.append(int(c.seed))
        return trainer.train(sft.STAGE, c)

    stages = Orchestrator(tmp_path)
    assert stages.run("sft", cfg(), train) is not None and calls == [42]
    config_before = (tmp_path / "sft" / "config.json").read_text()
    exported = (tmp_path / "sft" / "export" / "model.safetensors").read_bytes()
    again = Orchestrator(tmp_path)  # a re-run of the same job: skipped, its recorded time kept
    assert again.run("sft", cfg(), train) is None and calls == [42]
    assert again.times.seconds == stages.times.seconds
    # the same setting spelled the same way on the command line after a resume-only change: still reused
    assert again.run("sft", cfg("--config.train.log_every=5", "--config.logging.progress=True"), train) is None
    for extra, needle in ((("--config.seed=1",), "seed: 42 → 1"),
                          (("--config.train.learning_rate=0.5",), "train.learning_rate")):
        with pytest.raises(ConfigError, match=needle):
            again.run("sft", cfg(*extra), train)
    assert calls == [42]
    assert (tmp_path / "sft" / "config.json").read_text() == config_before  # a refusal touches nothing
    assert (tmp_path / "sft" / "export" / "model.safetensors").read_bytes() == exported
    # an input re-written in place (same path, other weights) is told too
    base = tmp_path / "base"
    shutil.copytree(json.loads(config_before)["model_name_or_path"], base)
    on_base = _sft_argv(tmp_path / "on_base", "--config.train.max_steps=1", f"--config.model_name_or_path={base}")
    stages.run("on_base", parse_config(on_base, "")[0], train)
    weights = base / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\x00" * 8)
    with pytest.raises(ConfigError, match="model_name_or_path"):
        stages.run("on_base", parse_config(on_base, "")[0], train)


def test_a_late_sigint_after_the_run_finished_is_no_traceback(tmp_path, monkeypatch, capsys):
    """Ctrl-C while the summary of a finished run prints: the run is complete and exported, exit 0, no traceback
    (it printed a KeyboardInterrupt traceback); the process's own SIGINT handling is as before afterwards."""
    from saferlhf_jax.training import trainer

    original = trainer.print_summary

    def interrupted_summary(summary):
        os.kill(os.getpid(), signal.SIGINT)
        original(summary)

    monkeypatch.setattr(trainer, "print_summary", interrupted_summary)
    before = signal.getsignal(signal.SIGINT)
    assert run_training_cli("sft", "", _sft_argv(tmp_path, "--config.train.max_steps=1")) == 0
    assert "Traceback" not in capsys.readouterr().err and (tmp_path / "export").is_dir()
    assert signal.getsignal(signal.SIGINT) is before


def test_a_checkpoint_over_the_file_size_limit_is_one_line_and_the_run_resumes(tmp_path):
    """EFBIG, as a file-size limit or quota on a shared cluster gives (here `ulimit -f`): the run ends with one line
    naming the directory and the errno (it was 105 tracebacks), the last complete checkpoint is intact, and the same
    command without the limit resumes from it and ends exactly as an uninterrupted run."""
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    assert run_training_cli("sft", "", _sft_argv(straight)) == 0
    assert run_training_cli("sft", "", _sft_argv(cut, "--config.train.stop_after_steps=2")) == 0
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), PYTHONDONTWRITEBYTECODE="1")
    args = " ".join(f"'{a}'" for a in _sft_argv(cut)[1:])
    proc = subprocess.run(["bash", "-c", f"ulimit -f 256 && exec '{sys.executable}' -m launch.sft {args}"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "checkpoint 4 could not be written" in errors[0] and "(EFBIG)" in errors[0], errors[0]
    assert sorted(p.name for p in (cut / "checkpoints").iterdir() if p.name.isdigit()) == ["2"]
    assert not (cut / "export").exists()
    assert run_training_cli("sft", "", _sft_argv(cut)) == 0  # the same command, the limit gone
    assert _rows(cut) == _rows(straight)
    _same_export(cut, straight)
