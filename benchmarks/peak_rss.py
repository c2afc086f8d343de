"""Peak resident memory of a command (and its child processes), sampled from /proc while it runs.

    python -m benchmarks.peak_rss --output docs/x.json [--interval 0.2] -- python -m launch.pipeline --config ...

Writes {"command" (this one), "measured" (the command measured), "returncode", "seconds", "peak_gb", "peak_anon_gb",
"samples": [[t, rss_gb, anon_gb], ...]} (samples thinned to changes of at least 0.1 GB). "anon" is the anonymous
part of the resident set: file pages mapped while a checkpoint is written count in the resident set too, but the
kernel can drop them. Linux only (reads /proc). The memory that decides whether a run is OOM-killed is the resident set
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


def status_bytes(pid: int, keys: tuple[str, ...]) -> dict[str, int]:
    """The kB fields `keys` of /proc/<pid>/status (VmRSS, RssAnon, VmHWM = the peak resident set, ...) in bytes;
    absent ones (or a process that is gone) are left out."""
    fields = {}
    try:
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in keys:
                fields[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return fields


def process_rss_bytes(pid: int) -> tuple[int, int]:
    """(resident bytes, of which anonymous) of `pid`; (0, 0) once it is gone. File-backed resident pages (mapped
    files, e.g. a checkpoint being written) count in the first but the kernel can drop them under pressure."""
    fields = status_bytes(pid, ("VmRSS", "RssAnon"))
    return fields.get("VmRSS", 0), fields.get("RssAnon", 0)


def tree_rss_bytes(pid: int) -> tuple[int, int]:
    """(resident, anonymous) bytes of `pid` and all its descendants."""
    total, anon, todo = 0, 0, [pid]
    while todo:
        p = todo.pop()
        r, a = process_rss_bytes(p)
        total, anon = total + r, anon + a
        todo.extend(_children(p))
    return total, anon


def measure(command: list[str], interval: float = 0.2) -> dict:
    """Run `command` to completion, sampling its tree's resident memory every `interval` seconds."""
    start = time.perf_counter()
    proc = subprocess.Popen(command)
    samples, peak, peak_anon, last = [], 0.0, 0.0, -1.0
    while proc.poll() is None:
        rss, anon = (b / 1e9 for b in tree_rss_bytes(proc.pid))
        t = time.perf_counter() - start
        peak, peak_anon = max(peak, rss), max(peak_anon, anon)
        if abs(rss - last) >= 0.1:
            samples.append([round(t, 1), round(rss, 2), round(anon, 2)])
            last = rss
        time.sleep(interval)
    return {"measured": " ".join(command), "returncode": proc.returncode,
            "seconds": round(time.perf_counter() - start, 1), "peak_gb": round(peak, 2),
            "peak_anon_gb": round(peak_anon, 2), "samples": samples}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    command = argv[split + 1:]
    if not command:
        print("error: give the command to measure after --", file=sys.stderr)
        return 2
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default=None, help="write the result as JSON")
    p.add_argument("--interval", type=float, default=0.2, help="seconds between samples")
    args = p.parse_args(argv[:split])
    try:
        result = measure(command, args.interval)
    except OSError as err:  # not found, not executable
        print(f"error: cannot run {command[0]!r}: {err.strerror or err}", file=sys.stderr)
        return 2
    print(f"peak resident memory {result['peak_gb']:.2f} GB ({result['peak_anon_gb']:.2f} GB anonymous) over "
          f"{result['seconds']:.0f} s "
          f"(exit {result['returncode']})")
    if args.output:
        write_json(args.output, result)
    return 0 if result["returncode"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
