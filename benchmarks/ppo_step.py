"""PPO step time: ours (rollout + scoring + update, jitted) vs TRL 1.12 `trl.experimental.ppo.PPOTrainer`, same tiny
Llama (policy, reference, reward model and value model from the same random weights), same batch, prompt and
response lengths, one PPO epoch per rollout.

    pip install torch==2.13.0 trl==1.12.0       # (TRL ≥ 1.13 has no PPO)
    python -m benchmarks.ppo_step [--batch 8 --prompt_len 32 --response_len 32 --steps 4] [--json out.json]

On a real model (`--model`, an HF directory: SmolLM2-135M from `launch.convert_gguf --smollm2`) both sides load its
weights and TRL its tokenizer; `--rollout_dtypes float32,bfloat16` times ours once per rollout dtype
(`generation.rollout_dtype`), TRL samples in f32 either way.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time
from typing import Callable

import numpy as np

from benchmarks.common import tiny_llama_dir, write_json


# The peer harness's models (Tunix Llama3 configs): tiny ≈ 0.36M, small ≈ 4.07M parameters.
TUNIX_SIZES = {"tiny": dict(hidden=128, layers=2, heads=4, kv_heads=2, vocab=264, intermediate=256),
               "small": dict(hidden=256, layers=4, heads=8, kv_heads=4, vocab=264, intermediate=1024)}


def _prompts(batch, prompt_len, vocab, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(3, vocab, (batch, prompt_len)).astype(np.int32)


def byte_fraction_reward(prompt_len: int, target_id: int = ord("a") + 3, lo: int = 3, hi: int = 259) -> Callable:
    """The peer harness's rule reward in token space: the fraction of response characters that are 'a'.

    Tunix's harness uses a byte tokenizer (id = byte + 3; ids outside [3, 259) are special and decode to nothing)
    and scores the decoded completion with `count('a') / max(len, 1)`; this is the same number from the ids, jitted,
    so both sides do the same work per step (no reward-model forward on either side)."""
    import jax.numpy as jnp

    def reward(params, seq, mask):
        resp, m = seq[:, prompt_len:], mask[:, prompt_len:].astype(bool)
        chars = m & (resp >= lo) & (resp < hi)
        hits = jnp.sum(chars & (resp == target_id), axis=-1)
        return (hits / jnp.maximum(jnp.sum(chars, axis=-1), 1)).astype(jnp.float32)

    return reward


def time_ours(path, batch, prompt_len, response_len, steps, rule_reward: bool = False,
              rollout_dtype: str = "float32") -> float:
    """Median seconds of one full PPO iteration (rollout + scoring + update) after one warm-up iteration."""
    import jax
    import jax.numpy as jnp

    from saferlhf_jax.algorithms import rl
    from saferlhf_jax.algorithms.rl_runner import RLRunner
    from saferlhf_jax.generation import GenerationConfig
    from saferlhf_jax.training.optim import OptimConfig
    from saferlhf_jax.models import load_causal_lm, load_score_model

    actor = load_causal_lm(path)
    critic = load_score_model(path, score_type="critic", rng=2)
    if rule_reward:
        reward_fn, reward_params = byte_fraction_reward(prompt_len), {}
    else:
        reward = load_score_model(path, score_type="reward", rng=1)
        reward_fn, reward_params = rl.score_model_end_fn(reward.apply), reward.params
    runner = RLRunner(
        actor=actor, reward_critic=critic, cost_critic=None, reward_fn=reward_fn,
        cost_fn=None, frozen={"ref": jax.tree.map(jnp.copy, actor.params), "reward": reward_params},
        cfg=rl.RLConfig(mode="ppo", kl_coeff=0.05), gen=GenerationConfig(
            max_length=prompt_len + response_len, top_k=0, eos_token_ids=(), pad_token_id=0,
            rollout_dtype=rollout_dtype),
        actor_optim=OptimConfig(learning_rate=1e-5, lr_scheduler_type="constant"),
        critic_optim=OptimConfig(learning_rate=1e-5, lr_scheduler_type="constant"),
        total_rl_steps=steps + 1, train_batch_size=batch, update_iters=1)
    state = runner.init_state(0)
    ids = _prompts(batch, prompt_len, actor.config.vocab_size)
    mask = np.ones_like(ids)
    state, _ = runner.iteration(state, ids, mask)  # compile
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, rows = runner.iteration(state, ids, mask)
        jax.block_until_ready(state.actor.params)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def time_trl(path, batch, prompt_len, response_len, steps) -> float:
    import datasets
    import torch
    import transformers
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    if (pathlib.Path(path) / "tokenizer.json").exists():  # a real model: its own tokenizer
        tok = transformers.AutoTokenizer.from_pretrained(path)
    else:
        tok = transformers.PreTrainedTokenizerFast(tokenizer_object=_word_tokenizer(), pad_token="<pad>",
                                                   eos_token="</s>", bos_token="<s>")
    tok.padding_side = "left"
    policy = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ref = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    rm = transformers.AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    vm = transformers.AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    for m in (policy, ref, rm, vm):
        m.config.pad_token_id = 0
    policy.generation_config.pad_token_id = 0
    ids = _prompts(batch, prompt_len, policy.config.vocab_size)
    episodes = batch * (steps + 1)
    data = datasets.Dataset.from_dict({"input_ids": [row.tolist() for row in np.tile(ids, (steps + 1, 1))]})
    args = PPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=batch, gradient_accumulation_steps=1,
                     num_ppo_epochs=1, num_mini_batches=1, total_episodes=episodes, response_length=response_len,
                     local_rollout_forward_batch_size=batch, temperature=1.0, report_to=[], save_strategy="no",
                     logging_steps=10_000, num_sample_generations=0, kl_coef=0.05, bf16=False, fp16=False,
                     use_cpu=True, seed=0, stop_token_id=None, dataloader_num_workers=0)
    stamps: list[float] = []

    class StepTimer(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=ref, reward_model=rm,
                         train_dataset=data, value_model=vm, callbacks=[StepTimer()])
    t0 = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - t0
    if len(stamps) >= 2:  # median step after the first (warm-up) one, like ours
        return float(np.median(np.diff(stamps)))
    return total / (steps + 1)


def _word_tokenizer():
    from tokenizers import Tokenizer, models

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"t{i}": i for i in range(3, 2048)}}
    return Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))


def run(batch=8, prompt_len=32, response_len=32, steps=4, hidden=64, layers=2, vocab=2048, model=None,
        rollout_dtypes=("float32",)) -> dict:
    path = model or tiny_llama_dir(hidden=hidden, layers=layers, heads=4, kv_heads=2, vocab=vocab)
    ours = {dtype: time_ours(path, batch, prompt_len, response_len, steps, rollout_dtype=dtype)
            for dtype in rollout_dtypes}
    baseline = time_trl(path, batch, prompt_len, response_len, steps)
    first = ours[rollout_dtypes[0]]
    out = {"ours": first, "baseline": baseline, "ratio": baseline / first, "unit": "seconds per PPO step",
           "note": "both: median seconds per PPO step after one warm-up step",
           "batch": batch, "prompt_len": prompt_len, "response_len": response_len, "model": str(model or "tiny")}
    if len(rollout_dtypes) > 1:
        out["by_rollout_dtype"] = {d: {"ours": t, "ratio": baseline / t} for d, t in ours.items()}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt_len", type=int, default=32)
    p.add_argument("--response_len", type=int, default=32)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--model", default=None, help="an HF model directory (default: a random tiny Llama)")
    p.add_argument("--rollout_dtypes", default="float32", help="ours, once per rollout dtype: float32,bfloat16")
    p.add_argument("--json", default=None)
    p.add_argument("--tunix_size", choices=["tiny", "small"], default=None,
                   help="time only ours on the model and rule reward of ../shared/peers/tunix_ppo_tiny.py "
                        "(benchmarks.vs_tunix runs both back to back)")
    a = p.parse_args(argv)
    if a.tunix_size:
        arch = TUNIX_SIZES[a.tunix_size]
        path = tiny_llama_dir(**arch)
        ours = time_ours(path, 8, 32, 32, a.steps, rule_reward=True)
        print(f"ours, Tunix '{a.tunix_size}' model, 8 prompts × (32+32) tokens: {ours:.3f}s per PPO step")
        write_json(a.json, {"ours": ours, "unit": "seconds per PPO step (median)", "model": arch})
        return 0
    try:
        import trl  # noqa: F401
    except ImportError:
        print("trl is not installed: pip install torch==2.13.0 trl==1.12.0", file=sys.stderr)
        return 2
    r = run(a.batch, a.prompt_len, a.response_len, a.steps, a.hidden, a.layers, model=a.model,
            rollout_dtypes=tuple(a.rollout_dtypes.split(",")))
    print(f"PPO step, {a.batch} prompts × ({a.prompt_len}+{a.response_len}) tokens: ours {r['ours']:.3f}s, "
          f"TRL {r['baseline']:.3f}s, ratio {r['ratio']:.2f}×")
    write_json(a.json, r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
