"""Peak host memory of loading a big checkpoint onto a device mesh, against the checkpoint's size.

    python -m benchmarks.load_memory --size 3b --work /tmp/load3b --out docs/load_memory_3b.json

1. Writes a random Llama in bf16 as HF sharded safetensors (`--size 3b`: Llama-3.2-3B's shapes, 3.2 B parameters,
   6.4 GB in ~1 GB files with model.safetensors.index.json), one tensor at a time (skipped when `WORK/hf` has one).
2. In a fresh process with 8 CPU devices: `load_causal_lm(dtype=bf16, mesh=fsdp 8, scan_layers=True)`; the
   process's peak resident set (VmHWM) right after the load, against the checkpoint's bytes; then every device shard
   is compared with the file's tensor; then the parameters are written as an orbax checkpoint.
3. In another fresh process: that orbax checkpoint restored onto a different mesh (fsdp 4 × tensor 2), the same
   measurement and comparison.

On a CPU "device" memory is host memory, so the loaded model itself is resident: the floor is 1 × the checkpoint
plus the runtime (`baseline_gb`: the process after JAX started, before the load). Target: peak ≤ 1.5 × checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]

# name → Llama architecture (tied embeddings, as Llama-3.2-1B/3B)
SIZES = {
    "3b": dict(vocab_size=128256, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
               num_attention_heads=24, num_key_value_heads=8, tie_word_embeddings=True),
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                 num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
}
FILE_BYTES = {"3b": 1 << 30, "tiny": 60_000}


def _status_bytes(key: str) -> int:
    """This process's /proc status field `key` in bytes (VmRSS now, VmHWM its peak). Read here, not through
    benchmarks.peak_rss.status_bytes: the measuring child may run on another checkout's packages (`--before`)."""
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == key:
            return int(value.split()[0]) * 1024
    raise KeyError(key)


