"""Raw dataset registry (spec §4.4) and the `NAME[:PROPORTION[:PATH]]` mixing syntax (spec §4.3).

Where a name's data comes from is explicit, never a silent fallback:
  1. PATH, when given: a local JSONL/JSON/CSV/parquet file or directory, or a prepared TFDS directory;
  2. otherwise the data *source*: `hub` (the default) loads the pinned Hugging Face release through
     `datasets.load_dataset` and fails with one line (how to give a local path) when it cannot; `embedded` takes the
     real sample shipped in `saferlhf_jax/assets/data/` (see the SOURCE.md files there) — what the `tiny` presets
     use. The source comes from `config.data.source`, or the environment variable SAFERLHF_DATA_SOURCE, which wins.
"""

from __future__ import annotations

import dataclasses
import fractions
import logging
import os
import pathlib
from typing import Callable

import numpy as np

from saferlhf_jax.data import raw
from saferlhf_jax.data.raw import RawSample
from saferlhf_jax.errors import DataError

log = logging.getLogger(__name__)

ASSETS = pathlib.Path(__file__).resolve().parents[1] / "assets" / "data"
MIX_SEED = 42
# PKU-Alignment/PKU-SafeRLHF main at the time of the shipped sample (data files last changed Sep 2024).
PKU_SAFERLHF_REVISION = os.environ.get("SAFERLHF_PKU_REVISION", "9421ffa")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    name: str
    hub_id: str
    split: str
    parser: Callable[[dict, str], RawSample]
    hub_config: str | None = None
    data_dir: str | None = None
    revision: str | None = None
    local: tuple[str, ...] = ()           # embedded files under assets/data
    local_filter: tuple[str, str] | None = None  # (field, value) rows of the embedded file to keep
    aliases: tuple[str, ...] = ()


REGISTRY: dict[str, DatasetSpec] = {}
ALIASES: dict[str, str] = {}


def register(spec: DatasetSpec) -> None:
    for key in (spec.name, *spec.aliases):
        if key.lower() in ALIASES:
            raise ValueError(f"dataset name {key!r} registered twice")
        ALIASES[key.lower()] = spec.name
    REGISTRY[spec.name] = spec


