"""Llama / score models: parity with transformers PyTorch, HF round trips, stories260K, sharding."""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saferlhf_jax import models
from saferlhf_jax.models import ModelConfig, init_model, load_causal_lm, load_score_model, save_pretrained
from saferlhf_jax.parallel import make_mesh

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

STORIES_GREEDY = [403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338, 401, 396, 267, 337,
                  410, 408, 419, 292, 411, 322, 265, 282, 295, 433, 426, 385]

HF_CONFIGS = {
    "gqa_untied": dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False),
    "mha_tied": dict(num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True),
    "llama3_rope": dict(num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=False,
                        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                         "original_max_position_embeddings": 16}),
    "bias_headdim": dict(num_attention_heads=2, num_key_value_heads=1, head_dim=24, attention_bias=True,
                         mlp_bias=True),
}


def _hf_model(tmp_path: pathlib.Path, name: str, seed: int = 0):
    torch.manual_seed(seed)
    kwargs = dict(vocab_size=101, hidden_size=48, intermediate_size=80, num_hidden_layers=3, rms_norm_eps=1e-5,
                  max_position_embeddings=64, initializer_range=0.1, bos_token_id=1, eos_token_id=2)
    kwargs.update(HF_CONFIGS[name])
    config = transformers.LlamaConfig(**kwargs)
    hf = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # non-trivial norm scales and biases
        for pname, p in hf.named_parameters():
            if "norm" in pname or pname.endswith("bias"):
                p.add_(0.3 * torch.randn_like(p))
    out = tmp_path / name
    hf.save_pretrained(out, safe_serialization=True)
    return hf, out


def _hf_logits(hf, ids, mask=None):
    with torch.no_grad():
        kwargs = {} if mask is None else {"attention_mask": torch.tensor(mask)}
        return hf(torch.tensor(ids), **kwargs).logits.float().numpy()


@pytest.mark.parametrize("name", list(HF_CONFIGS))
def test_logits_match_transformers(tmp_path, name):
    hf, path = _hf_model(tmp_path, name)
    ours = load_causal_lm(path)
    ids = np.random.default_rng(1).integers(3, 101, (3, 20))
    ref = _hf_logits(hf, ids)
    got = np.asarray(ours.apply(ours.params, ids, np.ones_like(ids)))
    assert got.dtype == np.float32
    assert np.abs(got - ref).max() <= 1e-4, np.abs(got - ref).max()


@pytest.mark.parametrize("name", ["gqa_untied", "llama3_rope"])
def test_left_padded_rows_equal_unpadded(tmp_path, name):
    hf, path = _hf_model(tmp_path, name)
    ours = load_causal_lm(path)
    rng = np.random.default_rng(2)
    lengths = [12, 7, 3]
    width = 12
    ids = np.zeros((3, width), np.int64)
    mask = np.zeros((3, width), np.int64)
    for b, n in enumerate(lengths):
        ids[b, width - n:] = rng.integers(3, 101, n)
        mask[b, width - n:] = 1
    padded = np.asarray(ours.apply(ours.params, ids, mask))
    for b, n in enumerate(lengths):
        row = ids[b:b + 1, width - n:]
        alone = _hf_logits(hf, row)[0]
        assert np.abs(padded[b, width - n:] - alone).max() <= 1e-4
    assert np.isfinite(padded).all()  # pad positions stay finite


def test_legacy_config_form_and_scan_remat(tmp_path):
    """Older config.json (rope_theta + rope_scaling with 'type') loads the same; scan/remat give the same logits."""
    hf, path = _hf_model(tmp_path, "llama3_rope")
    raw = json.loads((path / "config.json").read_text())
    rope = raw.pop("rope_parameters")
    raw["rope_theta"] = rope.pop("rope_theta")
    rope["type"] = rope.pop("rope_type")
    raw["rope_scaling"] = rope
    (path / "config.json").write_text(json.dumps(raw))
    ids = np.random.default_rng(3).integers(3, 101, (2, 16))
    ref = _hf_logits(hf, ids)
    for overrides in ({}, {"scan_layers": True}, {"scan_layers": True, "remat_policy": "full"},
                      {"remat_policy": "dots"}):
        m = load_causal_lm(path, **overrides)
        assert m.config.rope_scaling_dict["rope_type"] == "llama3"
        got = np.asarray(m.apply(m.params, ids, np.ones_like(ids)))
        assert np.abs(got - ref).max() <= 1e-4, overrides


