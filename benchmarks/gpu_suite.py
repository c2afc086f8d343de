"""One prepared accelerator run: how close rollouts and training get to the hardware at a real model size.

    python -m benchmarks.gpu_suite --size gpu --json docs/bench_gpu_suite_h200.json     # one GPU, < 8 minutes
    python -m benchmarks.gpu_suite --size tiny                                          # CPU smoke test (CI)

The model is Llama-3.2-1B-shaped (16 layers, 2048 hidden, GQA 32/8, 128k vocabulary, tied embedding), random
weights in bf16. Rows of the JSON:

- `copy_bandwidth_bytes_per_sec`: device-to-device copy (read + write) of a 2 GiB buffer — the HBM roofline's speed.
- `matmul_peak_flops_per_sec`: a bf16 8192² matmul — the compute roofline.
- `decode[B]`: decode tokens/s of our sampler at B rows, 128-token prompts, 512 new tokens (greedy, bf16 cache),
  and the same as a fraction of the HBM roofline: per decode step the weights plus the live KV cache
  (prompt + tokens so far, every layer, keys and values) must be read once; roofline time = those bytes summed over
  the steps ÷ the copy bandwidth. Decode time = generate(512 tokens) − generate(budget 1) on the same program, so the
  prefill is not counted.
- `decode[B].vs_transformers`: the same shapes in transformers `generate` (bf16, static cache, `torch.compile`
  where it works) on the same GPU, as a ratio; skipped (and said so) without torch + CUDA.
- `train_step`: model FLOP utilisation of one SFT step (fwd + bwd + AdamW, bf16 compute, fp32 master weights) at
  16 × 512 tokens against the measured matmul peak.
- `ppo_lag_iteration`: one PPO-Lag iteration of six such models (actor, reference, reward, cost, two critics; the
  7B preset's levers), split into generation, scoring and update seconds.

Nothing here is asserted: the JSON is the record, with the command that produced it.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time

import numpy as np

from benchmarks.common import matmul_flops, median_time, sft_step_runner, write_json

SIZES = {
    "gpu": dict(model=dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                           num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True,
                           rope_theta=500000.0),
                decode_batches=(64, 256), prompt_len=128, new_tokens=512, repeats=2, copy_mib=2048, matmul_n=8192,
                train=dict(batch=16, seq=512), ppo=dict(batch=64, prompt_len=128, response_len=512, micro=64)),
    "tiny": dict(model=dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                            rope_theta=500000.0),
                 decode_batches=(2, 4), prompt_len=8, new_tokens=8, repeats=1, copy_mib=8, matmul_n=256,
                 train=dict(batch=2, seq=32), ppo=dict(batch=4, prompt_len=8, response_len=8, micro=4)),
}


def model_config(arch: dict, dtype: str = "bfloat16", param_dtype: str = "bfloat16"):
    from saferlhf_jax.models import ModelConfig

    return ModelConfig(**arch, max_position_embeddings=4096, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                       dtype=dtype, param_dtype=param_dtype, initializer_range=0.02)


def copy_bandwidth(mib: int, repeats: int = 5) -> float:
    """Bytes/s of a device-to-device copy: x + 1 reads and writes every byte once."""
    import jax
    import jax.numpy as jnp

    x = jnp.zeros((mib * 2**20 // 2,), jnp.bfloat16)
    f = jax.jit(lambda a: a + jnp.bfloat16(1))
    t = median_time(lambda: jax.block_until_ready(f(x)), repeats)
    return 2 * x.nbytes / t


def matmul_peak(n: int, repeats: int = 5) -> float:
    """FLOP/s of a bf16 n×n×n matmul (f32 accumulation)."""
    return matmul_flops(n, n, n, "bfloat16", repeats)


def decode_roofline_bytes(cfg, params, batch: int, prompt_len: int, new_tokens: int, cache_bytes: int = 2) -> float:
    """Bytes that the decode of `new_tokens` tokens must read at least: every weight once per step (the embedding as
    the LM head; its lookup reads B rows) and the live KV cache, prompt + tokens so far, in every layer."""
    import jax

    weights = sum(x.nbytes for x in jax.tree.leaves(params))
    per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.resolved_head_dim * cache_bytes
    live = sum(prompt_len + t for t in range(new_tokens))  # slots read by the step that makes token t
    return float(new_tokens * weights + batch * per_token * live)


def _prompts(batch: int, prompt_len: int, vocab: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.integers(3, vocab, (batch, prompt_len)).astype(np.int32), np.ones((batch, prompt_len), np.int32)


def decode(model, batch: int, prompt_len: int, new_tokens: int, repeats: int, bandwidth: float) -> dict:
    """Our sampler's decode rate; the prefill is measured on the same compiled program (budget 1) and subtracted."""
    import jax

    from saferlhf_jax.generation import generate

    ids, mask = _prompts(batch, prompt_len, model.config.vocab_size)

    def run(budget):
        out = generate(model, model.params, ids, mask, max_new_tokens=new_tokens, budget=budget, greedy=True,
                       eos_token_ids=[], cache_dtype="bfloat16")
        return jax.block_until_ready(out["sequences"])

    t_all = median_time(lambda: run(new_tokens), repeats)
    t_prefill = median_time(lambda: run(1), repeats)
    t_decode = max(t_all - t_prefill, 1e-9)
    steps = new_tokens - 1  # the budget-1 run already made the first token
    roofline = decode_roofline_bytes(model.config, model.params, batch, prompt_len + 1, steps) / bandwidth
    return {"batch": batch, "prompt_len": prompt_len, "new_tokens": new_tokens, "seconds_total": t_all,
            "seconds_prefill_and_first_token": t_prefill, "decode_tokens_per_sec": batch * steps / t_decode,
            "roofline_seconds": roofline, "fraction_of_hbm_roofline": roofline / t_decode}