def _register_all() -> None:
    pku_local = {"train": ("pku_saferlhf/train_first500.jsonl",), "test": ("pku_saferlhf/test_alpaca7b_first16.jsonl",)}
    for split in ("train", "test"):
        register(DatasetSpec(f"PKU-SafeRLHF/{split}", "PKU-Alignment/PKU-SafeRLHF", split, raw.parse_pku,
                             hub_config="default", revision=PKU_SAFERLHF_REVISION, local=pku_local[split],
                             aliases=(f"PKU-Alignment/PKU-SafeRLHF/{split}",)))
        for sub, source in (("alpaca-7b", "Alpaca-7B"), ("alpaca2-7b", "Alpaca2-7B"), ("alpaca3-8b", "Alpaca3-8B")):
            register(DatasetSpec(f"PKU-SafeRLHF/{sub}/{split}", "PKU-Alignment/PKU-SafeRLHF", split, raw.parse_pku,
                                 hub_config=sub, revision=PKU_SAFERLHF_REVISION, local=pku_local[split],
                                 local_filter=("response_0_source", source),
                                 aliases=(f"PKU-Alignment/PKU-SafeRLHF/{sub}/{split}",)))
        register(DatasetSpec(f"PKU-SafeRLHF-30K/{split}", "PKU-Alignment/PKU-SafeRLHF-30K", split, raw.parse_pku,
                             aliases=(f"PKU-Alignment/PKU-SafeRLHF-30K/{split}",)))
        register(DatasetSpec(f"PKU-SafeRLHF-single-dimension/{split}", "PKU-Alignment/PKU-SafeRLHF-single-dimension",
                             split, raw.parse_pku_single_dimension,
                             aliases=(f"PKU-Alignment/PKU-SafeRLHF-single-dimension/{split}",)))
        register(DatasetSpec(f"PKU-SafeRLHF-QA/{split}", "PKU-Alignment/PKU-SafeRLHF-QA", split, raw.parse_pku_qa,
                             aliases=(f"PKU-Alignment/PKU-SafeRLHF-QA/{split}",)))
    register(DatasetSpec("PKU-SafeRLHF-10K/train", "PKU-Alignment/PKU-SafeRLHF-10K", "train", raw.parse_pku,
                         aliases=("PKU-Alignment/PKU-SafeRLHF-10K/train",)))
    # a policy's own answers paired by `launch.self_pairs` (PKU-SafeRLHF rows, local files only): the harmful and
    # benign prompts' pairs under names of their own, so that one mix can weigh them apart (names are unique, §4.3)
    for kind in ("all", "harmful", "benign"):
        register(DatasetSpec(f"self-pairs/{kind}", "", "train", raw.parse_pku))
    register(DatasetSpec("PKU-SafeRLHF-prompt", "PKU-Alignment/PKU-SafeRLHF-prompt", "train", raw.parse_prompt_only,
                         aliases=("PKU-Alignment/PKU-SafeRLHF-prompt",)))
    register(DatasetSpec("alpaca", "tatsu-lab/alpaca", "train", raw.parse_alpaca,
                         local=("alpaca/alpaca_sample2000.json",), aliases=("stanford-alpaca",)))
    hh = "PKU-Alignment/processed-hh-rlhf"
    hh_files = {"harmless": "hh_rlhf/harmless-base_train_first500.jsonl",
                "helpful": "hh_rlhf/helpful-base_train_first500.jsonl"}
    register(DatasetSpec("hh-rlhf-dialogue", hh, "train", raw.parse_hh_dialogue,
                         local=(hh_files["harmless"], hh_files["helpful"]), aliases=("hh-dialogue",)))
    for split in ("train", "test"):
        register(DatasetSpec(f"hh-rlhf-preference/{split}", hh, split, raw.parse_hh_preference,
                             local=(hh_files["harmless"], hh_files["helpful"]) if split == "train" else (),
                             aliases=(f"hh-preference/{split}",)))
    for kind in ("harmless", "helpful"):
        register(DatasetSpec(f"hh-rlhf-{kind}-dialogue", hh, "train", raw.parse_hh_dialogue, data_dir=f"{kind}-base",
                             local=(hh_files[kind],),
                             aliases=(f"hh-rlhf-dialogue/{kind}-base", f"hh-{kind}-dialogue",
                                      f"hh-dialogue/{kind}-base")))
        for split in ("train", "test"):
            register(DatasetSpec(
                f"hh-rlhf-{kind}-preference/{split}", hh, split, raw.parse_hh_preference, data_dir=f"{kind}-base",
                local=(hh_files[kind],) if split == "train" else (),
                aliases=(f"hh-rlhf-preference/{kind}-base/{split}", f"hh-{kind}-preference/{split}",
                         f"hh-preference/{kind}-base/{split}")))
    for split in ("330k_train", "330k_test", "30k_train", "30k_test"):
        register(DatasetSpec(f"BeaverTails/{split}", "PKU-Alignment/BeaverTails", split, raw.parse_beavertails,
                             local=("beavertails/beavertails_30k_train_unsafe_sample140.csv",)
                             if split == "30k_train" else (),
                             aliases=(f"PKU-Alignment/BeaverTails/{split}",)))
    register(DatasetSpec("BeaverTails-Evaluation", "PKU-Alignment/BeaverTails-Evaluation", "test",
                         raw.parse_prompt_only, local=("beavertails/beavertails_evaluation_700.csv",),
                         aliases=("PKU-Alignment/BeaverTails-Evaluation",)))


_register_all()


def resolve_name(name: str) -> DatasetSpec:
    key = name.strip().lower()
    if key in ALIASES:
        return REGISTRY[ALIASES[key]]
    bases = sorted({n.split("/")[0] for n in REGISTRY if n.lower().startswith(key + "/")})
    if bases:
        choices = sorted(n for n in REGISTRY if n.lower().startswith(key + "/"))
        raise DataError(f"dataset {name!r} needs a split or subset: one of {choices}")
    raise DataError(f"unknown dataset {name!r}; known: {sorted(REGISTRY)}")


