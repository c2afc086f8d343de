"""Our PPO step vs Google Tunix 0.1.7's, back to back on the peer harness's own configuration.

    python -m benchmarks.vs_tunix --tunix_python .venv-tunix/bin/python [--size small] [--rounds 3] [--json out.json]

Tunix runs in its own virtualenv (`pip install google-tunix==0.1.7 grain`) through `../shared/peers/tunix_ppo_tiny.py`
(or --harness): 8 prompts × (32 prompt + 32 generated) tokens, random-init Llama-3 (`tiny` 0.36M, `small` 4.07M
parameters), a rule reward (fraction of 'a' characters), actor + reference + critic, one PPO epoch. Ours: the same
model shape, batch, lengths and reward (`benchmarks.ppo_step --tunix_size`). Each round runs ours then Tunix in
fresh processes; a round's ratio is Tunix's median step / ours, and the reported ratio is the median over rounds
(this machine's timings drift 30–40 % between processes, so single runs mislead).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile

from benchmarks.common import write_json

DEFAULT_HARNESS = pathlib.Path(__file__).resolve().parents[2] / "shared" / "peers" / "tunix_ppo_tiny.py"
_STEADY = re.compile(r"steady median step \(steps>=2\) ([0-9.]+)s")


def ours_seconds(size: str, steps: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "ours.json"
        subprocess.run([sys.executable, "-m", "benchmarks.ppo_step", "--tunix_size", size, "--steps", str(steps),
                        "--json", str(out)], check=True, cwd=pathlib.Path(__file__).resolve().parents[1],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return float(json.loads(out.read_text())["ours"])


def tunix_seconds(python: str, harness: pathlib.Path, size: str, steps: int) -> float:
    env = dict(os.environ, SIZE=size, STEPS=str(steps))
    env.pop("XLA_FLAGS", None)
    done = subprocess.run([python, str(harness), "ppo", "1"], env=env, capture_output=True, text=True,
                          cwd=harness.parent)
    found = _STEADY.search(done.stdout)
    if done.returncode or not found:
        raise RuntimeError(f"the Tunix harness failed (exit {done.returncode}):\n{done.stdout[-2000:]}"
                           f"{done.stderr[-2000:]}")
    return float(found.group(1))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tunix_python", default=os.environ.get("TUNIX_PYTHON"),
                   help="python of a virtualenv with google-tunix==0.1.7 and grain (or $TUNIX_PYTHON)")
    p.add_argument("--harness", type=pathlib.Path, default=DEFAULT_HARNESS)
    p.add_argument("--size", choices=["tiny", "small"], default="small")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if not a.tunix_python:
        print("give --tunix_python (a virtualenv with google-tunix==0.1.7 grain) or set TUNIX_PYTHON", file=sys.stderr)
        return 2
    if not a.harness.is_file():
        print(f"Tunix harness not found: {a.harness} (pass --harness)", file=sys.stderr)
        return 2
    rounds = []
    for i in range(a.rounds):
        ours = ours_seconds(a.size, a.steps)
        tunix = tunix_seconds(a.tunix_python, a.harness, a.size, a.steps)
        rounds.append({"ours": ours, "tunix": tunix, "ratio": tunix / ours})
        print(f"round {i + 1}: ours {ours:.3f}s, Tunix {tunix:.3f}s per PPO step → {tunix / ours:.2f}×", flush=True)
    result = {"size": a.size, "rounds": rounds, "ours": statistics.median(r["ours"] for r in rounds),
              "baseline": statistics.median(r["tunix"] for r in rounds),
              "ratio": statistics.median(r["ratio"] for r in rounds),
              "unit": "seconds per PPO step (median over steps, then over rounds)"}
    print(f"PPO step, Tunix '{a.size}' configuration: ours {result['ours']:.3f}s, Tunix {result['baseline']:.3f}s, "
          f"median ratio {result['ratio']:.2f}× over {a.rounds} rounds")
    write_json(a.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
