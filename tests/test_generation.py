"""KV-cache sampler: cached greedy == uncached argmax, stories260K, EOS/padding, sampling filters, sharding."""

from __future__ import annotations

import dataclasses

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saferlhf_jax.generation import bucket_length, generate, top_k_filter, top_p_filter
from saferlhf_jax.models import ModelConfig, init_model, load_causal_lm
from saferlhf_jax.parallel import make_mesh, put_local_batch

STORIES_GREEDY = [403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338, 401, 396, 267, 337,
                  410, 408, 419, 292, 411, 322, 265, 282, 295, 433, 426, 385]


@pytest.fixture(scope="module")
def tiny():
    cfg = ModelConfig(vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, initializer_range=0.3, eos_token_id=2, pad_token_id=0)
    return init_model(cfg, "causal_lm", rng=11)


def _left_padded(rows, pad=0):
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad, np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = r
        mask[i, width - len(r):] = 1
    return ids, mask


def _uncached_greedy(model, row, steps, eos=None):
    """Step-by-step argmax of the full forward (no cache) over a fixed-width buffer (one compile)."""
    ids = np.zeros((1, 32), np.int32)
    ids[0, :len(row)] = row
    out = []
    for t in range(len(row) - 1, len(row) - 1 + steps):
        logits = model.apply(model.params, ids, np.ones_like(ids))
        tok = int(np.argmax(np.asarray(logits[0, t])))
        out.append(tok)
        if eos is not None and tok == eos:
            break
        ids[0, t + 1] = tok
    return out


def test_cached_greedy_equals_uncached_argmax(tiny):
    rows = [[1, 5, 9, 13, 4, 7, 8], [1, 22], [1, 30, 31, 40]]
    ids, mask = _left_padded(rows)
    out = generate(tiny, tiny.params, ids, mask, max_new_tokens=12, greedy=True, eos_token_ids=[])
    assert out["sequences"].shape == (3, ids.shape[1] + 12)
    np.testing.assert_array_equal(out["sequences"][:, :ids.shape[1]], ids)  # prompt returned as given
    for b, row in enumerate(rows):
        assert out["sequences"][b, ids.shape[1]:].tolist() == _uncached_greedy(tiny, row, 12)
    np.testing.assert_array_equal(out["response_lengths"], [12, 12, 12])


def test_stories260k_greedy_and_text(stories_dir):
    transformers = pytest.importorskip("transformers")
    lm = load_causal_lm(stories_dir)
    out = generate(lm, lm.params, np.array([[1]]), np.array([[1]]), max_new_tokens=32, greedy=True)
    assert out["sequences"][0, 1:].tolist() == STORIES_GREEDY
    tok = transformers.AutoTokenizer.from_pretrained(stories_dir)
    assert tok.decode(out["sequences"][0], skip_special_tokens=True).startswith(
        "Once upon a time, there was a little girl named Lily.")


def test_rows_stop_at_eos_and_are_padded(tiny):
    rows = [[1, 5, 9], [1, 22, 23, 24], [1, 30]]
    ids, mask = _left_padded(rows)
    free = generate(tiny, tiny.params, ids, mask, max_new_tokens=10, greedy=True, eos_token_ids=[])
    resp = free["sequences"][:, ids.shape[1]:]
    # declare the token each row emits at step 3 (or row 1's first) an EOS: rows must stop right there
    eos_a, eos_b = int(resp[0, 3]), int(resp[1, 0])
    out = generate(tiny, tiny.params, ids, mask, max_new_tokens=10, greedy=True, eos_token_ids=[eos_a, eos_b],
                   pad_token_id=60)
    got = out["sequences"][:, ids.shape[1]:]
    for b in range(3):
        ref = _uncached_greedy(tiny, rows[b], 10)
        stops = [i for i, t in enumerate(ref) if t in (eos_a, eos_b)]
        n = stops[0] + 1 if stops else 10
        assert out["response_lengths"][b] == n
        assert got[b, :n].tolist() == ref[:n]
        assert (got[b, n:] == 60).all()
        assert out["attention_mask"][b, ids.shape[1]:].tolist() == [1] * n + [0] * (10 - n)


