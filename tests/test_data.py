"""Data layer: registry and mixing, template and label masks, dataset kinds on the real rows, bad input, TFDS,
resumable iteration and bucketed shapes."""

from __future__ import annotations

import importlib.util
import pathlib
import json

import jax
import numpy as np
import pytest

from saferlhf_jax import data
from saferlhf_jax.data import DataError
from saferlhf_jax.data.registry import MixEntry

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tok(stories_dir):
    t = transformers.AutoTokenizer.from_pretrained(stories_dir)
    assert data.prepare_tokenizer(t) == ["pad_token"]  # stories260K has <s>, </s>, <unk> but no <pad>
    assert t.pad_token_id == 512 and len(t) == 513
    return t


@pytest.fixture(autouse=True)
def embedded_source(monkeypatch):
    """These tests read the shipped sample; the hub path has its own tests below."""
    monkeypatch.setenv("SAFERLHF_DATA_SOURCE", "embedded")


@pytest.fixture(scope="module")
def pku_train():
    return data.load_raw("PKU-SafeRLHF/train", source="embedded")


# ---------------------------------------------------------------------------------------------------- registry


def test_pku_field_mapping_on_real_rows(pku_train):
    assert len(pku_train) == 500
    pairs = [(s.is_safe, s.is_other_safe) for s in pku_train]
    assert pairs.count((True, True)) == 199 and pairs.count((False, False)) == 253
    assert sum(a != b for a, b in pairs) == 48
    assert sum(s.better for s in pku_train) == 159  # better_response_id == 0
    assert sum(s.safer for s in pku_train) == 144   # safer_response_id == 0
    first = pku_train[0]
    assert first.input.startswith("How do I set up a webcam for a virtual date")
    assert list(first.category) == list(data.PKU_HARM_CATEGORIES)
    severities = [s.severity for s in pku_train] + [s.other_severity for s in pku_train]
    assert [severities.count(k) for k in range(4)] == [446, 74, 407, 73]


def test_safety_preference_signs_on_real_rows(pku_train, tok):
    ds = data.build_dataset("safety_preference", pku_train, tok, 512)
    assert len(ds) == 500 and "safer_labelled_unsafe" not in ds.counts  # real data is consistent
    signs = [(int(e["safer_safety_sign"]), int(e["unsafer_safety_sign"])) for e in ds.examples]
    assert signs.count((1, 1)) == 199 and signs.count((-1, -1)) == 253 and signs.count((1, -1)) == 48
    # the safer side is response_0 exactly when safer_response_id == 0
    eos = tok.eos_token
    prompt = data.DEFAULT_TEMPLATE.format_prompt(pku_train[1].input)
    safer_text = pku_train[1].answer if pku_train[1].safer else pku_train[1].other_answer
    expected = tok(prompt + safer_text + eos).input_ids[:512]
    np.testing.assert_array_equal(ds.examples[1]["safer_input_ids"], expected)


def test_registry_names_aliases_and_errors():
    assert data.resolve_name("PKU-Alignment/PKU-SafeRLHF/train").name == "PKU-SafeRLHF/train"
    assert data.resolve_name("hh-preference/harmless-base/train").name == "hh-rlhf-harmless-preference/train"
    assert data.resolve_name("stanford-alpaca").name == "alpaca"
    assert data.resolve_name("hh-dialogue/helpful-base").name == "hh-rlhf-helpful-dialogue"
    with pytest.raises(DataError, match="needs a split"):
        data.resolve_name("hh-rlhf-preference")
    with pytest.raises(DataError, match="unknown dataset"):
        data.resolve_name("PKU-SafeRLHF-42K/train")
    with pytest.raises(DataError, match="no embedded copy"):
        data.load_raw("PKU-SafeRLHF-30K/train")
    with pytest.raises(DataError, match="no rows with response_0_source='Alpaca3-8B'"):
        data.load_raw("PKU-SafeRLHF/alpaca3-8b/train")
    assert len(data.load_raw("PKU-SafeRLHF/alpaca-7b/test")) == 16
    assert len(data.load_raw("BeaverTails-Evaluation")) == 700
    bt = data.load_raw("BeaverTails/30k_train")
    assert len(bt) == 140 and not any(s.is_safe for s in bt)
    assert sum(s.category["animal_abuse"] for s in bt) == 10


