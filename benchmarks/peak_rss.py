"""Peak resident memory of a command (and its child processes), sampled from /proc while it runs.

    python -m benchmarks.peak_rss --output docs/x.json [--interval 0.2] -- python -m launch.pipeline --config ...

Writes {"command" (this one), "measured" (the command measured), "returncode", "seconds", "peak_gb", "samples": [[t, rss_gb], ...]} (samples thinned to changes of
at least 0.1 GB). Linux only (reads /proc). The memory that decides whether a run is OOM-killed is the resident set
at its peak, which a periodic `ps` misses when the peak lasts a second (XLA:CPU allocates a step's whole temporary
buffer per call and touches it page by page).
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys
import time

from benchmarks.common import write_json


def _children(pid: int) -> list[int]:
    try:
        text = pathlib.Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


def _rss_bytes(pid: int) -> int:
    """Resident bytes of `pid`, 0 once it is gone."""
    try:
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_rss_bytes(pid: int) -> int:
    """Resident bytes of `pid` and all its descendants."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += _rss_bytes(p)
        todo.extend(_children(p))
    return total


def measure(command: list[str], interval: float = 0.2) -> dict:
    """Run `command` to completion, sampling its tree's resident memory every `interval` seconds."""
    start = time.perf_counter()
    proc = subprocess.Popen(command)
    samples, peak, last = [], 0, -1.0
    while proc.poll() is None:
        rss = tree_rss_bytes(proc.pid) / 1e9
        t = time.perf_counter() - start
        peak = max(peak, rss)
        if abs(rss - last) >= 0.1:
            samples.append([round(t, 1), round(rss, 2)])
            last = rss
        time.sleep(interval)
    return {"measured": " ".join(command), "returncode": proc.returncode,
            "seconds": round(time.perf_counter() - start, 1), "peak_gb": round(peak, 2), "samples": samples}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        print("error: give the command to measure after --", file=sys.stderr)
        return 2
    split = argv.index("--")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default=None, help="write the result as JSON")
    p.add_argument("--interval", type=float, default=0.2, help="seconds between samples")
    args = p.parse_args(argv[:split])
    command = argv[split + 1:]
    if not command:
        print("error: give the command to measure after --", file=sys.stderr)
        return 2
    result = measure(command, args.interval)
    print(f"peak resident memory {result['peak_gb']:.2f} GB over {result['seconds']:.0f} s "
          f"(exit {result['returncode']})")
    if args.output:
        write_json(args.output, result)
    return 0 if result["returncode"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