def test_pad_equal_to_eos_still_scores_at_the_eos(tiny):
    """Llama-3-style tokenizers pad with their EOS. The response mask comes from the lengths and a score model's end
    index from the mask, never from comparing ids with pad_token_id, so the end score is read at the EOS itself —
    exactly as with a separate pad token."""
    rows = [[1, 5, 9], [1, 22, 23, 24], [1, 30]]
    ids, mask = _left_padded(rows)
    free = generate(tiny, tiny.params, ids, mask, max_new_tokens=10, greedy=True, eos_token_ids=[])
    eos = int(free["sequences"][0, ids.shape[1] + 3])  # row 0 emits it at step 3
    ids_eos, _ = _left_padded(rows, pad=eos)  # prompts padded with the EOS id too
    as_eos = generate(tiny, tiny.params, ids_eos, mask, max_new_tokens=10, greedy=True, eos_token_ids=[eos],
                      pad_token_id=eos)
    apart = generate(tiny, tiny.params, ids, mask, max_new_tokens=10, greedy=True, eos_token_ids=[eos],
                     pad_token_id=60)
    np.testing.assert_array_equal(as_eos["response_lengths"], apart["response_lengths"])
    np.testing.assert_array_equal(as_eos["attention_mask"], apart["attention_mask"])
    n0 = int(as_eos["response_lengths"][0])
    assert n0 == 4 and as_eos["sequences"][0, ids.shape[1] + n0 - 1] == eos  # the EOS is inside the mask
    score = init_model(dataclasses.replace(tiny.config, pad_token_id=eos), "score", rng=3)
    scores, end = score.apply(score.params, as_eos["sequences"], as_eos["attention_mask"])
    _, end_apart = score.apply(score.params, apart["sequences"], apart["attention_mask"])
    np.testing.assert_allclose(np.asarray(end), np.asarray(end_apart), atol=1e-5)
    last = ids.shape[1] + np.asarray(as_eos["response_lengths"]) - 1  # each row's last real token
    np.testing.assert_allclose(np.asarray(end)[:, 0], np.asarray(scores)[np.arange(3), last, 0], atol=1e-6)


def test_max_length_budget_and_buckets(tiny):
    ids, mask = _left_padded([[1, 2, 3], [1, 4]])
    out = generate(tiny, tiny.params, ids, mask, max_length=9, greedy=True, eos_token_ids=[])
    assert out["sequences"].shape == (2, 9)
    assert bucket_length(3) == 16 and bucket_length(17) == 32 and bucket_length(5000) == 5000
    assert bucket_length(20, [24, 48]) == 24
    empty = generate(tiny, tiny.params, ids, mask, max_length=3, greedy=True)
    assert empty["sequences"].shape == (2, 3) and empty["response_lengths"].tolist() == [0, 0]
    with pytest.raises(ValueError, match="left-padded"):
        generate(tiny, tiny.params, np.array([[1, 2, 0]]), np.array([[1, 1, 0]]), max_new_tokens=2, greedy=True)
    with pytest.raises(ValueError, match="rng"):
        generate(tiny, tiny.params, ids, mask, max_new_tokens=2)


def test_sampling_is_seeded_and_fresh(tiny):
    ids, mask = _left_padded([[1, 5, 9], [1, 22]])
    kw = dict(max_new_tokens=16, eos_token_ids=[], temperature=1.0, top_k=0)
    a = generate(tiny, tiny.params, ids, mask, rng=jax.random.key(3), **kw)["sequences"]
    b = generate(tiny, tiny.params, ids, mask, rng=jax.random.key(3), **kw)["sequences"]
    c = generate(tiny, tiny.params, ids, mask, rng=jax.random.key(4), **kw)["sequences"]
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    greedy = generate(tiny, tiny.params, ids, mask, max_new_tokens=16, eos_token_ids=[], greedy=True)["sequences"]
    top1 = generate(tiny, tiny.params, ids, mask, max_new_tokens=16, eos_token_ids=[], top_k=1, rng=9)["sequences"]
    np.testing.assert_array_equal(top1, greedy)