def test_hh_rlhf_raw_format_parsed_into_turns():
    dialogues = data.load_raw("hh-rlhf-helpful-dialogue")
    assert len(dialogues) == 500
    d0 = dialogues[0].dialogue
    assert d0[0] == "Hi, I want to learn to play horseshoes. Can you teach me?" and len(d0) % 2 == 0
    prefs = data.load_raw("hh-rlhf-helpful-preference/train")
    assert len(prefs[0].input) % 2 == 1 and prefs[0].better is True
    assert prefs[0].input == d0[:-1] and prefs[0].answer == d0[-1]


def test_mix_syntax_and_sampling_rule(tmp_path):
    e = data.parse_mix_entry("alpaca:3/-1")
    assert (e.exact_count, e.proportion) == (3, None)
    assert data.parse_mix_entry("alpaca:1/4").proportion == 0.25
    assert data.parse_mix_entry("alpaca:").proportion == 1.0
    e = data.parse_mix_entry(f"PKU-SafeRLHF/train:0.5:{tmp_path}/a:b.jsonl")
    assert e.path == f"{tmp_path}/a:b.jsonl"
    with pytest.raises(DataError, match="negative"):
        data.parse_mix_entry("alpaca:-0.5")
    with pytest.raises(DataError, match="proportion"):
        data.parse_mix_entry("alpaca:half")
    with pytest.raises(DataError, match="unique"):
        data.parse_mix("alpaca,stanford-alpaca:0.5")
    assert [m.name for m in data.parse_mix("alpaca:0.5, PKU-SafeRLHF/train")] == ["alpaca", "PKU-SafeRLHF/train"]
    # the spec's rule, re-derived by hand with numpy
    entries = [MixEntry("a", 0.5, None, None), MixEntry("b", 2.0, None, None), MixEntry("c", None, 3, None),
               MixEntry("d", 2.5, None, None)]
    got = data.sample_indices([10, 4, 7, 4], entries)
    children = np.random.SeedSequence(42).spawn(4)
    assert got[0].tolist() == np.random.default_rng(children[0]).choice(10, 5, replace=False).tolist()
    assert got[1].tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    assert got[2].tolist() == np.random.default_rng(children[2]).choice(7, 3, replace=False).tolist()
    assert got[3].tolist() == [0, 1, 2, 3, 0, 1, 2, 3] + np.random.default_rng(children[3]).choice(
        4, 2, replace=False).tolist()
    mixed = data.load_mix(["PKU-SafeRLHF/test:0.5", "BeaverTails-Evaluation:3/-1", "alpaca:0"])
    assert len(mixed) == 8 + 3
    train, test = data.split_holdout(10, 0.2)
    assert len(test) == 2 and sorted(np.concatenate([train, test]).tolist()) == list(range(10))
    assert len(data.split_holdout(10, 0.01)[1]) == 0  # rounds to 0: train keeps everything


# ---------------------------------------------------------------------------------------------------- template / kinds


def test_template_strings_and_supervised_label_mask(tok):
    t = data.DEFAULT_TEMPLATE
    assert t.format_prompt("Hi?") == "BEGINNING OF CONVERSATION: USER: Hi? ASSISTANT:"
    assert t.format_prompt(["a", "b", "c"], "</s>") == (
        "BEGINNING OF CONVERSATION: USER: a ASSISTANT:b</s>USER: c ASSISTANT:")
    with pytest.raises(ValueError, match="odd number"):
        t.format_prompt(["a", "b"])
    assert t.split_response("BEGINNING OF CONVERSATION: USER: q ASSISTANT: the answer") == (
        "BEGINNING OF CONVERSATION: USER: q ASSISTANT:", " the answer")
    sample = data.RawSample(input="Tell me a story.", answer="Once upon a time.")
    ds = data.build_dataset("supervised", [sample], tok, 512)
    ex = ds.examples[0]
    prompt_len = len(tok(t.format_prompt("Tell me a story.")).input_ids)
    full = tok(t.format_prompt("Tell me a story.") + "Once upon a time." + "</s>").input_ids
    np.testing.assert_array_equal(ex["input_ids"], full)
    assert ex["input_ids"][0] == 1 and ex["input_ids"][-1] == 2  # BOS ... EOS
    assert (ex["labels"][:prompt_len] == -100).all()
    np.testing.assert_array_equal(ex["labels"][prompt_len:], full[prompt_len:])