def test_scan_gradients_match_unrolled(tmp_path):
    _, path = _hf_model(tmp_path, "gqa_untied")
    ids = np.random.default_rng(4).integers(3, 101, (2, 10))
    mask = np.ones_like(ids)
    grads = []
    for overrides in ({}, {"scan_layers": True, "remat_policy": "full"}):
        m = load_causal_lm(path, **overrides)
        g = jax.grad(lambda p: jnp.mean(m.apply(p, ids, mask) ** 2))(m.params)
        grads.append(models.to_hf_tensors(m, g))
    for k in grads[0]:
        np.testing.assert_allclose(grads[0][k], grads[1][k], atol=1e-5, err_msg=k)


@pytest.mark.parametrize("name", ["gqa_untied", "bias_headdim"])
def test_gradients_match_transformers(tmp_path, name):
    """Parameter gradients of a masked loss equal PyTorch autograd's (the SwiGLU custom backward included; the
    biased MLP takes plain autodiff), unrolled and with scan + 'dots' remat."""
    hf, path = _hf_model(tmp_path, name)
    rng = np.random.default_rng(5)
    ids = rng.integers(3, 101, (2, 12))
    mask = np.ones_like(ids)
    mask[1, :4] = 0  # a left-padded row
    weights = rng.normal(size=(2, 12, 101)).astype(np.float32) * mask[..., None]
    hf.zero_grad()
    logits = hf(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
    (logits * torch.tensor(weights)).sum().backward()
    ref = {k: p.grad.numpy() for k, p in hf.named_parameters()}
    for overrides in ({}, {"scan_layers": True, "remat_policy": "dots"}):
        m = load_causal_lm(path, **overrides)
        g = jax.grad(lambda p: jnp.sum(m.apply(p, ids, mask) * weights))(m.params)
        got = models.to_hf_tensors(m, g)
        for k, want in ref.items():
            scale = max(float(np.abs(want).max()), 1e-3)
            assert np.abs(got[k] - want).max() <= 2e-4 * scale, (overrides, k)


def test_swiglu_backward_equals_autodiff():
    """The hand-written SwiGLU vjp equals autodiff of the same formula: (B, T, E) and (N, E) inputs, f32 and bf16."""
    from saferlhf_jax.models.llama import swiglu

    def plain(x, wg, wu, wd):
        return jnp.dot(jax.nn.silu(jnp.dot(x, wg)) * jnp.dot(x, wu), wd)

    keys = jax.random.split(jax.random.key(0), 5)
    for shape, dtype, tol in (((2, 5, 16), jnp.float32, 1e-5), ((7, 16), jnp.float32, 1e-5),
                              ((2, 5, 16), jnp.bfloat16, 3e-2)):
        x = jax.random.normal(keys[0], shape, dtype)
        ws = [(jax.random.normal(k, s) * 0.3).astype(dtype) for k, s in zip(keys[1:4], ((16, 24), (16, 24), (24, 16)))]
        cot = jax.random.normal(keys[4], shape, dtype)
        for fn in (swiglu, plain):
            out, vjp = jax.vjp(fn, x, *ws)
            if fn is swiglu:
                got = (out, *vjp(cot))
            else:
                want = (out, *vjp(cot))
        for a, b in zip(got, want):
            assert a.dtype == b.dtype and a.shape == b.shape
            err = float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))))
            assert err <= tol * max(1.0, float(jnp.max(jnp.abs(b.astype(jnp.float32))))), (shape, dtype, err)


