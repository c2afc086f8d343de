"""Convert a llama2.c checkpoint + tokenizer into an HF-format directory.

    python -m launch.convert_llama2c --checkpoint stories260K.bin --tokenizer tok512.bin --output DIR
"""

from __future__ import annotations

import argparse
import sys

from saferlhf_jax.models import llama2c


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="llama2.c .bin checkpoint (legacy v0 export)")
    parser.add_argument("--tokenizer", required=True, help="llama2.c tokenizer .bin (e.g. tok512.bin)")
    parser.add_argument("--output", required=True, help="output directory (created if missing)")
    parser.add_argument("--overwrite", action="store_true", help="write into a directory that already holds files")
    args = parser.parse_args(argv)
    from launch.common import refuse_to_overwrite

    reason = refuse_to_overwrite(args.output, args.overwrite)
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return 2
    try:
        out = llama2c.convert(args.checkpoint, args.tokenizer, args.output)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