def test_multi_turn_labels_mask_every_user_segment(tok):
    dialogue = ["Hi", "Hello there.", "How are you?", "Fine."]
    ds = data.build_dataset("supervised", [data.RawSample(dialogue=dialogue)], tok, 512)
    ex = ds.examples[0]
    segs = data.DEFAULT_TEMPLATE.dialogue_segments(dialogue, "</s>")
    offs = [0] + [len(tok(s).input_ids) for s in segs]
    labels = ex["labels"]
    assert (labels[offs[0]:offs[1]] == -100).all() and (labels[offs[2]:offs[3]] == -100).all()
    np.testing.assert_array_equal(labels[offs[1]:offs[2]], ex["input_ids"][offs[1]:offs[2]])
    np.testing.assert_array_equal(labels[offs[3]:offs[4]], ex["input_ids"][offs[3]:offs[4]])


def test_truncation_empty_and_filtered_rows_are_counted(tok):
    long = "word " * 400
    rows = [data.RawSample(input=long, answer="x"), data.RawSample(input="q", answer="")]
    ds = data.build_dataset("supervised", rows, tok, 64)
    assert ds.counts == {"truncated": 1, "no_target_tokens": 1, "empty_answer": 1}
    assert len(ds.examples) == 1  # the truncated example lost every target token: dropped (its loss is 0/0)
    assert (ds.examples[0]["labels"] != -100).sum() == 1  # the empty answer still trains on its EOS
    with pytest.raises(DataError, match="no usable supervised examples"):
        data.build_dataset("supervised", rows[:1], tok, 64)
    pairs = [
        data.RawSample(input="q", answer="same", other_answer="same", better=True, safer=True, is_safe=True,
                       is_other_safe=True),
        data.RawSample(input="q", answer="a", other_answer="b", better=False, safer=True, is_safe=False,
                       is_other_safe=True),   # safer response labelled unsafe, the other safe
        data.RawSample(input="q", answer="a", other_answer="b", better=False, safer=False, is_safe=False,
                       is_other_safe=True),
    ]
    pref = data.build_dataset("preference", pairs, tok, 64)
    assert pref.counts == {"identical_responses": 1} and len(pref) == 2
    # better=False swaps: better is the other answer
    np.testing.assert_array_equal(pref.examples[0]["better_input_ids"],
                                  tok(data.DEFAULT_TEMPLATE.format_prompt("q") + "b</s>").input_ids)
    safety = data.build_dataset("safety_preference", pairs, tok, 64)
    assert safety.counts == {"identical_responses": 1, "safer_labelled_unsafe": 1} and len(safety) == 1
    assert (int(safety.examples[0]["safer_safety_sign"]), int(safety.examples[0]["unsafer_safety_sign"])) == (1, -1)
    with pytest.raises(DataError, match="no usable preference examples"):
        data.build_dataset("preference", pairs[:1], tok, 64)
    with pytest.raises(DataError, match="needs"):
        data.build_dataset("preference", [data.RawSample(input="q", answer="a")], tok, 64)


def test_pad_token_equal_to_eos_keeps_the_eos_in_the_mask(pku_train, stories_dir):
    """A Llama-3-style tokenizer pads with its EOS: no token is added, and the collated masks still cover each
    sequence's closing EOS (masks come from the lengths, never from comparing ids with the pad id)."""
    t = transformers.AutoTokenizer.from_pretrained(stories_dir)
    t.pad_token = t.eos_token
    assert data.prepare_tokenizer(t) == [] and t.pad_token_id == t.eos_token_id == 2
    ds = data.build_dataset("preference", pku_train[:6], t, 512)
    batch = data.collate("preference", ds.examples, ds.pad_token_id, (512,))
    for side in ("better", "worse"):
        ids, mask = batch[f"{side}_input_ids"], batch[f"{side}_attention_mask"]
        lengths = np.asarray([len(e[f"{side}_input_ids"]) for e in ds.examples])
        np.testing.assert_array_equal(mask.sum(1), lengths)
        whole = lengths < 512  # rows cut at max_length lose their EOS (right truncation, spec §4.5)
        assert whole.sum() >= 2 and (ids[np.arange(len(ids)), lengths - 1][whole] == 2).all()  # EOS inside the mask
        assert (ids[mask == 0] == 2).all()  # and the padding is the same id


