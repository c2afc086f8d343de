"""Speed on a real model against this machine's own limits (issue: a real model made safer, item 3): the library's
reward-model and DPO training steps against the f32 matmul peak, and decoding at B = 8 against the memory-bandwidth
roofline — each limit measured in the same process, right before the step it bounds.

    python -m launch.convert_gguf --smollm2 --output runs/smollm2_hf
    python -m benchmarks.real_model --model runs/smollm2_hf --json docs/bench_real_model_cpu.json

What is measured (medians of `repeats` after warm-up, one device):
- `matmul_peak_gflops`: the best of XLA f32 matmuls n×n×n (n = 1024, 2048) and the step's own largest GEMM
  shapes;
- `bandwidth_gbytes_per_s`: a streaming f32 read (a jitted sum over 1 GiB, larger than any cache here);
- `rm_step` / `dpo_step`: `training.trainer.make_train_step` with the reward / DPO stage, AdamW, donated state
  (what `launch.reward` / `launch.dpo` jit), B pairs of L tokens each (2B sequences); the useful FLOPs are
  2·N·tokens forward and 4·N·tokens backward for the trained model (N: its matmul parameters — the embedding lookup
  is not a matmul; the LM head is one for DPO), plus DPO's frozen reference forward, plus attention (QKᵀ and PV:
  4·L·E per token and layer, ×3 with the backward);
- `decode_<dtype>`: `generation.generate` at B = 8 (greedy, the rollout layout, `rollout_dtype`), per new token
  ((time for T tokens − time for 1) / (T − 1), one compiled program); the roofline reads every weight of the copy
  the sampler reads once per step (the tied embedding once, as the LM head) plus the live f32 KV cache
  (`gpu_suite.decode_roofline_bytes`): tokens/s ≤ B · bandwidth / bytes per step. `fraction_of_roofline` is against
  the copy's own bytes, `fraction_of_f32_roofline` against the f32 model's (the issue's measure: "bf16 rollout
  weights are allowed"); the bf16 copy's greedy tokens are compared with the f32 decode's.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from benchmarks.common import matmul_flops, median_time, write_json
from benchmarks.gpu_suite import decode_roofline_bytes


def read_bandwidth(gib: float = 1.0, repeats: int = 5) -> float:
    """GB/s of a jitted f32 sum over `gib` GiB (read once per call)."""
    import jax
    import jax.numpy as jnp

    x = jnp.ones((int(gib * 2**28),), jnp.float32)
    f = jax.jit(jnp.sum)
    return x.nbytes / median_time(lambda: jax.block_until_ready(f(x)), repeats, warmup=2) / 1e9


def matmul_params(config, with_head: bool) -> int:
    """Parameters that take part in a matmul per token: every layer's projections (+ the LM head)."""
    e, f, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    dh = config.resolved_head_dim
    attn = e * dh * (2 * config.num_attention_heads + 2 * config.num_key_value_heads)
    return layers * (attn + 3 * e * f) + (e * config.vocab_size if with_head else 0)


def _preference_batch(vocab: int, pairs: int, length: int, seed: int = 0) -> dict:
    """(1, B, L) pairs of random token sequences, every position real (no padding: FLOPs are exact)."""
    rng = np.random.default_rng(seed)
    ids = lambda: rng.integers(3, vocab, (1, pairs, length)).astype(np.int32)  # noqa: E731
    ones = np.ones((1, pairs, length), np.int32)
    return {"better_input_ids": ids(), "better_attention_mask": ones,
            "worse_input_ids": ids(), "worse_attention_mask": ones}


def train_step(kind: str, model_dir: str, pairs: int, length: int, repeats: int) -> dict:
    """Seconds per step of the library's reward (kind 'rm') or DPO ('dpo') train step, and its useful GFLOP/s."""
    import jax

    from saferlhf_jax import models
    from saferlhf_jax.algorithms import dpo, reward
    from saferlhf_jax.training import optim, trainer
    from saferlhf_jax.training.stage import LossConfig

    if kind == "rm":
        stage, model = reward.STAGE, models.load_score_model(model_dir, score_type="reward", rng=0)
    else:
        stage, model = dpo.STAGE, models.load_causal_lm(model_dir)
    cfg = model.config
    optimizer, schedule = optim.make_optimizer(1e-6, 1000, schedule_type="constant")
    frozen = jax.tree.map(jax.numpy.copy, model.params) if stage.needs_reference else {}
    state = trainer.make_init_state(optimizer)(model.params, jax.random.PRNGKey(0))
    step = jax.jit(trainer.make_train_step(stage, model, optimizer, schedule, LossConfig(), 1),
                   donate_argnums=(0,))
    batch = _preference_batch(cfg.vocab_size, pairs, length)
    holder = {"state": state}
    model.params = None  # the state owns them (donated)

    def run():
        holder["state"], metrics = step(holder["state"], batch, frozen)
        jax.block_until_ready(metrics["loss"])

    seconds = median_time(run, repeats, warmup=2)
    tokens = 2 * pairs * length
    n = matmul_params(cfg, with_head=kind == "dpo")
    attention = 4 * length * cfg.num_attention_heads * cfg.resolved_head_dim * cfg.num_hidden_layers * tokens
    flops = 6 * n * tokens + 3 * attention  # trained: forward + backward
    if stage.needs_reference:
        flops += 2 * n * tokens + attention  # the frozen reference's forward
    return {"pairs": pairs, "length": length, "tokens_per_step": tokens, "seconds_per_step": seconds,
            "tokens_per_second": tokens / seconds, "useful_gflops_per_step": flops / 1e9,
            "gflops_per_second": flops / seconds / 1e9, "matmul_params": n}


