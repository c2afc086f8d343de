"""DPO step time: ours (the library's DPO train step: policy forward + backward, frozen reference forward, AdamW;
what `launch.dpo` jits) vs TRL 1.12's `DPOTrainer` on the same model, the same number of pairs and the same
sequence length (every sequence exactly L tokens on both sides: no padding), f32, one process.

    pip install torch==2.13.0 trl==1.12.0
    python -m launch.convert_gguf --smollm2 --output runs/smollm2_hf
    python -m benchmarks.dpo_step --model runs/smollm2_hf [--pairs 8 --length 192 --steps 4] [--json out.json]

Both: median seconds of a step after warm-up (ours: `repeats` steps after two; TRL: the median interval between
its steps' ends, the first step excluded). TRL's reference model is its own copy of the policy (ref_model=None,
no precomputed reference log-probs), like ours.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import numpy as np

from benchmarks.common import write_json
from benchmarks.real_model import train_step


def time_trl(model_dir: str, pairs: int, length: int, steps: int) -> float:
    """TRL DPOTrainer: pairs of prompt + completion text truncated (keep_start) to exactly `length` tokens."""
    import datasets
    import torch
    import transformers
    from trl import DPOConfig, DPOTrainer

    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    policy = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    rng = np.random.default_rng(0)
    vocab = policy.config.vocab_size

    edge = min(1000, vocab // 8)  # away from the special and byte tokens at the ends of the vocabulary

    def text(n):  # random tokens, decoded: re-tokenized they are about n tokens, and we only need ≥ the length
        return tok.decode(rng.integers(edge, vocab - edge, n).tolist())

    rows = 2 * (steps + 2) * pairs  # spares: TRL drops a row whose prompt alone fills the length
    data = datasets.Dataset.from_dict({"prompt": [text(length // 4) for _ in range(rows)],
                                       "chosen": [text(2 * length) for _ in range(rows)],
                                       "rejected": [text(2 * length) for _ in range(rows)]})
    args = DPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=pairs, gradient_accumulation_steps=1,
                     max_length=length, truncation_mode="keep_start", max_steps=steps + 1, learning_rate=1e-6,
                     beta=0.1, report_to=[], save_strategy="no", logging_steps=10_000, bf16=False, fp16=False,
                     use_cpu=True, seed=0, dataloader_num_workers=0, lr_scheduler_type="constant")
    stamps: list[float] = []
    widths: list[int] = []

    class StepTimer(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    trainer = DPOTrainer(model=policy, args=args, train_dataset=data, processing_class=tok, callbacks=[StepTimer()])
    collate = trainer.data_collator

    def recording(examples):  # check the shapes TRL trains on: 2·pairs sequences of exactly `length` tokens
        batch = collate(examples)
        widths.append(tuple(batch["input_ids"].shape))
        return batch

    trainer.data_collator = recording
    trainer.train()
    assert all(w == (2 * pairs, length) for w in widths), widths
    return float(np.median(np.diff(stamps)))


def run(model_dir: str, pairs: int = 8, length: int = 192, steps: int = 4) -> dict:
    ours = train_step("dpo", model_dir, pairs, length, steps)
    baseline = time_trl(model_dir, pairs, length, steps)
    return {"model": model_dir, "pairs": pairs, "length": length, "ours": ours["seconds_per_step"],
            "baseline": baseline, "ratio": baseline / ours["seconds_per_step"], "unit": "seconds per DPO step",
            "ours_gflops_per_second": ours["gflops_per_second"],
            "note": "median seconds per step after warm-up, one process; TRL 1.12 DPOTrainer, f32, CPU"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--length", type=int, default=192)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    try:
        import trl  # noqa: F401
    except ImportError:
        print("trl is not installed: pip install torch==2.13.0 trl==1.12.0", file=sys.stderr)
        return 2
    r = run(a.model, a.pairs, a.length, a.steps)
    print(f"DPO step, {a.pairs} pairs × {a.length} tokens: ours {r['ours']:.2f}s, TRL {r['baseline']:.2f}s, "
          f"ratio {r['ratio']:.2f}×")
    write_json(a.json, r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