def test_save_pretrained_round_trip_through_transformers(tmp_path):
    cfg = ModelConfig(vocab_size=67, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, initializer_range=0.2, rope_theta=5000.0,
                      rope_scaling={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 8})
    ours = init_model(cfg, "causal_lm", rng=5)
    save_pretrained(ours, ours.params, tmp_path / "export")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export", dtype=torch.float32).eval()
    ids = np.random.default_rng(6).integers(0, 67, (2, 12))
    got = np.asarray(ours.apply(ours.params, ids, np.ones_like(ids)))
    assert np.abs(got - _hf_logits(hf, ids)).max() <= 1e-4
    again = load_causal_lm(tmp_path / "export")
    np.testing.assert_array_equal(np.asarray(again.apply(again.params, ids, np.ones_like(ids))), got)


def test_score_model_from_causal_lm_and_round_trip(tmp_path, stories_dir):
    rm = load_score_model(stories_dir, score_type="cost", normalizer_type="ExponentialMovingAverage", momentum=0.9)
    head = np.asarray(rm.params["score_head"]["kernel"])
    assert head.shape == (64, 1) and 0.01 < head.std() < 0.03  # N(0, initializer_range=0.02)
    assert np.all(np.asarray(rm.params["score_head"]["bias"]) == 0)
    assert "lm_head" not in rm.params
    # end_scores are the scores at the last real token of each row (left or right padding)
    ids = np.array([[1, 403, 407, 261, 0, 0], [0, 0, 1, 403, 407, 261]])
    mask = (np.arange(6)[None] < 4) * 1
    mask = np.stack([mask[0], mask[0][::-1]])
    scores, end = rm.apply(rm.params, ids, mask)
    assert scores.shape == (2, 6, 1) and end.shape == (2, 1)
    np.testing.assert_allclose(end[:, 0], [scores[0, 3, 0], scores[1, 5, 0]])
    np.testing.assert_allclose(end[0], end[1], atol=1e-5)  # same tokens, mask-aware positions
    # normalizer stats and head survive save → load
    params = dict(rm.params)
    params["normalizer"] = {"mean": jnp.array([0.5]), "var": jnp.array([4.0]), "count": jnp.array(10.0)}
    save_pretrained(rm, params, tmp_path / "cm")
    cfg = json.loads((tmp_path / "cm" / "config.json").read_text())
    assert cfg["score_type"] == "cost" and cfg["mean"] == [0.5] and cfg["var"] == [4.0]
    again = load_score_model(tmp_path / "cm")
    assert again.config.score_type == "cost" and again.config.normalizer_type == "ExponentialMovingAverage"
    np.testing.assert_array_equal(np.asarray(again.params["score_head"]["kernel"]), head)
    np.testing.assert_allclose(np.asarray(again.params["normalizer"]["var"]), [4.0])
    _, end_again = again.apply(again.params, ids, mask)
    np.testing.assert_array_equal(np.asarray(end_again), np.asarray(end))
    # do_normalize applies the 'scale' function of a cost model with the stored stats
    normed = load_score_model(tmp_path / "cm", do_normalize=True)
    _, end_normed = normed.apply(normed.params, ids, mask)
    np.testing.assert_allclose(np.asarray(end_normed), np.asarray(end) / (2.0 + 1e-8), rtol=1e-6)
    assert (tmp_path / "cm" / "tokenizer.json").is_file()


def test_stories260k_greedy_from_bos(stories_dir):
    lm = load_causal_lm(stories_dir)
    ids = np.zeros((1, 33), np.int32)  # plain uncached loop over a fixed-width buffer (one compile);
    ids[0, 0] = 1                      # causal attention: tokens right of t never change logits at t
    for t in range(32):
        logits = lm.apply(lm.params, ids, np.ones_like(ids))
        ids[0, t + 1] = int(np.argmax(np.asarray(logits[0, t])))
    assert ids[0, 1:].tolist() == STORIES_GREEDY
    tok = transformers.AutoTokenizer.from_pretrained(stories_dir)
    assert tok.decode(ids[0], skip_special_tokens=True).startswith(
        "Once upon a time, there was a little girl named Lily.")
    assert tok("Once upon a time").input_ids == [1] + STORIES_GREEDY[:4]


