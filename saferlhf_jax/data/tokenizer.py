"""Loading a tokenizer safely: never run code shipped with a model directory, name a missing directory plainly.

transformers asks "Do you wish to run the custom code? [y/N]" on stdin when a directory's `tokenizer_config.json` (or
`config.json`) carries an `auto_map` and `trust_remote_code` is left unset — so `printf 'y\\n' | ...` would execute the
directory's Python. We pass `trust_remote_code=False` explicitly *and* refuse such directories up front.
"""

from __future__ import annotations

import json
import logging
import pathlib

from saferlhf_jax.data.examples import prepare_tokenizer
from saferlhf_jax.errors import ModelError

log = logging.getLogger(__name__)

_CODE_FILES = ("tokenizer_config.json", "config.json")


def needs_remote_code(path: pathlib.Path) -> str | None:
    """The file whose `auto_map` asks for code from the directory, or None."""
    for name in _CODE_FILES:
        f = path / name
        if f.is_file():
            try:
                raw = json.loads(f.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(raw, dict) and raw.get("auto_map"):
                return name
    return None


def looks_like_hub_id(spec: str) -> bool:
    """'org/name' with no local meaning (no leading ./, /, ~ and exactly one slash)."""
    return spec.count("/") == 1 and not spec.startswith((".", "/", "~")) and " " not in spec


def check_model_dir(spec) -> pathlib.Path | str:
    """A local directory that exists (as a Path), or a hub id kept as a string; otherwise a one-line ModelError."""
    path = pathlib.Path(str(spec)).expanduser()
    if path.is_dir():
        code = needs_remote_code(path)
        if code:
            raise ModelError(f"{path}: {code} asks to run Python code shipped with the model (auto_map); "
                             "saferlhf-jax never runs such code — use a tokenizer/model that loads without it")
        return path
    if path.exists():
        raise ModelError(f"{path} is a file, not a model directory")
    if looks_like_hub_id(str(spec)):
        return str(spec)
    raise ModelError(f"model directory not found: {path}")


def load_tokenizer(spec, prepare: bool = True):
    """AutoTokenizer for a local directory (or hub id) with `trust_remote_code=False`; special tokens added where
    missing (spec §2.5) unless `prepare=False`."""
    from transformers import AutoTokenizer

    where = check_model_dir(spec)
    try:
        tok = AutoTokenizer.from_pretrained(str(where), trust_remote_code=False)
    except (OSError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"cannot load a tokenizer from {where}: {first}") from err
    if prepare:
        prepare_tokenizer(tok)
    return tok


def give_pad_its_own_id(tokenizer) -> bool:
    """A tokenizer that pads with its EOS (Llama-3 style) gets a pad token of its own (`<pad>`; the model's
    embeddings must then grow to len(tokenizer)). Needed where a reader finds the scored token by the pad id:
    transformers' *ForSequenceClassification pools at the last token that is not the pad id — with pad = EOS the
    token before the EOS, not the EOS the score model was trained on. Returns whether it changed anything."""
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id != tokenizer.eos_token_id:
        return False
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    log.info("the tokenizer padded with its EOS (id %d): it pads with <pad> (id %d) now, so that an exported "
             "sequence classifier pools at the EOS", tokenizer.eos_token_id, tokenizer.pad_token_id)
    return True


def save_tokenizer(tokenizer, directory) -> None:
    """The tokenizer's files in `directory`, special_tokens_map.json included: transformers 5 no longer writes it,
    and a copy left from the model the run started from (models.save_pretrained copies its tokenizer files) would
    name its old special tokens — AutoTokenizer reads it over tokenizer_config.json (a pad token given its own id
    read back as the EOS)."""
    tokenizer.save_pretrained(str(directory))
    special = {k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}
    (pathlib.Path(directory) / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