def test_prompt_only_dedup_keep_last_and_left_padding(tok):
    rows = [data.RawSample(input=p) for p in ["a", "b", "a", "c", "b"]]
    kept = data.dedup_keep_last(rows)
    assert [r.input for r in kept] == ["a", "c", "b"]
    assert [id(r) for r in kept] == [id(rows[2]), id(rows[3]), id(rows[4])]
    ds = data.build_dataset("prompt_only", rows, tok, 64)
    assert len(ds) == 3 and ds.counts == {"duplicate_prompts": 2}
    batch = data.collate("prompt_only", ds.examples, ds.pad_token_id, [32, 64, 128])
    assert batch["input_ids"].shape == (3, 64)  # the template alone is ~45 tokens here
    assert batch["attention_mask"][:, -1].all() and not batch["attention_mask"][:, 0].any()
    assert (batch["input_ids"][~batch["attention_mask"]] == tok.pad_token_id).all()
    assert int(ds.examples[0]["input_ids"][-1]) != tok.eos_token_id  # no EOS on prompts


def test_moderation_examples_from_pairs_and_beavertails(pku_train, tok):
    ds = data.build_dataset("moderation", pku_train[:10], tok, 128)
    assert len(ds) == 20
    ex0, ex1 = ds.examples[0], ds.examples[1]
    assert int(ex0["is_unsafe"]) == int(not pku_train[0].is_safe)
    assert int(ex1["severity"]) == pku_train[0].other_severity
    cats = [c for c, v in pku_train[4].category.items() if v]
    got = [data.PKU_HARM_CATEGORIES[i] for i in np.flatnonzero(ds.examples[8]["categories"])]
    assert got == cats
    bt = data.build_dataset("moderation", data.load_raw("BeaverTails/30k_train")[:4], tok, 128)
    assert all(int(e["severity"]) == -1 and not e["category_valid"] and int(e["is_unsafe"]) == 1
               for e in bt.examples)
    batch = data.collate("moderation", ds.examples[:4], ds.pad_token_id, [128])
    assert batch["categories"].shape == (4, 19) and batch["severity"].shape == (4,)


# ---------------------------------------------------------------------------------------------------- bad input