def test_convert_llama2c_cli_reproduces_shipped_model(tmp_path, test_data, stories_dir):
    from launch import convert_llama2c
    from saferlhf_jax.models import safetensors_io

    rc = convert_llama2c.main(["--checkpoint", str(test_data / "llama2c" / "stories260K.bin"),
                               "--tokenizer", str(test_data / "llama2c" / "tok512.bin"), "--output", str(tmp_path)])
    assert rc == 0
    fresh = safetensors_io.load_dir(tmp_path)
    shipped = safetensors_io.load_dir(stories_dir)
    assert set(fresh) == set(shipped)
    for k in fresh:
        np.testing.assert_array_equal(fresh[k], shipped[k])
    assert json.loads((tmp_path / "tokenizer.json").read_text()) == json.loads(
        (stories_dir / "tokenizer.json").read_text())
    assert convert_llama2c.main(["--checkpoint", str(tmp_path / "nope.bin"), "--tokenizer", "x",
                                 "--output", str(tmp_path / "o")]) == 2  # every CLI: exit 2 with one "error:" line


def test_llama2_tokenizer_offline_round_trip(test_data):
    tok = transformers.AutoTokenizer.from_pretrained(test_data / "llama2_tokenizer")
    ids = tok("Hello world, how are you?").input_ids
    assert ids == [1, 15043, 3186, 29892, 920, 526, 366, 29973]
    for text in ["BEGINNING OF CONVERSATION: USER: How do I bake bread? ASSISTANT:", "Ünïcödé — 数学 🙂 tabs\tand\nnewlines"]:
        assert tok.decode(tok(text).input_ids, skip_special_tokens=True) == text


@pytest.mark.parametrize("shape", [(2, 2, 2), (1, 8, 1)], ids=["d2f2t2", "fsdp8"])
@pytest.mark.parametrize("kind", ["causal_lm", "score"])
def test_sharded_forward_equals_single_device(shape, kind):
    if jax.device_count() < 8:
        pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=8")
    cfg = ModelConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, initializer_range=0.1)
    single = init_model(cfg, kind, rng=7)
    mesh = make_mesh(*shape)
    sharded = init_model(cfg, kind, rng=7, mesh=mesh)
    # identical values, but really distributed
    emb = sharded.params["model"]["embed_tokens"]["embedding"]
    np.testing.assert_array_equal(np.asarray(emb), np.asarray(single.params["model"]["embed_tokens"]["embedding"]))
    assert len(emb.sharding.device_set) == 8
    assert not emb.sharding.is_fully_replicated
    q = sharded.params["model"]["layers"][0]["self_attn"]["q_proj"]["kernel"]
    expected_spec = {(2, 2, 2): ("fsdp", "tensor"), (1, 8, 1): ("fsdp", None)}[shape]
    assert tuple(q.sharding.spec) == expected_spec
    assert q.addressable_shards[0].data.size == q.size // (8 if shape == (1, 8, 1) else 4)

    ids = np.random.default_rng(8).integers(0, 128, (8, 16))
    mask = np.ones_like(ids)
    mask[:3, :5] = 0
    from saferlhf_jax.parallel import shard_batch

    batch = shard_batch({"ids": ids, "mask": mask}, mesh)
    ref = single.apply(single.params, ids, mask)
    got = sharded.apply(sharded.params, batch["ids"], batch["mask"])
    for r, g in zip(jax.tree.leaves(ref), jax.tree.leaves(got)):
        assert np.abs(np.asarray(r) - np.asarray(g)).max() <= 1e-5