def test_top_p_and_top_k_keep_the_right_support():
    probs = np.array([[0.5, 0.25, 0.15, 0.1]])
    logits = jnp.log(jnp.asarray(probs))
    kept = lambda x: np.isfinite(np.asarray(x))[0].tolist()  # noqa: E731
    assert kept(top_p_filter(logits, 0.5)) == [True, False, False, False]
    assert kept(top_p_filter(logits, 0.6)) == [True, True, False, False]
    assert kept(top_p_filter(logits, 0.9)) == [True, True, True, False]
    assert kept(top_p_filter(logits, 1.0)) == [True] * 4
    shuffled = logits[:, ::-1]
    assert kept(top_p_filter(shuffled, 0.6)) == [False, False, True, True]
    assert kept(top_k_filter(logits, 2)) == [True, True, False, False]
    # empirical: with top_p=0.6 only tokens 0 and 1 are ever drawn, in ratio ≈ 2:1
    draws = jax.random.categorical(jax.random.key(0), top_p_filter(logits, 0.6), shape=(4000, 1))
    counts = np.bincount(np.asarray(draws).ravel(), minlength=4)
    assert counts[2:].sum() == 0 and abs(counts[0] / 4000 - 2 / 3) < 0.03


def test_repetition_penalty_changes_greedy_path(tiny):
    ids, mask = _left_padded([[1, 5, 9, 5, 5]])
    plain = generate(tiny, tiny.params, ids, mask, max_new_tokens=12, greedy=True, eos_token_ids=[])["sequences"]
    pen = generate(tiny, tiny.params, ids, mask, max_new_tokens=12, greedy=True, eos_token_ids=[],
                   repetition_penalty=100.0)["sequences"]
    resp = pen[0, ids.shape[1]:].tolist()
    assert len(set(resp)) == len(resp)  # a huge penalty forbids every repeat
    assert not set(resp) & {1, 5, 9}
    assert (plain != pen).any()


@pytest.mark.parametrize("shape", [(2, 2, 2), (1, 8, 1)])
def test_sharded_sampler_equals_single_device(shape):
    if jax.device_count() < 8:
        pytest.skip("needs 8 simulated devices")
    cfg = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, initializer_range=0.3, eos_token_id=2, pad_token_id=0)
    single = init_model(cfg, rng=5)
    mesh = make_mesh(*shape)
    sharded = init_model(cfg, rng=5, mesh=mesh)
    rows = [[1, 3 + i, 7 + i][: 1 + i % 3] for i in range(8)]
    ids, mask = _left_padded(rows)
    kw = dict(max_new_tokens=10, rng=jax.random.key(1), top_k=8, eos_token_ids=[2])
    a = generate(single, single.params, ids, mask, **kw)
    b = generate(sharded, sharded.params, ids, mask, mesh=mesh, **kw)
    np.testing.assert_array_equal(a["sequences"], b["sequences"])
    np.testing.assert_array_equal(a["response_lengths"], b["response_lengths"])
    # the programs were jitted with explicit shardings: KV cache batch over (data, fsdp), kv heads over tensor
    from jax.sharding import PartitionSpec as P

    from saferlhf_jax.generation import sampler

    progs = [p for key, (graphdef, p) in sampler._PROGRAMS.items() if graphdef is sharded.graphdef and key[3] == mesh]
    assert progs and all(key[1] is not None for key in progs[0]._jitted)
    pad = 16 - ids.shape[1]  # generate pads these prompts to its smallest bucket, 16
    batch = put_local_batch({"ids": np.pad(ids, ((0, 0), (pad, 0))), "mask": np.pad(mask, ((0, 0), (pad, 0)))}, mesh)
    state = progs[0].prefill(sharded.params, batch["ids"], batch["mask"], np.int32(10))
    want = P(("data", "fsdp") if shape[0] > 1 else "fsdp", "tensor" if shape[2] > 1 else None, None, None)
    assert state["cache"].k[0].sharding.spec == want


