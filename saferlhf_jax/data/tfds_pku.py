"""TensorFlow-Datasets builder `pku_safe_rlhf` over local files (manual dir), array_record output, read with
`tfds.data_source` — no TensorFlow needed.

Manual dir: either the hub layout `data/{Alpaca-7B,Alpaca2-7B,Alpaca3-8B}/{train,test}.jsonl`, or flat files whose
names contain `train` / `test` (then the sub-configs keep rows by `response_0_source`).

    builder = PkuSafeRlhf(config="default", data_dir=DATA_DIR, file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=MANUAL_DIR))
    rows = tfds.data_source("pku_safe_rlhf/default", data_dir=DATA_DIR, split="train")
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from saferlhf_jax.data.raw import PKU_HARM_CATEGORIES, DataError

SOURCES = {"alpaca-7b": "Alpaca-7B", "alpaca2-7b": "Alpaca2-7B", "alpaca3-8b": "Alpaca3-8B"}
TEXT_FIELDS = ("prompt", "response_0", "response_1", "prompt_source", "response_0_source", "response_1_source",
               "response_0_sha256", "response_1_sha256")
BOOL_FIELDS = ("is_response_0_safe", "is_response_1_safe")
INT_FIELDS = ("response_0_severity_level", "response_1_severity_level", "better_response_id", "safer_response_id")
CATEGORY_FIELDS = ("response_0_harm_category", "response_1_harm_category")
FIELDS = TEXT_FIELDS + BOOL_FIELDS + INT_FIELDS + CATEGORY_FIELDS  # the 16 fields


def _category_key(name: str) -> str:
    return name.lower().replace(" ", "_").replace("-", "_")


_KEY_TO_NAME = {_category_key(n): n for n in PKU_HARM_CATEGORIES}


class PkuSafeRlhf(tfds.core.GeneratorBasedBuilder):
    """PKU-SafeRLHF preference pairs with safety meta-labels (19 harm categories, severity 0..3)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "PKU-SafeRLHF v1 (ACL 2025) schema, 16 fields."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = ("Place the PKU-SafeRLHF jsonl files (hub layout data/<Source>/<split>.jsonl, or "
                                    "files named *train*.jsonl / *test*.jsonl) in the manual dir.")
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=n, description=d) for n, d in (
        ("default", "all three response generators"), ("alpaca-7b", "Alpaca-7B responses"),
        ("alpaca2-7b", "Alpaca2-7B responses"), ("alpaca3-8b", "Alpaca3-8B responses"))]

    def _info(self) -> tfds.core.DatasetInfo:
        categories = tfds.features.FeaturesDict({_category_key(n): np.bool_ for n in PKU_HARM_CATEGORIES})
        features = {f: tfds.features.Text() for f in TEXT_FIELDS}
        features.update({f: np.bool_ for f in BOOL_FIELDS})
        features.update({f: np.int32 for f in INT_FIELDS})
        features.update({f: categories for f in CATEGORY_FIELDS})
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features),
                                     homepage="https://huggingface.co/datasets/PKU-Alignment/PKU-SafeRLHF",
                                     license="CC BY-NC 4.0")

    def _split_generators(self, dl_manager):
        root = pathlib.Path(dl_manager.manual_dir)
        return {split: self._generate_examples(self._files(root, split)) for split in ("train", "test")
                if self._files(root, split)}

    def _files(self, root: pathlib.Path, split: str) -> list[pathlib.Path]:
        source = SOURCES.get(self.builder_config.name)
        hub = sorted(root.glob(f"data/*/{split}.jsonl"))
        if hub:
            return [p for p in hub if source is None or p.parent.name == source]
        return sorted(p for p in root.glob("*.jsonl") if split in p.name)

    def _generate_examples(self, files):
        source = SOURCES.get(self.builder_config.name)
        for path in files:
            with open(path, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as err:
                        raise DataError(f"{path}:{lineno}: malformed JSON ({err.msg})") from None
                    if source is not None and row.get("response_0_source") != source:
                        continue
                    missing = [k for k in FIELDS if k not in row]
                    if missing:
                        raise DataError(f"{path}:{lineno}: missing fields {missing}")
                    example = {k: row[k] for k in FIELDS}
                    for k in CATEGORY_FIELDS:
                        example[k] = {_category_key(n): bool(row[k][n]) for n in PKU_HARM_CATEGORIES}
                    yield f"{path.parent.name}/{path.name}:{lineno}", example


def prepare(manual_dir, data_dir, config: str = "default") -> tfds.core.DatasetBuilder:
    """Build the array_record dataset from local files; returns the builder (idempotent)."""
    builder = PkuSafeRlhf(config=config, data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
    return builder


def _to_row(example: dict) -> dict:
    row = {}
    for k in TEXT_FIELDS:
        v = example[k]
        row[k] = v.decode("utf-8") if isinstance(v, bytes) else str(v)
    for k in BOOL_FIELDS:
        row[k] = bool(example[k])
    for k in INT_FIELDS:
        row[k] = int(example[k])
    for k in CATEGORY_FIELDS:
        row[k] = {_KEY_TO_NAME[key]: bool(v) for key, v in example[k].items()}
        row[k] = {n: row[k][n] for n in PKU_HARM_CATEGORIES}
    return row


def read_prepared(path, split: str) -> list[tuple[str, dict]]:
    """Rows of a prepared TFDS directory (the one holding dataset_info.json) via a random-access data source."""
    builder = tfds.builder_from_directory(str(path))
    if split not in builder.info.splits:
        raise DataError(f"{path}: no split {split!r} (has {sorted(builder.info.splits)})")
    source = builder.as_data_source(split=split)
    return [(f"{path}[{split}]:{i}", _to_row(source[i])) for i in range(len(source))]
