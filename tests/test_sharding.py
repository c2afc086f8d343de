"""Sharding declared with the shapes, memory levers, and the state layout shared by runs and the planner."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from saferlhf_jax import models, ops
from saferlhf_jax.algorithms import rl
from saferlhf_jax.models import ModelConfig, init_model
from saferlhf_jax.parallel import make_mesh, mesh as mesh_lib

BASE = dict(vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, initializer_range=0.3, eos_token_id=2, pad_token_id=0)


def _eight():
    if jax.device_count() < 8:
        pytest.skip("needs 8 simulated devices")


@pytest.mark.parametrize("kind", ["causal_lm", "score"])
@pytest.mark.parametrize("extra", [{}, {"scan_layers": True}, {"attention_bias": True, "mlp_bias": True},
                                   {"tie_word_embeddings": True}])
def test_every_parameter_declares_its_axes(kind, extra):
    cfg = ModelConfig(**BASE, **extra)
    axes = models.param_logical_axes(cfg, kind)
    graphdef, abstract, _ = models.api.abstract_model(cfg, kind)
    flat_axes = dict(jax.tree_util.tree_flatten_with_path(axes, is_leaf=lambda a: isinstance(a, tuple))[0])
    flat = jax.tree_util.tree_flatten_with_path(abstract)[0]
    assert len(flat) == len(flat_axes)
    for path, x in flat:
        a = flat_axes[path]
        assert len(a) == len(x.shape) and all(isinstance(n, str) for n in a), (path, a)
    layers = axes["model"]["layers"]
    q = layers["self_attn"]["q_proj"]["kernel"] if cfg.scan_layers else layers[0]["self_attn"]["q_proj"]["kernel"]
    assert q == (("layers", "embed", "heads") if cfg.scan_layers else ("embed", "heads"))  # the scan adds 'layers'
    assert axes["model"]["embed_tokens"]["embedding"] == ("vocab", "embed")


def test_a_parameter_without_axes_is_an_error():
    class Bare(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.zeros((3, 4)))

    with pytest.raises(ValueError, match="declares no logical axes"):
        models.api._declared_axes("w", nnx.split(Bare())[1]["w"])


def test_rules_from_config_change_the_placement():
    _eight()
    import sys

    sys.path.insert(0, ".")
    from configs import sft

    mesh = make_mesh(fsdp=4, tensor=2)
    cfg = ModelConfig(**BASE)
    conf = sft.get_config("tiny")
    default = models.param_shardings(cfg, "causal_lm", mesh, mesh_lib.rules_from_config(conf.mesh))
    conf.mesh.rules.mlp = "fsdp"
    conf.mesh.rules.embed = ""
    moved = models.param_shardings(cfg, "causal_lm", mesh, mesh_lib.rules_from_config(conf.mesh))
    gate = lambda sh: sh["model"]["layers"][0]["mlp"]["gate_proj"]["kernel"].spec  # noqa: E731
    assert tuple(gate(default)) == ("fsdp", "tensor")
    assert tuple(gate(moved)) == (None, "fsdp")
    conf.mesh.rules.mlp = "fsdp,nonsense"
    with pytest.raises(ValueError, match="unknown mesh axes"):
        mesh_lib.rules_from_config(conf.mesh)


@pytest.mark.parametrize("tied", [False, True])
def test_chunked_log_probs_equal_the_full_log_softmax(tied):
    cfg = ModelConfig(**{**BASE, "tie_word_embeddings": tied})
    model = init_model(cfg, rng=3)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 61, (3, 9)).astype(np.int32)
    mask = np.ones_like(ids, bool)
    mask[0, :2] = False
    labels = ids[:, 1:]
    full = model.label_log_probs(model.params, ids, mask, labels)
    want = ops.gather_log_probs(model.apply(model.params, ids, mask)[:, :-1], labels)
    np.testing.assert_allclose(full, want, atol=1e-6)
    for chunk in (7, 16, 61, 100):  # 61 = 8 × 7 + 5: a ragged last chunk
        np.testing.assert_allclose(model.label_log_probs(model.params, ids, mask, labels, chunk=chunk), want,
                                   atol=1e-6)
    grad = lambda c: jax.grad(lambda p: jnp.sum(model.label_log_probs(p, ids, mask, labels, chunk=c)))  # noqa
    g_full, g_chunk = jax.jit(grad(0))(model.params), jax.jit(grad(16))(model.params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-5), g_full, g_chunk)
    ptx_labels = np.where(rng.random(ids.shape) < 0.3, -100, ids).astype(np.int32)
    lp = model.label_log_probs(model.params, ids, mask, np.where(ptx_labels[:, 1:] < 0, 0, ptx_labels[:, 1:]),
                               chunk=16)
    assert float(ops.sft_loss_from_log_probs(lp, ptx_labels)) == pytest.approx(
        float(ops.sft_loss(model.apply(model.params, ids, mask), ptx_labels)), rel=1e-5)


def _toy_runner(mesh=None, **cfg):
    import sys

    sys.path.insert(0, "tests")
    from test_rl_core import _prompts, _runner

    return _runner(mesh=mesh, **cfg), _prompts


def test_sequential_update_equals_the_joint_one():
    (runner, state), prompts = _toy_runner()
    ids, mask = prompts()
    state, micro = runner.rollout(state, ids, mask)
    seq_models = dataclasses.replace(runner.models, cfg=dataclasses.replace(runner.cfg, joint_update=False))
    sa, ma, _ = jax.jit(rl.make_rl_step(runner.models, True))(state, micro[0], None)
    sb, mb, _ = jax.jit(rl.make_rl_step(seq_models, True))(state, micro[0], None)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-5, rtol=1e-5), sa, sb)
    for k in ma:
        assert float(ma[k]) == pytest.approx(float(mb[k]), rel=1e-5, abs=1e-6), k


def test_rl_step_on_a_tensor_parallel_mesh_equals_one_device():
    _eight()
    # a window that holds every cost: J_c is then the same on 1 and on 4 data shards (per-shard windows, §3.13)
    (single, s_state), prompts = _toy_runner(window=64)
    (sharded, m_state), _ = _toy_runner(mesh=make_mesh(data=2, fsdp=2, tensor=2), window=64)
    ids, mask = prompts()
    s_state, s_micro = single.rollout(s_state, ids, mask)
    m_state, m_micro = sharded.rollout(m_state, ids, mask)
    np.testing.assert_array_equal(s_micro[0].seq, m_micro[0].seq)
    q = m_state.actor.params["model"]["layers"][0]["self_attn"]["q_proj"]["kernel"]
    assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    s_new, s_metrics, _ = jax.jit(rl.make_rl_step(single.models, True))(s_state, s_micro[0], None)
    m_new, m_metrics, _ = sharded._step(True, m_state, m_micro[0], None)
    for k in ("train/actor_loss", "train/reward_critic_loss", "train/cost_critic_loss", "train/lambda"):
        assert float(s_metrics[k]) == pytest.approx(float(m_metrics[k]), rel=1e-5, abs=1e-6), k
    # Adam's first step is ≈ lr·sign(g): a near-zero gradient summed in another order can flip an element's step
    for x, y in zip(jax.tree.leaves(s_new.actor.params), jax.tree.leaves(m_new.actor.params)):
        diff = np.abs(np.asarray(x) - np.asarray(y))
        assert diff.max() <= 3e-4 and np.mean(diff > 1e-5) < 2e-3


def test_state_layout_shards_optimizer_moments_like_their_parameters():
    _eight()
    from saferlhf_jax.training import optim, state as state_lib, trainer

    mesh = make_mesh(fsdp=8)
    cfg = ModelConfig(**{**BASE, "hidden_size": 64, "num_attention_heads": 8, "num_key_value_heads": 8})
    graphdef, abstract, axes = models.api.abstract_model(cfg, "causal_lm")
    optimizer, _ = optim.make_optimizer(1e-3, 10, weight_decay=0.1)
    layout = state_lib.state_layout(trainer.make_init_state(optimizer), abstract,
                                    jax.ShapeDtypeStruct((2,), jnp.uint32), axes=[axes], mesh=mesh)
    emb = layout["params"]["model"]["embed_tokens"]["embedding"].sharding.spec
    adam = layout["opt_state"][1][0]
    assert tuple(emb) == (None, "fsdp")
    assert tuple(adam.mu["model"]["embed_tokens"]["embedding"].sharding.spec) == (None, "fsdp")
    assert tuple(adam.nu["model"]["embed_tokens"]["embedding"].sharding.spec) == (None, "fsdp")
    assert layout["step"].sharding.is_fully_replicated


@pytest.mark.slow  # a memory lever for 7B runs (CI budget); `pytest -m slow` runs it
def test_optimizer_state_offloaded_to_host_gives_the_same_step():
    _eight()
    mesh = make_mesh(fsdp=8)
    (runner, state), prompts = _toy_runner(mesh=mesh, window=64)
    (offload, off_state), _ = _toy_runner(mesh=mesh, window=64)
    offload.optimizer_memory = "pinned_host"
    offload.models = dataclasses.replace(offload.models, optimizer_on_host=True)
    off_state = offload.init_state(0)
    mu = off_state.actor.opt_state[1][0].mu["model"]["embed_tokens"]["embedding"]
    assert mu.sharding.memory_kind == "pinned_host" and state.actor.params["model"]["norm"]["scale"].sharding \
        .memory_kind == "device"
    ids, mask = prompts()
    state, micro = runner.rollout(state, ids, mask)
    off_state, off_micro = offload.rollout(off_state, ids, mask)
    a, ma, _ = runner._step(True, state, micro[0], None)
    b, mb, _ = offload._step(True, off_state, off_micro[0], None)
    assert b.actor.opt_state[1][0].nu["model"]["norm"]["scale"].sharding.memory_kind == "pinned_host"
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6), a.actor.params,
                 b.actor.params)
    assert float(ma["train/actor_loss"]) == pytest.approx(float(mb["train/actor_loss"]), abs=1e-7)
