"""Raw samples and row parsers: file rows (JSONL / JSON / CSV / parquet) → `RawSample` (spec §4.1, §4.4).

Every malformed row raises `DataError` naming the file and line, before any training starts.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import pathlib
import re
from typing import Any, Callable, Iterable, Sequence

from saferlhf_jax.errors import DataError

PKU_HARM_CATEGORIES = (
    "Endangering National Security", "Insulting Behavior", "Discriminatory Behavior", "Endangering Public Health",
    "Copyright Issues", "Violence", "Drugs", "Privacy Violation", "Economic Crime", "Mental Manipulation",
    "Human Trafficking", "Physical Harm", "Sexual Content", "Cybercrime", "Disrupting Public Order",
    "Environmental Damage", "Psychological Harm", "White-Collar Crime", "Animal Abuse",
)
BEAVERTAILS_CATEGORIES = (
    "animal_abuse", "child_abuse", "controversial_topics,politics", "discrimination,stereotype,injustice",
    "drug_abuse,weapons,banned_substance", "financial_crime,property_crime,theft", "hate_speech,offensive_language",
    "misinformation_regarding_ethics,laws_and_safety", "non_violent_unethical_behavior", "privacy_violation",
    "self_harm", "sexually_explicit,adult_content", "terrorism,organized_crime",
    "violence,aiding_and_abetting,incitement",
)
SEVERITY_NAMES = ("safe", "minor", "moderate", "severe")


@dataclasses.dataclass
class RawSample:
    """The fields the training code reads (reference RawSample), plus moderation labels."""

    input: str | list[str] | None = None
    answer: str | None = None
    other_answer: str | None = None
    better: bool | None = None
    safer: bool | None = None
    is_safe: bool | None = None
    is_other_safe: bool | None = None
    dialogue: list[str] | None = None
    # moderation labels (PKU 19-category dicts / BeaverTails 14-category dicts, severity 0..3)
    category: dict[str, bool] | None = None
    other_category: dict[str, bool] | None = None
    severity: int | None = None
    other_severity: int | None = None
    where: str = ""  # "file:line" for error messages


# ---------------------------------------------------------------------------------------------------- file readers


def _decode(raw: bytes, path: pathlib.Path, first_line: int = 1) -> str:
    """UTF-8 text of `raw`, or a DataError naming the file, line and column of the first bad byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = first_line + raw[:err.start].count(b"\n")
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[err.start]:02x} at column {column}); "
                        "re-save the file as UTF-8") from None


def _read_jsonl(path: pathlib.Path) -> Iterable[tuple[str, Any]]:
    with open(path, "rb") as f:
        for lineno, raw_line in enumerate(f, 1):
            line = _decode(raw_line, path, lineno)
            if not line.strip():
                continue
            try:
                yield f"{path}:{lineno}", json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{lineno}: malformed JSON ({err.msg} at column {err.colno})") from None


def _read_json(path: pathlib.Path) -> Iterable[tuple[str, Any]]:
    text = _decode(path.read_bytes(), path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # actually JSON lines
            yield from _read_jsonl(path)
            return
        raise DataError(f"{path}:{err.lineno}: malformed JSON ({err.msg} at column {err.colno})") from None
    if isinstance(data, dict):
        for key in ("data", "rows", "train", "test"):
            if isinstance(data.get(key), list):
                data = data[key]
                break
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of rows, got {type(data).__name__}")
    for i, row in enumerate(data):
        yield f"{path}:row {i}", row


def _read_csv(path: pathlib.Path) -> Iterable[tuple[str, Any]]:
    text = _decode(path.read_bytes(), path)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        for row in reader:
            row.pop("", None)  # pandas index column
            yield f"{path}:line {reader.line_num}", row
    except csv.Error as err:
        raise DataError(f"{path}:line {reader.line_num}: malformed CSV ({err})") from None


def _read_parquet(path: pathlib.Path) -> Iterable[tuple[str, Any]]:
    import pyarrow.parquet as pq

    for i, row in enumerate(pq.read_table(path).to_pylist()):
        yield f"{path}:row {i}", row


READERS: dict[str, Callable[[pathlib.Path], Iterable[tuple[str, Any]]]] = {
    ".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet,
}


def read_rows(path: str | pathlib.Path, split: str | None = None) -> list[tuple[str, dict]]:
    """Rows of a local file, or of every data file in a directory (a `split` subfolder or file stem preferred)."""
    path = pathlib.Path(path).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in READERS and p.is_file())
        if split is not None:
            chosen = [p for p in files if p.stem.split(".")[0].split("-")[0] == split or split in p.parent.parts]
            files = chosen or files
        if not files:
            raise DataError(f"{path}: no .jsonl/.json/.csv/.parquet files found")
    elif path.is_file():
        files = [path]
    else:
        raise DataError(f"data path not found: {path}")
    rows: list[tuple[str, dict]] = []
    for f in files:
        reader = READERS.get(f.suffix)
        if reader is None:
            raise DataError(f"{f}: unsupported file type {f.suffix!r} (use .jsonl, .json, .csv or .parquet)")
        for where, row in reader(f):
            if not isinstance(row, dict):
                raise DataError(f"{where}: expected an object with named fields, got {type(row).__name__}")
            rows.append((where, row))
    return rows