# ---------------------------------------------------------------------------------------------------- loading


SOURCES = ("hub", "embedded")


def data_source(configured: str | None = None) -> str:
    """The data source in effect: SAFERLHF_DATA_SOURCE if set, else `configured`, else 'hub'."""
    value = (os.environ.get("SAFERLHF_DATA_SOURCE") or configured or "hub").strip().lower()
    if value not in SOURCES:
        raise DataError(f"data source must be one of {SOURCES}, got {value!r} (config data.source or "
                        "SAFERLHF_DATA_SOURCE)")
    return value


def _hub_unavailable(spec: DatasetSpec, reason: str) -> DataError:
    sample = " or the 500-row embedded sample with --config.data.source=embedded" if spec.local else ""
    return DataError(f"{spec.name}: cannot load {spec.hub_id} from the Hugging Face hub ({reason}); give a local "
                     f"copy as {spec.name}:1.0:/path/to/files (JSONL/JSON/CSV/parquet or a prepared TFDS "
                     f"directory){sample}")


def _load_from_hub(spec: DatasetSpec) -> list[tuple[str, dict]]:
    if not spec.hub_id:
        raise DataError(f"{spec.name} is read from local files only: give its path as {spec.name}:1.0:/path/to/file")
    if os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
        raise _hub_unavailable(spec, "the hub is switched off: HF_DATASETS_OFFLINE / HF_HUB_OFFLINE")
    try:
        import datasets
    except ImportError:
        raise _hub_unavailable(spec, "the `datasets` package is not installed: pip install datasets") from None
    try:
        data = datasets.load_dataset(spec.hub_id, name=spec.hub_config, data_dir=spec.data_dir, split=spec.split,
                                     revision=spec.revision)
    except Exception as err:  # noqa: BLE001 — network, authentication or hub errors: one line, never a fallback
        raise _hub_unavailable(spec, str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__) \
            from None
    return [(f"{spec.hub_id}[{spec.split}]:row {i}", row) for i, row in enumerate(data)]


def _load_tfds_dir(path: pathlib.Path, split: str) -> list[tuple[str, dict]]:
    # local: tfds_pku imports tensorflow_datasets (seconds to load), which only a prepared TFDS directory needs
    from saferlhf_jax.data.tfds_pku import read_prepared

    return read_prepared(path, split)


def load_raw(name: str, path: str | None = None, source: str | None = None) -> list[RawSample]:
    """All raw samples of one registry name: PATH when given, else the data source (module doc)."""
    spec = resolve_name(name)
    if path:
        p = pathlib.Path(path).expanduser()
        if p.is_dir() and (p / "dataset_info.json").is_file():
            rows = _load_tfds_dir(p, spec.split)
        else:
            rows = raw.read_rows(p, split=spec.split)
    elif data_source(source) == "embedded":
        rows = _embedded_rows(spec)
    else:
        rows = _load_from_hub(spec)
    samples = [spec.parser(row, where) for where, row in rows]
    if not samples:
        raise DataError(f"{spec.name}: no rows found" + (f" in {path}" if path else ""))
    return samples


def _embedded_rows(spec: DatasetSpec) -> list[tuple[str, dict]]:
    if not spec.local:
        raise DataError(f"{spec.name}: no embedded copy ships with saferlhf-jax (data source 'embedded'); "
                        f"give a local path as {spec.name}:1.0:/path/to/files")
    rows = []
    for rel in spec.local:
        rows.extend(raw.read_rows(ASSETS / rel))
    if spec.local_filter:
        field, value = spec.local_filter
        rows = [(w, r) for w, r in rows if r.get(field) == value]
        if not rows:
            raise DataError(f"{spec.name}: the embedded sample has no rows with {field}={value!r}; "
                            f"give a local path as {spec.name}:1.0:/path/to/files")
    return rows