def test_stream_generate_matches_generate(tiny):
    from saferlhf_jax.generation import stream_generate

    ids, mask = _left_padded([[1, 5, 9]])
    kw = dict(max_new_tokens=10, eos_token_ids=[], rng=7, top_k=5)
    streamed = list(stream_generate(tiny, tiny.params, ids, mask, **kw))
    full = generate(tiny, tiny.params, ids, mask, **kw)["sequences"][0, ids.shape[1]:].tolist()
    assert streamed == full


def test_pad_id_beyond_the_vocabulary_is_harmless(tiny):
    """A tokenizer-added pad id (≥ vocab size) on masked positions must not poison the logits with NaN."""
    ids, mask = _left_padded([[1, 5, 9], [1, 22]], pad=61)  # vocab is 61: id 61 is out of the table
    out = generate(tiny, tiny.params, ids, mask, max_new_tokens=6, greedy=True, eos_token_ids=[], pad_token_id=61)
    ref, _ = _left_padded([[1, 5, 9], [1, 22]], pad=0)
    out0 = generate(tiny, tiny.params, ref, mask, max_new_tokens=6, greedy=True, eos_token_ids=[], pad_token_id=0)
    np.testing.assert_array_equal(out["sequences"][:, 3:], out0["sequences"][:, 3:])


def test_chat_cli_streams_and_handles_commands(stories_dir):
    import io

    from launch import chat

    out = io.StringIO()
    script = io.StringIO("Tell me a story\n/regenerate\n/reset\nHi\n/quit\n")
    assert chat.main(["--model", str(stories_dir), "--max_new_tokens", "12", "--temperature", "0"], stdin=script,
                     out=out) == 0
    text = out.getvalue()
    answers = [line for line in text.splitlines() if "ASSISTANT:" in line]
    assert len(answers) == 3 and all(len(a.split("ASSISTANT:", 1)[1].strip()) > 0 for a in answers)
    assert answers[0] == answers[1]  # greedy: /regenerate answers the same message again
    assert "(new conversation)" in text
    out = io.StringIO()
    assert chat.main(["--red", str(stories_dir), "--blue", str(stories_dir), "--max_new_tokens", "8"],
                     stdin=io.StringIO("Hello\n"), out=out) == 0
    assert "ASSISTANT [red]:" in out.getvalue() and "ASSISTANT [blue]:" in out.getvalue()


# ---------------------------------------------------------------------------------------------------- rollout fast path

ROLLOUT_MODELS = {
    "gqa_tied": dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    "mha_untied": dict(num_attention_heads=4, num_key_value_heads=4),
    "gqa_scanned_bias": dict(num_attention_heads=4, num_key_value_heads=1, scan_layers=True, attention_bias=True,
                             mlp_bias=True, hidden_act="gelu_pytorch_tanh"),
}


def _rollout_model(name, mesh=None):
    cfg = ModelConfig(vocab_size=67, hidden_size=32, intermediate_size=48, num_hidden_layers=3, initializer_range=0.3,
                      eos_token_id=2, pad_token_id=0, **ROLLOUT_MODELS[name])
    model = init_model(cfg, rng=3, mesh=mesh)
    # every tensor away from its init (biases 0, norm scales 1 would hide a bias or norm lost in the fusion)
    keys = iter(jax.random.split(jax.random.key(4), len(jax.tree.leaves(model.params))))
    model.params = jax.tree.map(lambda x: x + 0.2 * jax.random.normal(next(keys), x.shape, x.dtype), model.params)
    return model


