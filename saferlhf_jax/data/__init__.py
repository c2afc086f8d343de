"""Data: registry → template → tokenize → filter/count → fixed-shape numpy batches → resumable iterator."""

from saferlhf_jax.data.batching import (BatchIterator, collate, default_buckets, end_score_batches, iterate_once,
                                        pick_bucket)
from saferlhf_jax.data.examples import (
    IGNORE_INDEX,
    KINDS,
    TokenizedDataset,
    build_dataset,
    dedup_keep_last,
    drop_long_prompts,
    prepare_tokenizer,
)
from saferlhf_jax.data.raw import (
    BEAVERTAILS_CATEGORIES,
    PKU_HARM_CATEGORIES,
    SEVERITY_NAMES,
    DataError,
    RawSample,
    read_rows,
)
from saferlhf_jax.data.registry import (
    REGISTRY,
    SOURCES,
    data_source,
    load_mix,
    load_raw,
    parse_mix,
    parse_mix_entry,
    resolve_name,
    sample_indices,
    split_holdout,
)
from saferlhf_jax.data.template import DEFAULT_TEMPLATE, TEMPLATES, ChatTemplate, ConversationTemplate, make_template

__all__ = [
    "BEAVERTAILS_CATEGORIES", "BatchIterator", "ChatTemplate", "ConversationTemplate", "TEMPLATES", "make_template", "DEFAULT_TEMPLATE", "DataError",
    "IGNORE_INDEX", "KINDS", "PKU_HARM_CATEGORIES", "REGISTRY", "RawSample", "SEVERITY_NAMES", "TokenizedDataset",
    "SOURCES", "build_dataset", "data_source", "collate", "dedup_keep_last", "drop_long_prompts", "default_buckets", "end_score_batches", "iterate_once", "load_mix", "load_raw",
    "parse_mix", "parse_mix_entry", "pick_bucket", "prepare_tokenizer", "read_rows", "resolve_name",
    "sample_indices", "split_holdout",
]
