"""The memory planner against a real device: the PPO-Lag step of a ~1B Llama, predicted by `launch.plan`'s code
and then run on one accelerator, its measured peak read from `device.memory_stats()`.

    python -m benchmarks.planner_vs_device --size 1b --json docs/planner_vs_device_gpu.json    # on a GPU
    python -m benchmarks.planner_vs_device --size tiny                                         # CPU smoke test

Both sides use the same config (bf16 compute, the 7B preset's levers, one device) and the same abstract state
(`planner.rl_step_program`); the device side allocates the six models (random init, frozen ones in the frozen
dtype), runs one rl_step on a random rollout micro-batch and reports peak_bytes_in_use. CPUs report no memory stats:
there the JSON holds the prediction only.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time

SIZES = {
    # ~1.1B parameters: Llama-style, GQA 32/8 (TinyLlama-like), 32k vocabulary
    "1b": dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
               num_attention_heads=32, num_key_value_heads=4, batch=16, length=512),
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, batch=4, length=64),
}


def make_config(size: str, model_dir: pathlib.Path):
    """An RL config (the 7B preset's levers, one device) whose models have the `size` architecture."""
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    from configs import ppo_lag

    arch = dict(SIZES[size])
    batch, length = arch.pop("batch"), arch.pop("length")
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps({"model_type": "llama", "rms_norm_eps": 1e-5, **arch}))
    cfg = ppo_lag.get_config("llama2_7b")
    for key in ("actor_model_name_or_path", "reward_model_name_or_path", "cost_model_name_or_path"):
        cfg[key] = str(model_dir)
    cfg.architecture = ""
    cfg.mesh.fsdp = 1
    cfg.train.train_batch_size = cfg.train.prompt_batch_size = batch
    cfg.generation.max_length = length
    cfg.model.logits_chunk = min(int(cfg.model.logits_chunk), arch["vocab_size"])
    return cfg


def measure(cfg, run: bool = True) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from saferlhf_jax import planner
    from saferlhf_jax.algorithms import rl
    from saferlhf_jax.models import init_model
    from saferlhf_jax.parallel import make_mesh

    mesh = make_mesh(fsdp=1)
    device = jax.devices()[0]
    prog = planner.rl_step_program(cfg, mesh)
    t0 = time.perf_counter()
    compiled = prog["jitted"].lower(prog["state"], prog["rollout"], prog["ptx"]).compile()
    plan = planner.memory_of(compiled)
    frozen = sum(prog["per_model"][k] for k in ("reference", "reward_model", "cost_model") if k in prog["per_model"])
    predicted = plan["total_bytes_per_device"] + frozen
    out = {"device": str(device.device_kind), "platform": device.platform,
           "parameters_per_model": int(sum(np.prod(x.shape) for x in jax.tree.leaves(prog["state"].actor.params))),
           "predicted_total_bytes": int(predicted), "predicted": {**plan, "resident_frozen_bytes": int(frozen)},
           "compile_seconds": round(time.perf_counter() - t0, 1)}
    if not run:
        return out
    actor = init_model(prog["actor_config"], "causal_lm", rng=0, mesh=mesh)
    critic_r = init_model(prog["critic_config"], "score", rng=1, mesh=mesh)
    critic_c = init_model(prog["critic_config"], "score", rng=2, mesh=mesh)
    fdt = prog["frozen_dtype"]
    frozen_models = [jax.tree.map(lambda x: x.astype(fdt), m.params) for m in (actor, critic_r, critic_c)]
    state = jax.jit(lambda a, r, c: rl.init_state(prog["fns"], a, r, c, 0, 1), donate_argnums=(0, 1, 2))(
        actor.params, critic_r.params, critic_c.params)
    b, length = prog["rollout"].seq.shape
    rng = np.random.default_rng(0)
    vocab = prog["actor_config"].vocab_size
    seq = rng.integers(3, vocab, (b, length)).astype(np.int32)
    f32 = lambda *shape: jnp.asarray(rng.normal(size=shape).astype(np.float32) * 0.1)  # noqa: E731
    rollout = rl.Rollout(seq=jnp.asarray(seq), mask=jnp.ones((b, length), bool),
                         start=jnp.full((b,), length // 4, jnp.int32), ref_log_probs=f32(b, length - 1) - 5.0,
                         reward=f32(b), cost=f32(b), log_probs=f32(b, length - 1) - 5.0,
                         reward_values=f32(b, length - 1), cost_values=f32(b, length - 1))
    ptx = None
    if prog["ptx"] is not None:
        ptx = {"input_ids": jnp.asarray(seq), "attention_mask": jnp.ones((b, length), bool),
               "labels": jnp.asarray(seq)}
    t0 = time.perf_counter()
    state, metrics, _ = compiled(state, rollout, ptx)
    jax.block_until_ready(state)
    out["step_seconds"] = round(time.perf_counter() - t0, 2)
    out["actor_loss"] = float(metrics["train/actor_loss"])
    stats = device.memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        out["measured_peak_bytes"] = int(stats["peak_bytes_in_use"])
        out["measured_over_predicted"] = round(out["measured_peak_bytes"] / predicted, 3)
    else:
        out["measured_peak_bytes"] = None  # this backend reports no memory statistics (CPU)
    del frozen_models
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="1b")
    p.add_argument("--json", default=None)
    p.add_argument("--no_run", action="store_true", help="predict only")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = make_config(args.size, pathlib.Path(tmp) / "model")
        result = {"size": args.size, "command": f"python -m benchmarks.planner_vs_device --size {args.size}",
                  **measure(cfg, run=not args.no_run)}
    print(json.dumps(result, indent=2))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