@pytest.mark.parametrize("layout", ["fused_out_in", "fused"])
@pytest.mark.parametrize("name", sorted(ROLLOUT_MODELS))
def test_rollout_layout_is_the_same_function(name, layout):
    """Fused q|k|v and gate|up kernels, stored (out, in) or (in, out): forward ≤ 1e-5 of the training layout,
    greedy tokens identical."""
    model = _rollout_model(name)
    fused, fuse = model.rollout_as(layout)
    assert fused.config.out_in_kernels == (layout == "fused_out_in")
    fused_params = fuse(model.params)
    layers = fused_params["model"]["layers"]
    layer = layers if model.config.scan_layers else layers[0]
    assert set(layer["self_attn"]) == {"qkv_proj", "o_proj"} and set(layer["mlp"]) == {"gate_up_proj", "down_proj"}
    # "fused_out_in" stores every kernel (out, in), "fused" keeps (in, out): here the untied head (V, E) and o_proj
    flip = (lambda x: np.swapaxes(x, -1, -2)) if layout == "fused_out_in" else np.asarray
    if "lm_head" in model.params:
        np.testing.assert_array_equal(fused_params["lm_head"]["kernel"], flip(model.params["lm_head"]["kernel"]))
    np.testing.assert_array_equal(layer["self_attn"]["o_proj"]["kernel"], flip(
        (model.params["model"]["layers"] if model.config.scan_layers else model.params["model"]["layers"][0])[
            "self_attn"]["o_proj"]["kernel"]))
    ids, mask = _left_padded([[1, 5, 9, 13, 4, 7, 8], [1, 22], [1, 30, 31, 40]])
    np.testing.assert_allclose(np.asarray(fused.apply(fused_params, ids, mask)),
                               np.asarray(model.apply(model.params, ids, mask)), atol=1e-5, rtol=1e-5)
    kw = dict(max_new_tokens=12, greedy=True, eos_token_ids=[])
    want = generate(model, model.params, ids, mask, **kw)
    np.testing.assert_array_equal(generate(fused, fused_params, ids, mask, **kw)["sequences"], want["sequences"])
    np.testing.assert_array_equal(generate(model, model.params, ids, mask, rollout_layout=layout, **kw)["sequences"],
                                  want["sequences"])


@pytest.mark.parametrize("layout", ["fused_out_in", "none"])
@pytest.mark.parametrize("name", sorted(ROLLOUT_MODELS))
def test_a_bf16_rollout_copy_is_the_f32_model_within_bf16_rounding(name, layout):
    """rollout_dtype="bfloat16": the copy's kernels and embedding are bf16 (half the bytes a decode step reads),
    norms and biases as they were, logits f32 and within bf16 rounding of the f32 model's (these random models
    have near-tied logits, so their greedy tokens may part: the trained model below is the agreement test)."""
    model = _rollout_model(name)
    narrow, convert = model.rollout_as(layout, "bfloat16")
    assert narrow.config.matmul_dtype == narrow.config.param_dtype == "bfloat16"
    assert narrow.config.fused_projections == (layout != "none") and model.config.matmul_dtype is None
    params = convert(model.params)
    dtypes = {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): x.dtype
              for path, x in jax.tree_util.tree_leaves_with_path(params)}
    assert all((d == jnp.bfloat16) == (p.endswith("kernel") or p.endswith("embedding")) for p, d in dtypes.items())
    ids, mask = _left_padded([[1, 5, 9, 13, 4, 7, 8], [1, 22], [1, 30, 31, 40]])
    want, got = (np.asarray(m.apply(p, ids, mask)) for m, p in ((model, model.params), (narrow, params)))
    assert got.dtype == np.float32 and not np.array_equal(got, want)  # bf16 products, not an f32 copy
    np.testing.assert_allclose(got, want, atol=0.03 * np.ptp(want))


def test_a_bf16_rollout_of_a_trained_model_decodes_its_greedy_tokens(stories_dir):
    """The agreement a bf16 rollout must keep (as the bf16 model test above): stories260K's 32 greedy tokens are
    the f32 model's. On SmolLM2-135M, 8 prompts × 64 tokens agree 96 % (docs/bench_real_model_cpu.json)."""
    lm = load_causal_lm(stories_dir)
    for layout in ("fused_out_in", "none"):
        out = generate(lm, lm.params, np.array([[1]]), np.array([[1]]), max_new_tokens=32, greedy=True,
                       rollout_layout=layout, rollout_dtype="bfloat16")
        assert out["sequences"][0, 1:].tolist() == STORIES_GREEDY, layout


