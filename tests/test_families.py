"""Model families against transformers PyTorch: Llama with biases and GeGLU, Mistral and Qwen2 with sliding windows,
Qwen3, Gemma-2, Gemma-3 text. Every tensor is perturbed away from its default init (transformers starts biases at 0
and norm scales at 1 — Gemma's at 0 — which would hide a dropped bias or a wrong norm), sequences are longer than the
windows, soft-capping is active; left-padded rows must equal the unpadded ones."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from saferlhf_jax import models
from saferlhf_jax.generation import generate
from saferlhf_jax.models import load_causal_lm, load_score_model, save_pretrained
from saferlhf_jax.parallel import make_mesh

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

COMMON = dict(vocab_size=101, hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, rms_norm_eps=1e-5, max_position_embeddings=64, initializer_range=0.1,
              bos_token_id=1, eos_token_id=2, pad_token_id=0)
FAMILIES = {
    "llama_geglu_bias": ("LlamaConfig", "LlamaForCausalLM",
                         dict(hidden_act="gelu_pytorch_tanh", attention_bias=True, mlp_bias=True)),
    "mistral_window": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=4, head_dim=12)),
    "qwen2_window": ("Qwen2Config", "Qwen2ForCausalLM", dict(use_sliding_window=True, sliding_window=4,
                                                              max_window_layers=1, tie_word_embeddings=False)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=16, use_sliding_window=True, sliding_window=5,
                                                      max_window_layers=2, attention_bias=True)),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(head_dim=16, query_pre_attn_scalar=20,
                                                         attn_logit_softcapping=2.0, final_logit_softcapping=3.0,
                                                         sliding_window=4)),
    "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(
        head_dim=16, query_pre_attn_scalar=24, sliding_window=4, sliding_window_pattern=2,
        final_logit_softcapping=4.0, rope_parameters={
            "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 20000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 500.0}})),
}


def _hf(tmp_path, name, seed=0):
    config_cls, model_cls, extra = FAMILIES[name]
    torch.manual_seed(seed)
    config = getattr(transformers, config_cls)(**COMMON, **extra)
    config._attn_implementation = "eager"
    hf = getattr(transformers, model_cls)(config).eval()
    with torch.no_grad():  # every tensor away from its default init (biases 0, norm scales 1 or Gemma's 0)
        for pname, p in hf.named_parameters():
            p.add_((0.3 if ("norm" in pname or pname.endswith("bias")) else 0.05) * torch.randn_like(p))
    out = tmp_path / name
    hf.save_pretrained(out, safe_serialization=True)
    return hf, out


def _hf_logits(hf, ids):
    with torch.no_grad():
        return hf(torch.tensor(ids)).logits.float().numpy()


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    hf, path = _hf(tmp_path_factory.mktemp(request.param), request.param)
    return request.param, hf, path


def test_logits_match_transformers_with_left_padding(family):
    name, hf, path = family
    ours = load_causal_lm(path)
    rng = np.random.default_rng(1)
    lengths = [10, 7, 3]  # longer than every window
    rows = [rng.integers(3, 101, n).astype(np.int64) for n in lengths]
    width = max(lengths)
    ids = np.zeros((3, width), np.int32)
    mask = np.zeros((3, width), bool)
    for i, r in enumerate(rows):
        ids[i, width - len(r):], mask[i, width - len(r):] = r, True
    got = np.asarray(ours.apply(ours.params, ids, mask))
    for i, r in enumerate(rows):
        want = _hf_logits(hf, r[None])[0]
        np.testing.assert_allclose(got[i, width - len(r):], want, atol=1e-4, rtol=1e-4, err_msg=f"{name} row {i}")
    assert ours.config.model_type == json.loads((path / "config.json").read_text())["model_type"]


def test_round_trip_greedy_and_sharded(family, tmp_path):
    name, hf, path = family
    ours = load_causal_lm(path)
    save_pretrained(ours, ours.params, tmp_path / "export")
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export", attn_implementation="eager").eval()
    ids = np.random.default_rng(2).integers(3, 101, (1, 9))
    np.testing.assert_allclose(_hf_logits(again, ids), _hf_logits(hf, ids), atol=1e-5)
    # greedy generation: ours (KV cache, windows over cache slots) == transformers' generate
    prompt = np.array([[1, 17, 33, 5, 71]], np.int32)
    with torch.no_grad():
        want = hf.generate(torch.tensor(prompt, dtype=torch.long), max_new_tokens=8, do_sample=False,
                           eos_token_id=None, pad_token_id=0).numpy()[0, 5:]
    got = generate(ours, ours.params, prompt, np.ones_like(prompt), max_new_tokens=8, greedy=True,
                   eos_token_ids=[])["sequences"][0, 5:]
    assert got.tolist() == want.tolist(), name
    # the rollout fast path (fused kernels, prefill in chunks shorter than the window) gives the same tokens
    fast = generate(ours, ours.params, prompt, np.ones_like(prompt), max_new_tokens=8, greedy=True, eos_token_ids=[],
                    rollout_layout=True, prefill_chunk=2)["sequences"][0, 5:]
    assert fast.tolist() == want.tolist(), name
    fused, fuse = ours.rollout
    mask = np.ones_like(ids, bool)
    np.testing.assert_allclose(fused.apply(fuse(ours.params), ids, mask), ours.apply(ours.params, ids, mask),
                               atol=1e-5, rtol=1e-5)
    if jax.device_count() >= 8:
        sharded = load_causal_lm(path, mesh=make_mesh(fsdp=4, tensor=2))
        mask = np.ones_like(ids, bool)
        np.testing.assert_allclose(sharded.apply(sharded.params, ids, mask), ours.apply(ours.params, ids, mask),
                                   atol=2e-5)


@pytest.mark.parametrize("kind", ["reward", "cost"])
def test_score_export_loads_as_sequence_classification(tmp_path, stories_dir, kind):
    """layout='hf' → AutoModelForSequenceClassification gives our end scores (last-token pooling on pad_token_id);
    both layouts load back here; the sign convention is in the config."""
    from saferlhf_jax.data.tokenizer import load_tokenizer

    tok = load_tokenizer(stories_dir)
    sm = load_score_model(stories_dir, score_type=kind, score_bias=False, rng=4)
    sm, params = models.resize_token_embeddings(sm, sm.params, len(tok))
    for layout in ("hf", "reference"):
        save_pretrained(sm, params, tmp_path / layout, layout=layout, pad_token_id=tok.pad_token_id)
    ids = np.full((2, 8), tok.pad_token_id, np.int32)
    ids[0, :6], ids[1, :8] = [1, 403, 407, 261, 378, 2], [1, 432, 383, 286, 261, 376, 298, 2]
    mask = ids != tok.pad_token_id
    ours = np.asarray(sm.apply(params, ids, mask)[1][:, 0])
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        theirs = hf(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask)).logits[:, 0].numpy()
    np.testing.assert_allclose(theirs, ours, atol=1e-5)
    for layout in ("hf", "reference"):
        back = load_score_model(tmp_path / layout)
        np.testing.assert_allclose(np.asarray(back.apply(back.params, ids, mask)[1][:, 0]), ours, atol=1e-6)
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForSequenceClassification"] and cfg["num_labels"] == 1
    assert ("unsafe" in cfg["score_convention"]) == (kind == "cost")
    with pytest.raises(ValueError, match="has a bias"):
        biased = load_score_model(stories_dir, score_type=kind, rng=4)
        biased.params["score_head"]["bias"] = biased.params["score_head"]["bias"] + 0.5
        save_pretrained(biased, biased.params, tmp_path / "biased", layout="hf")


def test_unknown_tensors_architectures_and_truncation_are_refused(tmp_path, stories_dir):
    import shutil

    from saferlhf_jax.errors import ModelError
    from saferlhf_jax.models import safetensors_io

    d = tmp_path / "extra"
    shutil.copytree(stories_dir, d)
    tensors = dict(safetensors_io.load_dir(d))
    tensors["model.layers.0.self_attn.q_proj.bias"] = np.ones(tensors["model.layers.0.self_attn.q_proj.weight"]
                                                              .shape[0], np.float32)
    (d / "model.safetensors").unlink()
    safetensors_io.save_file({k: np.asarray(v) for k, v in tensors.items()}, d / "model.safetensors")
    with pytest.raises(ModelError, match="would not use, e.g. model.layers.0.self_attn.q_proj.bias"):
        load_causal_lm(d)  # a llama config without attention_bias: the bias would have been dropped
    cfg = json.loads((stories_dir / "config.json").read_text())
    for patch, message in ((dict(architectures=["GPT2LMHeadModel"]), "not a llama model"),
                           (dict(hidden_act="relu2"), "not supported"),
                           (dict(sliding_window=16), "does not implement"),
                           (dict(rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}), "yarn")):
        bad = tmp_path / f"bad_{len(message)}"
        shutil.copytree(stories_dir, bad)
        (bad / "config.json").write_text(json.dumps({**cfg, **patch}))
        with pytest.raises(ModelError, match=message):
            load_causal_lm(bad)
    cut = tmp_path / "cut"
    shutil.copytree(stories_dir, cut)
    blob = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(blob[: len(blob) - 1000])
    with pytest.raises(ModelError, match="is truncated"):
        load_causal_lm(cut)


def test_a_reward_model_whose_tokenizer_pads_with_eos_exports_the_same_end_scores(tmp_path, stories_dir):
    """A tokenizer that pads with its EOS (Llama-3 style), a reward model trained with it and exported with
    export_format='hf': transformers pools at the last token that is not the pad id — it was the token before the
    EOS (end scores off by 0.03). The run gives the tokenizer a pad of its own, so transformers' scores on the
    exported directory, padded with the exported tokenizer, are ours at the EOS."""
    import shutil

    from launch.common import run_training_cli

    base = tmp_path / "pad_is_eos"
    shutil.copytree(stories_dir, base)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        cfg = json.loads((base / name).read_text())
        cfg["pad_token"] = "</s>"
        (base / name).write_text(json.dumps(cfg))
    out = tmp_path / "rm"
    argv = ["prog", "--config=configs/reward.py:tiny", f"--config.output_dir={out}",
            f"--config.model_name_or_path={base}", "--config.export_format=hf", "--config.logging.progress=False", "--config.logging.tensorboard=False",
            "--config.mesh.fsdp=1", "--config.train.max_steps=2", "--config.eval_datasets=()",
            "--config.train_datasets=PKU-SafeRLHF/train:32/-1", "--config.data.max_length=128",
            "--config.data.buckets=(128,)"]
    assert run_training_cli("reward", "", argv) == 0
    tok = transformers.AutoTokenizer.from_pretrained(out / "export")
    assert tok.pad_token_id != tok.eos_token_id
    rows = [[1, 403, 407, 261, 378, 2], [1, 432, 383, 286, 261, 376, 298, 2]]  # each ends with its EOS
    ids = np.full((2, 8), tok.pad_token_id, np.int32)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = row
    mask = ids != tok.pad_token_id
    ours = load_score_model(out / "export")
    want = np.asarray(ours.apply(ours.params, ids, mask)[1][:, 0])
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(out / "export").eval()
    with torch.no_grad():
        theirs = hf(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask)).logits[:, 0].numpy()
    np.testing.assert_allclose(theirs, want, atol=1e-5)