# ---------------------------------------------------------------------------------------------------- mixing


@dataclasses.dataclass(frozen=True)
class MixEntry:
    name: str
    proportion: float | None  # None with exact_count
    exact_count: int | None
    path: str | None


def parse_mix_entry(text: str) -> MixEntry:
    """`NAME[:PROPORTION[:PATH]]`; PROPORTION is a float, `a/b`, empty (1.0) or `N/-1` (exactly N samples)."""
    parts = text.strip().split(":", 2)
    name = parts[0].strip()
    if not name:
        raise DataError(f"dataset entry {text!r} has no name")
    prop_text = parts[1].strip() if len(parts) > 1 else ""
    path = os.path.expanduser(parts[2]) if len(parts) > 2 and parts[2] else None
    if not prop_text:
        return MixEntry(name, 1.0, None, path)
    try:
        if "/" in prop_text:
            num, den = prop_text.split("/", 1)
            if den.strip() == "-1":
                count = int(num)
                if count < 0:
                    raise ValueError
                return MixEntry(name, None, count, path)
            value = float(fractions.Fraction(int(num), int(den)))
        else:
            value = float(prop_text)
    except (ValueError, ZeroDivisionError):
        raise DataError(f"dataset entry {text!r}: proportion {prop_text!r} must be a float, a/b or N/-1") from None
    if value < 0:
        raise DataError(f"dataset entry {text!r}: proportion must not be negative")
    return MixEntry(name, value, None, path)


def parse_mix(entries) -> list[MixEntry]:
    """A list of entries, or one comma-separated string of them; names must be unique."""
    if isinstance(entries, str):
        entries = [e for e in entries.split(",") if e.strip()]
    parsed = [parse_mix_entry(e) for e in entries]
    names = [resolve_name(e.name).name for e in parsed]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataError(f"dataset names must be unique, repeated: {dupes}")
    return parsed


def sample_indices(sizes: list[int], entries: list[MixEntry], seed: int = MIX_SEED) -> list[np.ndarray]:
    """Per dataset the indices to take (spec §4.3): whole passes in order, then a seeded draw without replacement."""
    children = np.random.SeedSequence(seed).spawn(len(sizes))
    out = []
    for n, entry, child in zip(sizes, entries, children):
        k = entry.exact_count if entry.exact_count is not None else round(n * entry.proportion)
        chunks = []
        while k >= n and n > 0:
            chunks.append(np.arange(n))
            k -= n
        if k > 0:
            chunks.append(np.random.default_rng(child).choice(n, k, replace=False))
        out.append(np.concatenate(chunks).astype(np.int64) if chunks else np.zeros((0,), np.int64))
    return out


def load_mix(entries, source: str | None = None) -> list[RawSample]:
    """Load and mix datasets in command-line order; a proportion of 0 drops a dataset. `source`: see module doc."""
    parsed = [e for e in parse_mix(entries) if e.exact_count != 0 and e.proportion != 0]
    if not parsed:
        raise DataError("no datasets selected (every proportion is 0 or the list is empty)")
    loaded = [load_raw(e.name, e.path, source) for e in parsed]
    picks = sample_indices([len(d) for d in loaded], parsed)
    mixed = []
    for data, idx, entry in zip(loaded, picks, parsed):
        where = entry.path or ("embedded sample" if data_source(source) == "embedded" else "hub")
        log.info("dataset %s (%s): %d of %d rows", entry.name, where, len(idx), len(data))
        mixed.extend(data[i] for i in idx)
    return mixed


def split_holdout(n: int, ratio: float, seed: int = MIX_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices: shuffle with default_rng(seed), test = the last round(n·ratio); 0 keeps all in train."""
    if not 0.0 <= ratio < 1.0:
        raise DataError(f"eval_split_ratio must lie in [0, 1), got {ratio}")
    order = np.random.default_rng(seed).permutation(n)
    n_test = round(n * ratio)
    if n_test == 0:
        return np.arange(n), np.zeros((0,), np.int64)
    return order[:-n_test], order[-n_test:]