def decode_transformers(model_dir: pathlib.Path, batch: int, prompt_len: int, new_tokens: int, repeats: int) -> dict:
    """The same shapes in transformers `generate`: bf16, static cache, torch.compile when it compiles."""
    try:
        import torch
        import transformers
    except ImportError:
        return {"skipped": "torch / transformers not installed"}
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device for PyTorch"}
    hf = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).cuda().eval()
    ids, mask = _prompts(batch, prompt_len, hf.config.vocab_size)
    ids_t, mask_t = torch.tensor(ids).cuda(), torch.tensor(mask).cuda()
    out: dict = {}

    def run(budget):
        with torch.no_grad():
            hf.generate(ids_t, attention_mask=mask_t, max_new_tokens=budget, min_new_tokens=budget, do_sample=False,
                        pad_token_id=0, cache_implementation="static")
        torch.cuda.synchronize()

    try:
        hf.forward = torch.compile(hf.forward, mode="reduce-overhead", fullgraph=True)
        run(2)
        out["torch_compile"] = True
    except Exception as e:  # noqa: BLE001 — eager generate is the fallback baseline
        hf = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).cuda().eval()
        out["torch_compile"] = f"failed ({type(e).__name__}); eager"
    t_all = median_time(lambda: run(new_tokens), repeats)
    t_prefill = median_time(lambda: run(1), repeats)
    out["decode_tokens_per_sec"] = batch * (new_tokens - 1) / max(t_all - t_prefill, 1e-9)
    return out


def train_step(cfg, batch: int, seq: int, peak: float, repeats: int) -> dict:
    """MFU of one SFT step: bf16 compute, fp32 master weights and AdamW, full remat, scanned layers."""
    import jax

    from saferlhf_jax.models import init_model

    cfg = cfg.replace(param_dtype="float32", remat_policy="full", scan_layers=True)
    model = init_model(cfg, "causal_lm", rng=0)
    ids, mask = _prompts(batch, seq, cfg.vocab_size, seed=1)
    run, holder = sft_step_runner(model, 1e-5, ids, mask)
    model.params = None  # the step donates them: one live copy

    t = median_time(run, max(repeats, 2))
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(holder["state"]["params"]))
    tokens = batch * seq
    flops = 6 * n_params * tokens + 12 * cfg.num_hidden_layers * cfg.hidden_size * seq * tokens
    return {"batch": batch, "seq": seq, "params": n_params, "seconds": t, "flops_per_sec": flops / t,
            "mfu": flops / t / peak, "note": "remat recomputes the forward: the hardware does ~8/6 of these FLOPs"}


