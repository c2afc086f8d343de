"""Minimal safetensors reader/writer (bf16 via ml_dtypes). Never unpickles anything.

`load_file` / `load_dir` memory-map whole files (tests, small models). Model loading reads through `Index`: headers
only up front, then one tensor at a time into a buffer that is freed after use, so a load's host memory is bounded by
a few tensors, not the checkpoint (a memory map would keep every page it touched resident until it is closed).
"""

from __future__ import annotations

import dataclasses
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


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    file: pathlib.Path
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int        # absolute byte offset of the data in `file`
    nbytes: int


def _file_infos(path: pathlib.Path) -> dict[str, TensorInfo]:
    """name → where one safetensors file holds it, from its header (a truncated file or an unknown dtype refused)."""
    header, base = read_header(path)
    header.pop("__metadata__", None)
    needed = base + max((int(info["data_offsets"][1]) for info in header.values()), default=0)
    size = path.stat().st_size
    if size < needed:
        raise ModelError(f"{path} is truncated: {size} bytes on disk, its header needs {needed} (an interrupted "
                         "download or copy?)")
    infos = {}
    for name, info in header.items():
        if info["dtype"] not in _DTYPES:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        start, stop = (int(v) for v in info["data_offsets"])
        infos[name] = TensorInfo(path, np.dtype(_DTYPES[info["dtype"]]), tuple(info["shape"]), base + start,
                                 stop - start)
    return infos


def load_file(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """name → read-only numpy memmap view."""
    path = pathlib.Path(path)
    infos = _file_infos(path)
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    return {name: mm[i.offset: i.offset + i.nbytes].view(i.dtype).reshape(i.shape) for name, i in infos.items()}


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


class Index:
    """The tensors of a HF model directory (single file or sharded with model.safetensors.index.json), from the
    headers only; `read(name)` reads one tensor from disk into a fresh array (freed when the caller drops it)."""

    def __init__(self, path: str | pathlib.Path):
        path = pathlib.Path(path)
        self.infos: dict[str, TensorInfo] = {}
        for fname in _weight_files(path):
            self.infos.update(_file_infos(path / fname))

    def __contains__(self, name: str) -> bool:
        return name in self.infos

    def __iter__(self):
        return iter(self.infos)

    def read(self, name: str) -> np.ndarray:
        info = self.infos[name]
        flat = np.fromfile(info.file, dtype=np.uint8, count=info.nbytes, offset=info.offset)
        return flat.view(info.dtype).reshape(info.shape)


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


def save_sharded(items, directory: str | pathlib.Path, max_file_bytes: int = 2 << 30) -> list[str]:
    """Write (name, array) pairs, consumed one at a time, as HF-style sharded safetensors files plus
    model.safetensors.index.json; at most one file's tensors (≤ max_file_bytes, or one larger tensor) are held at
    once. Returns the file names."""
    directory = pathlib.Path(directory)
    groups: list[list[str]] = []
    weight_map: dict[str, str] = {}
    pending: dict[str, np.ndarray] = {}
    pending_bytes = 0

    def flush():
        nonlocal pending_bytes
        pending_bytes = 0
        if pending:
            tmp_name = f"part-{len(groups):05d}.safetensors"
            save_file(pending, directory / tmp_name)
            groups.append(sorted(pending))
            pending.clear()

    total = 0
    for name, array in items:
        total += array.nbytes
        if pending and pending_bytes + array.nbytes > max_file_bytes:
            flush()
        pending[name] = array
        pending_bytes += array.nbytes
    flush()
    files = []
    for i, names in enumerate(groups):
        final = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        (directory / f"part-{i:05d}.safetensors").replace(directory / final)
        weight_map.update({n: final for n in names})
        files.append(final)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return files
