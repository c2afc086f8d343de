"""Minimal safetensors reader/writer on numpy memmaps (bf16 via ml_dtypes). Never unpickles anything.

Reading is lazy: tensors are memory-mapped, so a sharded load only touches the bytes each device needs.
"""

from __future__ import annotations

import json
import pathlib
import struct

import ml_dtypes
import numpy as np

from saferlhf_jax.errors import ModelError

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


def read_header(path: pathlib.Path) -> tuple[dict, int]:
    with open(path, "rb") as f:
        raw_len = f.read(8)
        if len(raw_len) != 8:
            raise ModelError(f"{path}: not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", raw_len)
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ModelError(f"{path}: corrupt safetensors header ({err})") from None
    return header, 8 + n


def load_file(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """name → read-only numpy memmap view."""
    path = pathlib.Path(path)
    header, offset = read_header(path)
    header.pop("__metadata__", None)
    needed = offset + max((int(info["data_offsets"][1]) for info in header.values()), default=0)
    size = path.stat().st_size
    if size < needed:
        raise ModelError(f"{path} is truncated: {size} bytes on disk, its header needs {needed} (an interrupted "
                         "download or copy?)")
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for name, info in header.items():
        if info["dtype"] not in _DTYPES:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        start, stop = info["data_offsets"]
        dtype = np.dtype(_DTYPES[info["dtype"]])
        out[name] = mm[offset + start: offset + stop].view(dtype).reshape(info["shape"])
    return out


def load_dir(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """All tensors of a HF model directory (single file or sharded with model.safetensors.index.json)."""
    path = pathlib.Path(path)
    tensors: dict[str, np.ndarray] = {}
    for name in _weight_files(path):
        tensors.update(load_file(path / name))
    return tensors


def tensor_names(path: str | pathlib.Path) -> set[str]:
    """The tensor names of a HF model directory, read from the headers only (nothing is loaded)."""
    path = pathlib.Path(path)
    return {k for name in _weight_files(path) for k in read_header(path / name)[0] if k != "__metadata__"}


def _weight_files(path: pathlib.Path) -> list[str]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = sorted(p.name for p in path.glob("*.safetensors"))
    if not files:
        bins = list(path.glob("*.bin")) + list(path.glob("*.pt"))
        hint = " (found pickle weights; convert them to safetensors first — they are never unpickled)" if bins else ""
        raise FileNotFoundError(f"no *.safetensors weights in {path}{hint}")
    return files


def save_file(tensors: dict[str, np.ndarray], path: str | pathlib.Path, metadata: dict | None = None) -> None:
    """Write tensors (numpy arrays, bf16 allowed) as one safetensors file, atomically (tmp + rename)."""
    path = pathlib.Path(path)
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    arrays = []
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        if arr.dtype not in _NAMES:
            raise ValueError(f"cannot save tensor {name} of dtype {arr.dtype}")
        header[name] = {"dtype": _NAMES[arr.dtype], "shape": list(arr.shape), "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
        arrays.append(arr)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for arr in arrays:
            f.write(arr.tobytes())
    tmp.replace(path)