def test_rollout_dtype_setting_is_checked():
    """float32 / bfloat16 (and their short names); anything else is a one-line error, in the RL config a ConfigError
    naming the key."""
    from saferlhf_jax.errors import ConfigError
    from saferlhf_jax.generation.config import GenerationConfig
    from saferlhf_jax.models import rollout_dtype

    assert [rollout_dtype(v) for v in ("float32", "f32", " BF16 ", "bfloat16")] == \
        ["float32", "float32", "bfloat16", "bfloat16"]
    with pytest.raises(ValueError, match="rollout_dtype must be one of"):
        rollout_dtype("float16")
    cfg = importlib.import_module("configs.ppo").get_config("tiny")
    cfg.generation.rollout_dtype = "int8"
    tokenizer = type("T", (), {"eos_token_id": 2, "pad_token_id": 0, "unk_token_id": None})()
    with pytest.raises(ConfigError, match="generation.rollout_dtype must be one of"):
        GenerationConfig.from_config(cfg, tokenizer)


def test_rollout_layout_setting_is_checked():
    """True/False and their strings name the default layout and "none"; anything else is a one-line error."""
    from saferlhf_jax.models import rollout_layout

    assert [rollout_layout(v) for v in (True, False, "True", "false", "fused", " Fused_Out_In ", "none")] == \
        ["fused_out_in", "none", "fused_out_in", "none", "fused", "fused_out_in", "none"]
    with pytest.raises(ValueError, match="rollout_layout must be one of"):
        rollout_layout("transposed")


@pytest.mark.parametrize("name", ["mha_untied", "gqa_scanned_bias"])  # per-layer and stacked caches
def test_segmented_decode_gives_the_same_tokens(name):
    """decode_segment: the decode loop attends over a cache grown a few slots at a time (only the filled part is
    read) — the same tokens as one loop over the whole cache, with an EOS that stops a row mid-way and a budget
    that ends inside a segment (13 tokens in segments of 5: growth and a short last segment)."""
    model = _rollout_model(name)
    ids, mask = _left_padded([[1, 5, 9, 13, 4, 7, 8], [1, 22], [1, 30, 31, 40]])

    def run(segment, eos, **kw):
        return generate(model, model.params, ids, mask, max_new_tokens=13, greedy=True, decode_segment=segment,
                        eos_token_ids=eos, rollout_layout=segment > 0, **kw)

    whole = run(0, [])
    eos = [int(whole["sequences"][0, ids.shape[1] + 3])]  # row 0 stops at its fourth token
    for stop in ([], eos):
        for kw in ({}, {"budget": 7}):
            want = whole if not stop and not kw else run(0, stop, **kw)
            got = run(5, stop, **kw)
            for key in ("sequences", "response_lengths"):
                np.testing.assert_array_equal(got[key], want[key], err_msg=f"eos {stop} {kw}: {key}")
            if stop and not kw:
                assert want["response_lengths"][0] == 4


def test_rollout_layout_on_a_mesh_equals_one_device():
    if jax.device_count() < 8:
        pytest.skip("needs 8 simulated devices")
    mesh = make_mesh(2, 4, 1)
    single, sharded = _rollout_model("gqa_scanned_bias"), _rollout_model("gqa_scanned_bias", mesh)
    sharded.params = jax.device_put(single.params, sharded.param_shardings())
    rows = [[1, 3 + i, 7 + i][: 1 + i % 3] for i in range(8)]
    ids, mask = _left_padded(rows)
    kw = dict(max_new_tokens=10, greedy=True, eos_token_ids=[])
    want = generate(single, single.params, ids, mask, **kw)["sequences"]
    fused, fuse = sharded.rollout
    fused_params = fuse(sharded.params)
    kernel = fused_params["model"]["layers"]["self_attn"]["qkv_proj"]["kernel"]
    assert kernel.sharding.spec[2] == "fsdp"  # stored (layers, out, in): the input (embed) axis keeps its FSDP split
    np.testing.assert_array_equal(generate(fused, fused_params, ids, mask, mesh=mesh, **kw)["sequences"], want)
    # and a decode loop in segments over a growing sharded cache
    np.testing.assert_array_equal(generate(fused, fused_params, ids, mask, mesh=mesh, decode_segment=3,
                                           **kw)["sequences"], want)


