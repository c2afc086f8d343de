"""Are two job directories the same run? Every number of every results.json / summary.json, every metrics.jsonl row
and every exported weight file of run A against run B, bitwise — timings, paths and fingerprints aside.

A refactor that must not change behaviour records the main job and the CI testbed before, re-runs them after on the
same machine, and this says "identical" or names the first differences:

    python -m benchmarks.compare_runs BEFORE_DIR AFTER_DIR [--out docs/refactor_bitwise.json]

Exit 0 when identical, 1 otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import pathlib
import sys

# keys whose values are wall-clock times, file locations or file digests, never results
_IGNORED_KEYS = {"seconds", "timings", "stage_seconds_total", "tokens_per_sec", "output_dir", "export", "inputs",
                 "wall_seconds_last_invocation", "stage_seconds"}
_IGNORED_PREFIXES = ("time/",)


def _ignored(key: str) -> bool:
    return key in _IGNORED_KEYS or key.startswith(_IGNORED_PREFIXES)


def _flatten(node, prefix: str = ""):
    """(dotted path, leaf) of a JSON value, skipping ignored keys."""
    if isinstance(node, dict):
        for k, v in node.items():
            if not _ignored(str(k)):
                yield from _flatten(v, f"{prefix}{k}.")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _flatten(v, f"{prefix}{i}.")
    else:
        yield prefix.rstrip("."), node


def _json_leaves(path: pathlib.Path, root: pathlib.Path) -> dict:
    text = path.read_text().replace(str(root), "<run>")
    if path.suffix == ".jsonl":
        return {f"row{i}.{k}": v for i, line in enumerate(l for l in text.splitlines() if l.strip())
                for k, v in _flatten(json.loads(line))}
    return dict(_flatten(json.loads(text)))


def _same(x, y) -> bool:
    """Equal values; NaN equals NaN (a win rate over no pairs is NaN in both runs)."""
    return x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y))


def _digest(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compared_files(root: pathlib.Path) -> list[str]:
    """The files that carry a run's results, relative to `root`."""
    names = ("results.json", "summary.json", "metrics.jsonl", "heldout_answers.jsonl")
    found = [p for p in root.rglob("*") if p.is_file() and (p.name in names or (
        p.suffix == ".safetensors" and "export" in p.parts))]
    return sorted(str(p.relative_to(root)) for p in found if "checkpoints" not in p.parts)


def compare(a: pathlib.Path, b: pathlib.Path) -> dict:
    files_a, files_b = compared_files(a), compared_files(b)
    report: dict = {"only_in_a": sorted(set(files_a) - set(files_b)), "only_in_b": sorted(set(files_b) - set(files_a)),
                    "files_compared": 0, "values_compared": 0, "differences": []}
    for rel in sorted(set(files_a) & set(files_b)):
        report["files_compared"] += 1
        if rel.endswith(".safetensors"):
            if _digest(a / rel) != _digest(b / rel):
                report["differences"].append({"file": rel, "what": "weights differ"})
            continue
        la, lb = _json_leaves(a / rel, a), _json_leaves(b / rel, b)
        report["values_compared"] += len(la)
        for key in sorted(set(la) | set(lb)):
            if not _same(la.get(key, "<absent>"), lb.get(key, "<absent>")):
                report["differences"].append({"file": rel, "key": key, "a": la.get(key, "<absent>"),
                                              "b": lb.get(key, "<absent>")})
    report["identical"] = not (report["differences"] or report["only_in_a"] or report["only_in_b"])
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=pathlib.Path)
    parser.add_argument("b", type=pathlib.Path)
    parser.add_argument("--out", type=pathlib.Path, help="write the comparison as JSON")
    args = parser.parse_args(argv)
    report = compare(args.a, args.b)
    if args.out:
        args.out.write_text(json.dumps({"a": str(args.a), "b": str(args.b), **report}, indent=1) + "\n")
    print(f"{report['files_compared']} files, {report['values_compared']} values: "
          + ("identical" if report["identical"] else f"{len(report['differences'])} differences, "
             f"only in A: {report['only_in_a']}, only in B: {report['only_in_b']}"))
    for d in report["differences"][:20]:
        print("  ", d)
    return 0 if report["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