def test_bad_input_names_file_and_line(tmp_path):
    good = json.loads(open(data.registry.ASSETS / "pku_saferlhf" / "test_alpaca7b_first16.jsonl").readline())
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(DataError, match=r"bad.jsonl:2: malformed JSON"):
        data.load_raw("PKU-SafeRLHF/train", str(bad_json))
    missing = tmp_path / "missing.jsonl"
    row = dict(good)
    del row["response_1"]
    missing.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError, match=r"missing.jsonl:2: missing field 'response_1'"):
        data.load_raw("PKU-SafeRLHF/train", str(missing))
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text(json.dumps(dict(good, is_response_0_safe="maybe")) + "\n")
    with pytest.raises(DataError, match=r"wrong.jsonl:1: field 'is_response_0_safe' must be bool"):
        data.load_raw("PKU-SafeRLHF/train", str(wrong))
    sev = tmp_path / "sev.jsonl"
    sev.write_text(json.dumps(dict(good, response_0_severity_level=7)) + "\n")
    with pytest.raises(DataError, match="severity level 0..3"):
        data.load_raw("PKU-SafeRLHF/train", str(sev))
    with pytest.raises(DataError, match="not found"):
        data.load_raw("PKU-SafeRLHF/train", str(tmp_path / "nope.jsonl"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="no rows"):
        data.load_raw("PKU-SafeRLHF/train", str(empty))
    csv_file = tmp_path / "alp.csv"
    csv_file.write_text("instruction,input,output\nSay hi,,hi\nAdd,1 and 2,3\n")
    rows = data.load_raw("alpaca", str(csv_file))
    assert [r.input for r in rows] == ["Say hi", "Add 1 and 2"]


def test_parquet_and_directory_paths(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in open(data.registry.ASSETS / "pku_saferlhf" / "test_alpaca7b_first16.jsonl")]
    table = pa.Table.from_pylist([{k: v for k, v in r.items() if "harm_category" not in k} for r in rows])
    (tmp_path / "d").mkdir()
    pq.write_table(table, tmp_path / "d" / "test-00000.parquet")
    loaded = data.load_raw("PKU-SafeRLHF/test", str(tmp_path / "d"))
    assert len(loaded) == 16 and loaded[3].input == rows[3]["prompt"] and loaded[3].category is None


# ---------------------------------------------------------------------------------------------------- TFDS


def test_tfds_builder_round_trip_without_tensorflow(tmp_path):
    assert importlib.util.find_spec("tensorflow") is None  # the point: no TensorFlow installed
    from saferlhf_jax.data import tfds_pku

    import tensorflow_datasets as tfds

    manual = data.registry.ASSETS / "pku_saferlhf"
    tfds_pku.prepare(manual, tmp_path / "tfds", "default")
    source = tfds.data_source("pku_safe_rlhf/default", data_dir=str(tmp_path / "tfds"), split="test")
    assert len(source) == 16
    prepared = tmp_path / "tfds" / "pku_safe_rlhf" / "default" / "1.0.0"
    rows = [r for _, r in tfds_pku.read_prepared(prepared, "test")]
    originals = [json.loads(line) for line in open(manual / "test_alpaca7b_first16.jsonl")]
    key = lambda r: r["response_0_sha256"]  # noqa: E731
    assert sorted(rows, key=key) == sorted(originals, key=key)
    assert all(len(r) == 16 for r in rows)
    via_registry = data.load_raw("PKU-SafeRLHF/test", str(prepared))
    assert sorted(s.answer for s in via_registry) == sorted(r["response_0"] for r in originals)
    sub = tfds_pku.prepare(manual, tmp_path / "tfds", "alpaca-7b")
    assert sub.info.splits["train"].num_examples == 500


# ---------------------------------------------------------------------------------------------------- iteration


@pytest.fixture(scope="module")
def pref_ds(pku_train, tok):
    return data.build_dataset("preference", pku_train[:100], tok, 256)


def test_iterator_is_deterministic_reshuffles_and_resumes(pref_ds):
    it = data.BatchIterator(pref_ds, 8, seed=3)
    assert it.batches_per_epoch == len(pref_ds) // 8 == 12
    first = [next(it) for _ in range(5)]
    state = it.state_dict()
    rest = [next(it) for _ in range(10)]  # crosses into epoch 1
    assert it.state_dict()["epoch"] == 1
    again = data.BatchIterator(pref_ds, 8, seed=3)
    again.load_state_dict(json.loads(json.dumps(state)))  # survives a JSON round trip
    for a, b in zip(rest, [next(again) for _ in range(10)]):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    fresh = data.BatchIterator(pref_ds, 8, seed=3)
    np.testing.assert_array_equal(next(fresh)["better_input_ids"], first[0]["better_input_ids"])
    assert not np.array_equal(it.order(0), it.order(1))  # reshuffled each epoch
    assert not np.array_equal(data.BatchIterator(pref_ds, 8, seed=4).order(0), it.order(0))


def test_epoch_compiles_at_most_the_bucket_count(pref_ds, tok):
    for batch in data.iterate_once(pref_ds, 8):
        assert batch["better_input_ids"].shape == batch["worse_input_ids"].shape  # pairs padded jointly
    buckets = (128, 256, 384, 512)
    ds = data.build_dataset("supervised", data.load_raw("alpaca")[:96], tok, 512)
    it = data.BatchIterator(ds, 4, seed=0, buckets=buckets)

    @jax.jit
    def step(batch):
        return (batch["input_ids"] * batch["attention_mask"]).sum()

    shapes = set()
    for _ in range(it.batches_per_epoch):
        batch = next(it)
        shapes.add(batch["input_ids"].shape)
        step(batch)
    assert step._cache_size() == len(shapes) <= len(buckets)
    assert len(shapes) >= 2  # the buckets are really used


def test_host_shards_cover_the_global_batch(pref_ds):
    full = data.BatchIterator(pref_ds, 8, seed=1)
    hosts = [data.BatchIterator(pref_ds, 8, seed=1, num_shards=2, shard_index=i) for i in range(2)]
    ids_full = full.batch_indices(0, 2)
    assert np.array_equal(np.concatenate([h.batch_indices(0, 2) for h in hosts]), ids_full)
    with pytest.raises(ValueError, match="divisible"):
        data.BatchIterator(pref_ds, 7, num_shards=2)


def test_batches_shard_over_the_mesh(pref_ds):
    if jax.device_count() < 8:
        pytest.skip("needs 8 simulated devices")
    from saferlhf_jax.parallel import make_mesh, shard_batch

    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    batch = shard_batch(next(data.BatchIterator(pref_ds, 8, seed=0)), mesh)
    ids = batch["better_input_ids"]
    assert tuple(ids.sharding.spec)[0] == ("data", "fsdp")
    assert ids.addressable_shards[0].data.shape[0] == 2
    with pytest.raises(ValueError, match="not divisible by the data axes"):
        shard_batch({"x": np.zeros((6, 3))}, mesh)


def test_iterate_once_marks_padding_rows(pref_ds):
    n = len(pref_ds)
    batches = list(data.iterate_once(pref_ds, 32))
    assert len(batches) == -(-n // 32) and batches[-1]["valid"].sum() == n - 32 * (len(batches) - 1)
    assert sum(int(b["valid"].sum()) for b in batches) == n


# ---------------------------------------------------------------------------------------------------- data source


def test_data_source_is_explicit_never_a_silent_fallback(monkeypatch):
    monkeypatch.delenv("SAFERLHF_DATA_SOURCE")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match=r"cannot load PKU-Alignment/PKU-SafeRLHF from the Hugging Face hub .*"
                                        r"PKU-SafeRLHF/train:1.0:/path/to/files.*data.source=embedded"):
        data.load_mix(["PKU-SafeRLHF/train"])  # default source: the hub
    assert len(data.load_mix(["PKU-SafeRLHF/train"], source="embedded")) == 500
    monkeypatch.setenv("SAFERLHF_DATA_SOURCE", "embedded")  # the environment wins over the config
    assert len(data.load_mix(["PKU-SafeRLHF/test"], source="hub")) == 16
    monkeypatch.setenv("SAFERLHF_DATA_SOURCE", "sample")
    with pytest.raises(DataError, match="data source must be one of"):
        data.load_mix(["PKU-SafeRLHF/test"])


def test_presets_name_their_data_source():
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    from configs import pipeline, ppo_lag, reward, sft

    for module in (sft, reward, ppo_lag):
        assert module.get_config("tiny").data.source == "embedded"
        assert module.get_config("llama2_7b").data.source == "hub"
    assert pipeline.get_config("tiny").arena.data_source == "embedded"


def test_hub_path_reads_a_dataset_repository(tmp_path, monkeypatch):
    """The hub code path, end to end through `datasets.load_dataset`, on a local repository of data files."""
    import dataclasses

    from saferlhf_jax.data import registry

    pytest.importorskip("datasets")
    repo = tmp_path / "repo" / "data"
    repo.mkdir(parents=True)
    rows = (registry.ASSETS / "pku_saferlhf" / "train_first500.jsonl").read_text().splitlines()
    (repo / "train.jsonl").write_text("\n".join(rows[:7]) + "\n")
    (repo / "test.jsonl").write_text("\n".join(rows[7:9]) + "\n")
    for var in ("SAFERLHF_DATA_SOURCE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    spec = registry.REGISTRY["PKU-SafeRLHF/train"]
    monkeypatch.setitem(registry.REGISTRY, spec.name, dataclasses.replace(spec, hub_id=str(repo.parent)))
    got = data.load_raw("PKU-SafeRLHF/train")
    want = data.load_raw("PKU-SafeRLHF/train", source="embedded")[:7]
    assert [(s.input, s.answer, s.better, s.safer) for s in got] == [(s.input, s.answer, s.better, s.safer)
                                                                     for s in want]
    assert got[0].where.endswith("[train]:row 0")
    monkeypatch.setitem(registry.REGISTRY, spec.name, dataclasses.replace(spec, hub_id=str(tmp_path / "missing")))
    with pytest.raises(DataError, match="cannot load .* from the Hugging Face hub"):
        data.load_raw("PKU-SafeRLHF/train")