@pytest.mark.parametrize("chunk", [16, 7])
def test_chunked_prefill_equals_one_pass(tiny, chunk):
    """A 40-token prompt in chunks of 16 (or 7: a leading remainder, then a scan) = one pass: last logits and the
    greedy continuation, with left padding that fills whole chunks."""
    rng = np.random.default_rng(0)
    rows = [rng.integers(3, 61, n).tolist() for n in (40, 1, 23)]
    ids, mask = _left_padded(rows)
    kw = dict(max_new_tokens=8, greedy=True, eos_token_ids=[])
    whole = generate(tiny, tiny.params, ids, mask, prefill_chunk=0, **kw)
    chunked = generate(tiny, tiny.params, ids, mask, prefill_chunk=chunk, **kw)
    np.testing.assert_array_equal(chunked["sequences"], whole["sequences"])
    from saferlhf_jax.generation import sampler

    states = []
    for c in (0, chunk):
        settings = sampler.SamplingSettings(max_new_tokens=8, greedy=True, prefill_chunk=c)
        progs = sampler._programs(tiny, settings, 64 + 8)
        pad = 64 - ids.shape[1]
        states.append(progs.prefill(tiny.params, np.pad(ids, ((0, 0), (pad, 0))), np.pad(mask, ((0, 0), (pad, 0))),
                                    np.int32(8)))
    np.testing.assert_allclose(np.asarray(states[1]["logits"]), np.asarray(states[0]["logits"]), atol=1e-5)


def test_top_k_sampling_draws_from_the_filtered_distribution():
    """The top-k path (no vocabulary sort, noise for k values only) samples softmax over the kept tokens."""
    from saferlhf_jax.generation import choose_tokens

    probs = np.array([0.05, 0.4, 0.02, 0.3, 0.2, 0.03])
    logits = jnp.log(jnp.asarray(np.tile(probs, (4000, 1)), jnp.float32))
    draw = lambda **kw: np.asarray(choose_tokens(logits, jax.random.key(1), greedy=False, temperature=1.0, **kw))  # noqa: E731
    counts = np.bincount(draw(top_k=3, top_p=1.0), minlength=6) / 4000
    np.testing.assert_allclose(counts[[1, 3, 4]], np.array([0.4, 0.3, 0.2]) / 0.9, atol=0.03)
    assert counts[[0, 2, 5]].sum() == 0
    counts = np.bincount(draw(top_k=3, top_p=0.5), minlength=6) / 4000  # within the top 3: 0.44 + 0.33 ≥ 0.5
    np.testing.assert_allclose(counts[[1, 3]], [4 / 7, 3 / 7], atol=0.03)
    assert counts[[0, 2, 4, 5]].sum() == 0
    np.testing.assert_array_equal(draw(top_k=1, top_p=1.0), np.ones(4000))  # top-1 = argmax


def test_bfloat16_model_decodes_on_cpu(tiny):
    """A bf16 model with a bf16 KV cache (keys stored slots-last) decodes on XLA CPU, whose dot kernel for that
    product has no bf16 × bf16 → f32 (the operands go in as float32 there), and gives the float32 model's greedy
    tokens on this tiny model."""
    bf16_model = init_model(tiny.config.replace(dtype="bfloat16", param_dtype="bfloat16"), "causal_lm", rng=11)
    bf16_params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), tiny.params)
    ids, mask = _left_padded([[1, 5, 9], [1, 22]])
    kw = dict(max_new_tokens=8, greedy=True, eos_token_ids=[])
    bf16 = generate(bf16_model, bf16_params, ids, mask, cache_dtype="bfloat16", **kw)["sequences"]
    f32 = generate(tiny, tiny.params, ids, mask, **kw)["sequences"]
    np.testing.assert_array_equal(bf16, f32)