# ---------------------------------------------------------------------------------------------------- field access


def _field(row: dict, name: str, where: str, kinds: tuple[type, ...], optional: bool = False):
    if name not in row or row[name] is None:
        if optional:
            return None
        raise DataError(f"{where}: missing field {name!r} (row has {sorted(row)[:12]})")
    value = row[name]
    if bool in kinds and isinstance(value, str) and value.strip().lower() in ("true", "false"):
        value = value.strip().lower() == "true"  # CSV booleans
    if int in kinds and isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if kinds == (bool,) and isinstance(value, int) and value in (0, 1):
        value = bool(value)
    if not isinstance(value, kinds) or (kinds == (int,) and isinstance(value, bool)):
        want = "/".join(k.__name__ for k in kinds)
        raise DataError(f"{where}: field {name!r} must be {want}, got {type(value).__name__} {str(value)[:40]!r}")
    return value


def _category_dict(value, names: Sequence[str], where: str, field: str) -> dict[str, bool]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            value = [v.strip() for v in value.split(";") if v.strip()] if value else []
            if len(value) == 1 and value[0] in names:
                pass
    if isinstance(value, list):
        unknown = [v for v in value if v not in names]
        if unknown:
            raise DataError(f"{where}: field {field!r} names unknown categories {unknown[:3]}")
        return {n: n in value for n in names}
    if isinstance(value, dict):
        unknown = [k for k in value if k not in names]
        if unknown:
            raise DataError(f"{where}: field {field!r} has unknown categories {unknown[:3]}")
        return {n: bool(value.get(n, False)) for n in names}
    raise DataError(f"{where}: field {field!r} must be a dict of category → bool or a list of names")


def _severity(row, name, where):
    value = _field(row, name, where, (int,), optional=True)
    if value is not None and not 0 <= value <= 3:
        raise DataError(f"{where}: field {name!r} must be a severity level 0..3, got {value}")
    return value


def _response_id(row, name, where):
    value = _field(row, name, where, (int,))
    if value not in (0, 1):
        raise DataError(f"{where}: field {name!r} must be 0 or 1, got {value}")
    return value


# ---------------------------------------------------------------------------------------------------- row parsers


def parse_pku(row: dict, where: str, preference_field: str = "better_response_id") -> RawSample:
    """PKU-SafeRLHF row (16 fields; the 30K/10K releases have only the 7 read fields)."""
    prompt = _field(row, "prompt", where, (str,))
    r0 = _field(row, "response_0", where, (str,))
    r1 = _field(row, "response_1", where, (str,))
    better_id = _response_id(row, preference_field, where)
    # no safer_response_id (e.g. the single-dimension release): no safety preference — never a copy of `better`
    safer_id = _response_id(row, "safer_response_id", where) if row.get("safer_response_id") is not None else None
    cat0 = row.get("response_0_harm_category")
    cat1 = row.get("response_1_harm_category")
    return RawSample(
        input=prompt, answer=r0, other_answer=r1, better=better_id == 0,
        safer=None if safer_id is None else safer_id == 0,
        is_safe=_field(row, "is_response_0_safe", where, (bool,)),
        is_other_safe=_field(row, "is_response_1_safe", where, (bool,)),
        category=None if cat0 is None else _category_dict(cat0, PKU_HARM_CATEGORIES, where, "response_0_harm_category"),
        other_category=None if cat1 is None else _category_dict(cat1, PKU_HARM_CATEGORIES, where,
                                                                "response_1_harm_category"),
        severity=_severity(row, "response_0_severity_level", where),
        other_severity=_severity(row, "response_1_severity_level", where),
        where=where,
    )


def parse_pku_single_dimension(row: dict, where: str) -> RawSample:
    """PKU-SafeRLHF-single-dimension: one overall preference `better_response_id` (no separate safer id)."""
    sample = parse_pku({k: v for k, v in row.items() if k != "safer_response_id"}, where)
    return sample