def decode(model_dir: str, batch: int, prompt_len: int, new_tokens: int, repeats: int, rollout_dtype: str) -> dict:
    """Per-token decode time at B = `batch` with the library's sampler, and the bytes a step must read."""
    import jax

    from saferlhf_jax.generation import generate
    from saferlhf_jax.models import load_causal_lm

    model = load_causal_lm(model_dir)
    cfg = model.config
    ids = np.random.default_rng(0).integers(3, cfg.vocab_size, (batch, prompt_len)).astype(np.int32)
    mask = np.ones_like(ids)

    def tokens(n, dtype):  # one compiled program: a budget of n of the new_tokens
        return generate(model, model.params, ids, mask, max_new_tokens=new_tokens, budget=n, greedy=True,
                        eos_token_ids=[], rollout_layout=True, rollout_dtype=dtype)["sequences"]

    def timed(n):
        return median_time(lambda: jax.block_until_ready(tokens(n, rollout_dtype)), repeats, warmup=2)

    full, one = timed(new_tokens), timed(1)
    steps = new_tokens - 1  # the budget-1 run made the first token
    rollout_model, convert = model.rollout_as(True, rollout_dtype)
    copy = convert(model.params)  # what the sampler reads
    weights = sum(x.nbytes for x in jax.tree.leaves(copy))
    per_step = decode_roofline_bytes(rollout_model.config, copy, batch, prompt_len + 1, steps, cache_bytes=4) / steps
    out = {"batch": batch, "prompt_len": prompt_len, "new_tokens": new_tokens, "rollout_dtype": rollout_dtype,
           "decode_step_ms": (full - one) / steps * 1e3, "tokens_per_second": batch * steps / (full - one),
           "weight_bytes_per_step": weights, "bytes_per_step": per_step}
    if rollout_dtype != "float32":
        ours, reference = tokens(new_tokens, rollout_dtype), tokens(new_tokens, "float32")
        out["greedy_token_agreement_with_f32"] = float(np.mean(ours[:, prompt_len:] == reference[:, prompt_len:]))
    return out


def run(model_dir: str, pairs: int = 8, length: int = 192, batch: int = 8, prompt_len: int = 64,
        new_tokens: int = 64, repeats: int = 5, rollout_dtypes=("float32", "bfloat16")) -> dict:
    import jax

    from saferlhf_jax.models.config import ModelConfig

    cfg = ModelConfig.from_pretrained(model_dir)
    tokens = 2 * pairs * length
    e, f = cfg.hidden_size, cfg.intermediate_size
    shapes = [(1024, 1024, 1024), (2048, 2048, 2048), (tokens, e, f), (tokens, f, e), (e, tokens, f)]
    peak = {f"{m}x{k}x{n}": matmul_flops(m, k, n, "float32", repeats) / 1e9 for m, k, n in shapes}
    out = {"model": model_dir, "device": jax.devices()[0].platform, "matmul_gflops": peak,
           "matmul_peak_gflops": max(peak.values())}
    for kind in ("rm", "dpo"):
        step = train_step(kind, model_dir, pairs, length, repeats)
        step["fraction_of_matmul_peak"] = step["gflops_per_second"] / out["matmul_peak_gflops"]
        out[f"{kind}_step"] = step
    out["bandwidth_gbytes_per_s"] = read_bandwidth(repeats=repeats)
    for dtype in rollout_dtypes:
        d = decode(model_dir, batch, prompt_len, new_tokens, repeats, dtype)
        d["roofline_tokens_per_second"] = batch * out["bandwidth_gbytes_per_s"] * 1e9 / d["bytes_per_step"]
        d["fraction_of_roofline"] = d["tokens_per_second"] / d["roofline_tokens_per_second"]
        out[f"decode_{dtype}"] = d
    if "float32" in rollout_dtypes:  # the measure: against the f32 model's bytes, whatever the copy's dtype
        f32 = out["decode_float32"]["roofline_tokens_per_second"]
        for dtype in rollout_dtypes:
            out[f"decode_{dtype}"]["fraction_of_f32_roofline"] = out[f"decode_{dtype}"]["tokens_per_second"] / f32
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="an HF model directory (SmolLM2: launch.convert_gguf --smollm2)")
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--length", type=int, default=192)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt_len", type=int, default=64)
    p.add_argument("--new_tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rollout_dtypes", default="float32,bfloat16")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    out = run(a.model, a.pairs, a.length, a.batch, a.prompt_len, a.new_tokens, a.repeats,
              tuple(a.rollout_dtypes.split(",")))
    write_json(a.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