def ppo_lag_iteration(model_dir: pathlib.Path, batch: int, prompt_len: int, response_len: int, micro: int) -> dict:
    """One PPO-Lag iteration of six models (second one timed; the first compiles), in three phases."""
    import jax

    from saferlhf_jax.algorithms import rl
    from saferlhf_jax.algorithms.rl_runner import RLRunner
    from saferlhf_jax.generation import GenerationConfig
    from saferlhf_jax.training.optim import OptimConfig
    from saferlhf_jax.models import load_causal_lm, load_score_model

    import jax.numpy as jnp

    train = dict(dtype=jnp.float32, compute_dtype="bfloat16", remat_policy="full", scan_layers=True)
    actor = load_causal_lm(model_dir, **train)
    frozen_lm = load_causal_lm(model_dir, dtype=jnp.bfloat16, scan_layers=True)  # runs through the actor's graph
    scorer = {k: load_score_model(model_dir, dtype=jnp.bfloat16, score_type=k, rng=i)
              for i, k in enumerate(("reward", "cost"), 1)}
    critics = {k: load_score_model(model_dir, score_type="critic", rng=i, **train)
               for i, k in enumerate(("reward", "cost"), 3)}
    runner = RLRunner(
        actor=actor, reward_critic=critics["reward"], cost_critic=critics["cost"],
        reward_fn=rl.score_model_end_fn(scorer["reward"].apply), cost_fn=rl.score_model_end_fn(scorer["cost"].apply),
        frozen={"ref": frozen_lm.params, "reward": scorer["reward"].params, "cost": scorer["cost"].params},
        cfg=rl.RLConfig(mode="ppo_lag", joint_update=False),
        gen=GenerationConfig(max_length=prompt_len + response_len, eos_token_ids=(), pad_token_id=0),
        actor_optim=OptimConfig(learning_rate=1e-6, lr_scheduler_type="constant"),
        critic_optim=OptimConfig(learning_rate=1e-6, lr_scheduler_type="constant"),
        total_rl_steps=4, train_batch_size=micro, logits_chunk=min(8192, actor.config.vocab_size))
    state = runner.init_state(0, donate=True)
    actor.params = critics["reward"].params = critics["cost"].params = None
    ids, mask = _prompts(batch, prompt_len, actor.config.vocab_size, seed=2)
    phases = {}
    for _ in range(2):  # the first iteration compiles
        t0 = time.perf_counter()
        state, micro_batches = runner.rollout(state, ids, mask)
        jax.block_until_ready(micro_batches)
        rollout = time.perf_counter() - t0
        generation = runner.last_generate_seconds
        t0 = time.perf_counter()
        state, metrics = runner.update(state, micro_batches)
        jax.block_until_ready((state, metrics))
        phases = {"generation_seconds": generation, "scoring_seconds": rollout - generation,
                  "update_seconds": time.perf_counter() - t0}
    return {"batch": batch, "prompt_len": prompt_len, "response_len": response_len, "micro_batch": micro, **phases}


def run(size: str = "gpu") -> dict:
    import jax

    from saferlhf_jax.models import init_model, save_pretrained

    s = SIZES[size]
    device = jax.devices()[0]
    out: dict = {"size": size, "command": f"python -m benchmarks.gpu_suite --size {size}",
                 "device": str(device.device_kind), "platform": device.platform, "jax": jax.__version__}
    t_start = time.perf_counter()
    out["copy_bandwidth_bytes_per_sec"] = bandwidth = copy_bandwidth(s["copy_mib"])
    out["matmul_peak_flops_per_sec"] = peak = matmul_peak(s["matmul_n"])
    cfg = model_config(s["model"])
    model = init_model(cfg, "causal_lm", rng=0)
    out["model"] = {**s["model"], "parameters": int(sum(np.prod(x.shape) for x in jax.tree.leaves(model.params)))}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = pathlib.Path(tmp) / "model"
        save_pretrained(model, model.params, model_dir)
        out["decode"] = {}
        for b in s["decode_batches"]:
            row = decode(model, b, s["prompt_len"], s["new_tokens"], s["repeats"], bandwidth)
            if device.platform == "gpu":
                hf = decode_transformers(model_dir, b, s["prompt_len"], s["new_tokens"], s["repeats"])
                if "decode_tokens_per_sec" in hf:
                    hf["ratio"] = row["decode_tokens_per_sec"] / hf["decode_tokens_per_sec"]
                row["vs_transformers"] = hf
            else:
                row["vs_transformers"] = {"skipped": "the transformers comparison runs on GPU only"}
            out["decode"][str(b)] = row
            print(f"decode B={b}: {row['decode_tokens_per_sec']:.0f} tok/s, "
                  f"{row['fraction_of_hbm_roofline']:.1%} of the HBM roofline", flush=True)
        model.params = None
        out["train_step"] = train_step(cfg, s["train"]["batch"], s["train"]["seq"], peak, s["repeats"])
        print(f"train step: MFU {out['train_step']['mfu']:.1%}", flush=True)
        out["ppo_lag_iteration"] = ppo_lag_iteration(model_dir, **s["ppo"])
        print(f"PPO-Lag iteration: {json.dumps(out['ppo_lag_iteration'])}", flush=True)
    out["wall_seconds"] = time.perf_counter() - t_start
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="gpu")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    result = run(args.size)
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