def write_checkpoint(size: str, out: pathlib.Path, seed: int = 0) -> int:
    """A random bf16 Llama as sharded safetensors in `out` (kept when present); returns its tensor bytes."""
    import ml_dtypes
    import numpy as np

    from saferlhf_jax.models import ModelConfig, safetensors_io
    from saferlhf_jax.models.api import _hf_layout, _layer_paths, abstract_model, hf_name

    index = out / "model.safetensors.index.json"
    if index.is_file():
        return int(json.loads(index.read_text())["metadata"]["total_size"])
    out.mkdir(parents=True, exist_ok=True)
    cfg = ModelConfig(**SIZES[size], max_position_embeddings=4096, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    rng = np.random.default_rng(seed)

    def tensors():
        for path, x in _hf_layout(abstract_model(cfg, "causal_lm")[1]):
            shape = x.shape[1:] if len(_layer_paths(path, cfg)) > 1 else x.shape
            for lp in _layer_paths(path, cfg):
                name, transpose = hf_name(lp)
                file_shape = shape[::-1] if transpose else shape
                yield name, (rng.standard_normal(file_shape, np.float32) * 0.02).astype(ml_dtypes.bfloat16)

    safetensors_io.save_sharded(tensors(), out, max_file_bytes=FILE_BYTES[size])
    (out / "config.json").write_text(json.dumps(cfg.to_hf_dict("causal_lm"), indent=2))
    return int(json.loads(index.read_text())["metadata"]["total_size"])


def shards_equal_files(params, config, tensors) -> bool:
    """Every addressable shard of every leaf equals the file's tensor (kernels transposed), layer by layer.
    tensors: name → array (lazy memory maps: this runs after the peak was read)."""
    import jax
    import numpy as np

    from saferlhf_jax.models.api import _layer_paths, _path_names, hf_name

    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        layers = _layer_paths(_path_names(path), config)
        for i, lp in enumerate(layers):
            name, transpose = hf_name(lp)
            want = tensors[name]
            want = want.T if transpose else want
            for shard in leaf.addressable_shards:
                got = np.asarray(shard.data)
                idx = shard.index
                if len(layers) > 1:  # stacked (L, ...): this shard's rows of layer i
                    start = idx[0].start or 0
                    if not (start <= i < (idx[0].stop if idx[0].stop is not None else len(layers))):
                        continue
                    got, idx = got[i - start], idx[1:]
                if not np.array_equal(got.view(np.uint16), np.ascontiguousarray(want[idx]).view(np.uint16)):
                    return False
    return True


def child(step: str, work: pathlib.Path, mesh_shape: tuple[int, int, int]) -> dict:
    import jax
    import jax.numpy as jnp

    from saferlhf_jax import checkpoint
    from saferlhf_jax.models import api, safetensors_io
    from saferlhf_jax.parallel import make_mesh

    mesh = make_mesh(*mesh_shape)
    jnp.zeros(1).block_until_ready()  # the runtime up before the baseline
    baseline = _status_bytes("VmRSS")
    hf = work / "hf"
    start = time.perf_counter()
    if step == "load":
        model = api.load_causal_lm(hf, dtype=jnp.bfloat16, mesh=mesh, scan_layers=True)
        params, config = model.params, model.config
    else:
        config = api.ModelConfig.from_pretrained(hf, dtype="bfloat16", param_dtype="bfloat16", scan_layers=True)
        graphdef, shapes, _ = api.abstract_model(config, "causal_lm")
        shardings = api.param_shardings(config, "causal_lm", mesh)
        abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
        params, _ = checkpoint.Checkpointer(work / "orbax", read_only=True).restore(0, abstract)
    jax.block_until_ready(params)
    seconds = time.perf_counter() - start
    peak = _status_bytes("VmHWM")
    equal = shards_equal_files(params, config, safetensors_io.load_dir(hf))
    if step == "load" and not (work / "orbax").exists():
        checkpoint.Checkpointer(work / "orbax").save(0, params, {"source": str(hf)})
    return {"step": step, "mesh": dict(mesh.shape), "seconds": round(seconds, 1), "baseline_gb": baseline / 1e9,
            "peak_gb": peak / 1e9, "shards_equal_file": bool(equal),
            "devices": jax.device_count()}


def run_child(step: str, work: pathlib.Path, mesh_shape: tuple[int, int, int], code: pathlib.Path = REPO) -> dict:
    """One measurement in a fresh process, with the library of `code` (another checkout: the loader before)."""
    env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") +
                                      " --xla_force_host_platform_device_count=8").strip(), JAX_PLATFORMS="cpu",
               PYTHONPATH=str(code))
    cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "--child", step, "--work", str(work),
           "--mesh", ",".join(map(str, mesh_shape))]
    out = subprocess.run(cmd, cwd=code, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="3b")
    p.add_argument("--work", required=True, help="where the checkpoints are written (GBs at --size 3b)")
    p.add_argument("--out", default=None, help="JSON to write")
    p.add_argument("--before", default=None, help="another checkout of the library (e.g. a git worktree of an older "
                   "commit): its loader measured the same way, as `before`")
    p.add_argument("--child", choices=("load", "restore"), default=None, help=argparse.SUPPRESS)
    p.add_argument("--mesh", default="1,8,1", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    work = pathlib.Path(args.work).absolute()
    if args.child:
        print(json.dumps(child(args.child, work, tuple(int(v) for v in args.mesh.split(",")))))
        return 0
    t0 = time.perf_counter()
    ckpt_bytes = write_checkpoint(args.size, work / "hf")
    write_seconds = time.perf_counter() - t0
    files = sorted(f.name for f in (work / "hf").glob("*.safetensors"))
    from saferlhf_jax.models import safetensors_io

    largest_gb = max(info.nbytes for info in safetensors_io.Index(work / "hf").infos.values()) / 1e9
    results = {}
    runs = [("load", (1, 8, 1), REPO), ("restore", (1, 4, 2), REPO)]
    if args.before:
        runs.append(("before", (1, 8, 1), pathlib.Path(args.before).absolute()))
    for step, mesh_shape, code in runs:
        r = run_child("load" if step == "before" else step, work, mesh_shape, code)
        r["largest_tensor_gb"] = largest_gb
        r["peak_over_checkpoint"] = round(r["peak_gb"] * 1e9 / ckpt_bytes, 3)
        r["above_loaded_model_in_largest_tensors"] = round(
            (r["peak_gb"] - r["baseline_gb"] - ckpt_bytes / 1e9) / r["largest_tensor_gb"], 2)
        results[step] = r
        print(f"{step}: peak {r['peak_gb']:.2f} GB = {r['peak_over_checkpoint']:.2f} × the checkpoint "
              f"({ckpt_bytes / 1e9:.2f} GB; runtime baseline {r['baseline_gb']:.2f} GB), shards equal the file: "
              f"{r['shards_equal_file']}, {r['seconds']} s")
    report = {"command": "python -m benchmarks.load_memory " + " ".join(sys.argv[1:] if argv is None else argv),
              "size": args.size, "before_code": args.before, "architecture": SIZES[args.size], "checkpoint_gb": ckpt_bytes / 1e9,
              "files": files, "write_seconds": round(write_seconds, 1), "target_peak_over_checkpoint": 1.5,
              **results}
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if all(r["shards_equal_file"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