def test_load_onto_mesh_and_errors(tmp_path, stories_dir):
    if jax.device_count() < 8:
        pytest.skip("needs 8 simulated devices")
    mesh = make_mesh(fsdp=8)
    lm = load_causal_lm(stories_dir, mesh=mesh)
    emb = lm.params["model"]["embed_tokens"]["embedding"]
    assert tuple(emb.sharding.spec) == (None, "fsdp")
    single = load_causal_lm(stories_dir)
    ids = np.array([[1, 403, 407, 261, 378, 432, 383, 286]] * 8)
    np.testing.assert_allclose(np.asarray(lm.apply(lm.params, ids, np.ones_like(ids))),
                               np.asarray(single.apply(single.params, ids, np.ones_like(ids))), rtol=2e-5, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        load_causal_lm(tmp_path / "missing")
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "config.json").write_text((stories_dir / "config.json").read_text())
    (tmp_path / "pickled" / "pytorch_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(FileNotFoundError, match="never unpickled"):
        load_causal_lm(tmp_path / "pickled")
    with pytest.raises(ValueError, match="mesh"):
        make_mesh(data=3, fsdp=-1)
    with pytest.raises(ValueError, match="only 8 devices"):
        make_mesh(data=2, fsdp=8)
    assert make_mesh(fsdp=2).devices.size == 2  # a subset is allowed
    bad = json.loads((stories_dir / "config.json").read_text())
    bad["num_key_value_heads"] = 3
    with pytest.raises(ValueError, match="num_key_value_heads"):
        ModelConfig.from_hf_dict(bad)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_streaming_load_of_sharded_checkpoint_equals_the_files(tmp_path, dtype):
    """A bf16 checkpoint split over several files (with its index) loads tensor by tensor onto a (2, 2, 2) mesh,
    layers scanned or not: every shard equals the file's tensor (transposed for kernels) in the target dtype."""
    if jax.device_count() < 8:
        pytest.skip("needs 8 simulated devices")
    from saferlhf_jax.models import safetensors_io

    cfg = ModelConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, initializer_range=0.1)
    src = init_model(cfg, "causal_lm", rng=3)
    save_pretrained(src, src.params, tmp_path / "one")
    tensors = {k: np.asarray(v).astype(jnp.bfloat16) for k, v in safetensors_io.load_dir(tmp_path / "one").items()}
    (tmp_path / "split").mkdir()
    (tmp_path / "split" / "config.json").write_text((tmp_path / "one" / "config.json").read_text())
    files = safetensors_io.save_sharded(iter(sorted(tensors.items())), tmp_path / "split", max_file_bytes=40_000)
    assert len(files) >= 3
    mesh = make_mesh(2, 2, 2)
    for scan in (False, True):
        lm = load_causal_lm(tmp_path / "split", dtype=jnp.dtype(dtype), mesh=mesh, scan_layers=scan)
        for path, leaf in jax.tree_util.tree_flatten_with_path(lm.params)[0]:
            names = models.api._path_names(path)
            assert leaf.dtype == jnp.dtype(dtype) and len(leaf.sharding.device_set) == 8
            per_layer = models.api._layer_paths(names, lm.config)
            want = []
            for lp in per_layer:
                name, transpose = models.api.hf_name(lp)
                want.append(tensors[name].T if transpose else tensors[name])
            want = np.stack(want) if len(per_layer) > 1 else want[0]
            np.testing.assert_array_equal(np.asarray(leaf.astype(jnp.float32)), want.astype(np.float32))
    ids = np.array([[1, 5, 9, 33, 2, 7, 8, 60]] * 8)
    scanned = load_causal_lm(tmp_path / "split", dtype=jnp.float32, mesh=mesh, scan_layers=True)
    single = load_causal_lm(tmp_path / "split", dtype=jnp.float32)
    np.testing.assert_allclose(np.asarray(scanned.apply(scanned.params, ids, np.ones_like(ids))),
                               np.asarray(single.apply(single.params, ids, np.ones_like(ids))), rtol=2e-5, atol=2e-5)