def parse_pku_qa(row: dict, where: str) -> RawSample:
    """PKU-SafeRLHF-QA: one Q-A pair with is_safe, severity_level and the 19 categories (dict or list)."""
    category_field = next((k for k in ("harm_category", "category", "categories") if k in row), None)
    return RawSample(
        input=_field(row, "prompt", where, (str,)), answer=_field(row, "response", where, (str,)),
        is_safe=_field(row, "is_safe", where, (bool,)),
        category=None if category_field is None else _category_dict(row[category_field], PKU_HARM_CATEGORIES, where,
                                                                    category_field),
        severity=_severity(row, "severity_level", where), where=where,
    )


def parse_prompt_only(row: dict, where: str) -> RawSample:
    return RawSample(input=_field(row, "prompt", where, (str,)), where=where)


def parse_alpaca(row: dict, where: str) -> RawSample:
    instruction = _field(row, "instruction", where, (str,))
    extra = _field(row, "input", where, (str,), optional=True) or ""
    return RawSample(input=f"{instruction} {extra}" if extra else instruction,
                     answer=_field(row, "output", where, (str,)), where=where)


def parse_beavertails(row: dict, where: str) -> RawSample:
    """BeaverTails QA rows: {prompt, response, category (14 → bool, or one name), is_safe}."""
    category = _category_dict(_field(row, "category", where, (dict, str, list)), BEAVERTAILS_CATEGORIES, where,
                              "category")
    is_safe = _field(row, "is_safe", where, (bool,), optional=True)
    if is_safe is None:
        is_safe = not any(category.values())
    return RawSample(input=_field(row, "prompt", where, (str,)), answer=_field(row, "response", where, (str,)),
                     is_safe=is_safe, category=category, where=where)


_HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


def split_hh_text(text: str, where: str) -> list[str]:
    """Raw Anthropic `\\n\\nHuman: …\\n\\nAssistant: …` text → alternating turn texts (human first)."""
    parts = _HH_TURN.split(text)
    if parts[0].strip():
        raise DataError(f"{where}: hh-rlhf text must start with '\\n\\nHuman: '")
    merged: list[list[str]] = []  # consecutive turns of one speaker (a known hh-rlhf quirk) are joined
    for role, text in zip(parts[1::2], parts[2::2]):
        if merged and merged[-1][0] == role:
            merged[-1][1] += "\n\n" + text
        else:
            merged.append([role, text])
    if not merged or merged[0][0] != "Human":
        raise DataError(f"{where}: hh-rlhf conversations must start with a Human turn")
    return [text for _, text in merged]


def _hh_context_and_answers(row: dict, where: str) -> tuple[list[str], str, str]:
    if "context" in row:  # PKU-Alignment/processed-hh-rlhf
        context = row["context"]
        if not isinstance(context, list):
            raise DataError(f"{where}: field 'context' must be a list of {{role, text}}")
        turns = [c["text"] if isinstance(c, dict) else str(c) for c in context]
        chosen, rejected = row.get("chosen"), row.get("rejected")
        chosen = chosen.get("text") if isinstance(chosen, dict) else chosen
        rejected = rejected.get("text") if isinstance(rejected, dict) else rejected
        if not isinstance(chosen, str) or not isinstance(rejected, str):
            raise DataError(f"{where}: fields 'chosen'/'rejected' must hold the answer text")
        return turns, chosen, rejected
    chosen_turns = split_hh_text(_field(row, "chosen", where, (str,)), where)
    rejected_turns = split_hh_text(_field(row, "rejected", where, (str,)), where)
    if len(chosen_turns) % 2 or len(rejected_turns) % 2:
        raise DataError(f"{where}: hh-rlhf conversations must end on an assistant turn")
    return chosen_turns[:-1], chosen_turns[-1], rejected_turns[-1]


def parse_hh_dialogue(row: dict, where: str) -> RawSample:
    context, chosen, _ = _hh_context_and_answers(row, where)
    return RawSample(dialogue=[*context, chosen], where=where)


def parse_hh_preference(row: dict, where: str) -> RawSample:
    context, chosen, rejected = _hh_context_and_answers(row, where)
    return RawSample(input=context, answer=chosen, other_answer=rejected, better=True, where=where)


def parse_generic(row: dict, where: str) -> RawSample:
    """Best effort for user files: PKU-style pairs, {prompt|input|instruction, answer|response|output}, dialogue."""
    if "response_0" in row:
        return parse_pku(row, where)
    if "dialogue" in row:
        return RawSample(dialogue=list(row["dialogue"]), where=where)
    if "instruction" in row:
        return parse_alpaca(row, where)
    prompt = next((row[k] for k in ("prompt", "input", "question") if k in row), None)
    if prompt is None:
        raise DataError(f"{where}: cannot tell the row's format (fields {sorted(row)[:10]})")
    answer = next((row[k] for k in ("answer", "response", "output", "chosen") if k in row), None)
    return RawSample(input=prompt, answer=answer, is_safe=row.get("is_safe"), where=where)
