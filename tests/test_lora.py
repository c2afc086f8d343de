"""LoRA (METHODS_BEYOND §4): exact start at the base, adapters the only trainable state, the base as DPO reference,
merged export equal to the adapted forward."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saferlhf_jax import models
from saferlhf_jax.models import lora
from saferlhf_jax.training import trainer

STORIES = "saferlhf_jax/assets/stories260K"


def _batch(vocab, seed=0, b=3, length=12):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, (b, length)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[0, :4] = 0  # one left-padded row
    return jnp.asarray(ids), jnp.asarray(mask)


def test_zero_b_is_exactly_the_base_and_the_merge_is_w_plus_s_ab():
    model = models.load_causal_lm(STORIES)
    base = model.params
    adapters = lora.init(base, rank=4, seed=0)
    assert len(adapters) == 7 * model.config.num_hidden_layers
    first = adapters["model/layers/0/self_attn/q_proj"]
    assert first["a"].shape == (64, 4) and first["b"].shape == (4, 64) and not np.any(first["b"])
    assert np.abs(first["a"]).max() <= 1 / np.sqrt(64)  # kaiming-uniform bound U(±1/√d_in)
    ids, mask = _batch(model.config.vocab_size)
    np.testing.assert_array_equal(model.apply(lora.merge(base, {"lora": adapters}, 4.0), ids, mask),
                                  model.apply(base, ids, mask))  # B = 0: exactly the base, not approximately
    np.testing.assert_array_equal(model.apply(lora.inject(base, {"lora": adapters}, 4.0), ids, mask),
                                  model.apply(base, ids, mask))  # and so is the adapted graph training runs
    rng = np.random.default_rng(1)
    moved = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32) * 0.1, adapters)
    merged = lora.merge(base, {"lora": moved}, 4.0)
    w = np.asarray(base["model"]["layers"][0]["self_attn"]["q_proj"]["kernel"])
    m = moved["model/layers/0/self_attn/q_proj"]
    np.testing.assert_allclose(merged["model"]["layers"][0]["self_attn"]["q_proj"]["kernel"],
                               w + 4.0 * np.asarray(m["a"]) @ np.asarray(m["b"]), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(merged["model"]["embed_tokens"]["embedding"],
                                  base["model"]["embed_tokens"]["embedding"])  # not a target
    # the reference path: the base itself (no adapters in the tree) runs the plain model
    apply = trainer.adapted_apply(model.apply, base, 4.0)
    np.testing.assert_array_equal(apply(base, ids, mask), model.apply(base, ids, mask))
    assert not np.allclose(apply({"lora": moved}, ids, mask), model.apply(base, ids, mask))


@pytest.mark.parametrize("scan", [False, True])
def test_adapters_beside_the_kernels_equal_the_merged_model_in_value_and_gradient(scan):
    """Training runs x@W + (x@A)@(s·B) in each adapted projection (lora.inject, llama.Dense); the merged model
    x@(W + s·A@B) is the same function: equal log-probs and equal adapter gradients, unscanned and scanned."""
    model = models.load_causal_lm(STORIES, scan_layers=scan)
    base = model.params
    adapters = lora.init(base, rank=4, targets=("q_proj", "v_proj", "down_proj"), seed=0)
    rng = np.random.default_rng(2)
    adapters = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32) * 0.05, adapters)
    ids, mask = _batch(model.config.vocab_size, seed=3)
    labels = ids[:, 1:]

    def objective(fold):
        def f(ad):
            lp = model.label_log_probs(fold(base, {"lora": ad}, 2.0), ids, mask, labels)
            return jnp.sum(lp * mask[:, 1:]), lp
        return jax.value_and_grad(f, has_aux=True)(adapters)

    (loss_in, lp_in), grads_in = objective(lora.inject)
    (loss_m, lp_m), grads_m = objective(lora.merge)
    assert not np.allclose(lp_in, model.label_log_probs(base, ids, mask, labels), atol=1e-3)  # adapters matter
    np.testing.assert_allclose(lp_in, lp_m, rtol=1e-5, atol=1e-5)
    for key in adapters:
        for ab in ("a", "b"):
            g_in, g_m = np.asarray(grads_in[key][ab]), np.asarray(grads_m[key][ab])
            assert np.abs(g_m).max() > 0, (key, ab)
            np.testing.assert_allclose(g_in, g_m, rtol=1e-4, atol=1e-5 * np.abs(g_m).max())
    # the injected tree shares the base's arrays and leaves the base's dicts as they were
    injected = lora.inject(base, {"lora": adapters}, 2.0)
    layer = (lambda t: t["model"]["layers"]) if scan else (lambda t: t["model"]["layers"][0])
    assert layer(injected)["self_attn"]["q_proj"]["kernel"] is layer(base)["self_attn"]["q_proj"]["kernel"]
    assert set(layer(base)["self_attn"]["q_proj"]) == {"kernel"}
    assert set(layer(injected)["self_attn"]["q_proj"]) == {"kernel", "lora_a", "lora_b"}
    assert set(layer(injected)["self_attn"]["k_proj"]) == {"kernel"}  # not a target
    assert lora.injected(injected) == (("down_proj", "q_proj", "v_proj"), 4) and lora.injected(base) is None


def test_scanned_layers_get_stacked_adapters():
    model = models.load_causal_lm(STORIES, scan_layers=True)
    adapters = lora.init(model.params, rank=2)
    assert adapters["model/layers/mlp/down_proj"]["a"].shape == (5, 172, 2)
    with pytest.raises(ValueError, match="match no kernel"):
        lora.init(model.params, rank=2, targets=("qkv",))


def stage_of(name):
    from saferlhf_jax.algorithms import dpo, reward, sft

    return {"sft": sft.STAGE, "reward": reward.STAGE, "dpo": dpo.STAGE}[name]


def _run(stage_name, tmp_path, **overrides):
    import importlib

    cfg = importlib.import_module(f"configs.{stage_name}").get_config("tiny")
    cfg.output_dir = str(tmp_path / stage_name)
    cfg.lora.rank = 4
    cfg.train.max_steps = 3
    cfg.train.learning_rate = 5e-3
    cfg.logging.progress = cfg.logging.tensorboard = False
    cfg.mesh.fsdp = 1
    for k, v in overrides.items():
        cfg[k] = v
    return cfg, trainer.train(stage_of(stage_name), cfg)


# reward in CI (adapters + a trainable head); SFT and DPO repeat its path (the DPO reference = base is tested above)
@pytest.mark.parametrize("stage_name", [pytest.param("sft", marks=pytest.mark.slow), "reward",
                                        pytest.param("dpo", marks=pytest.mark.slow)])
def test_only_adapters_train_and_the_merged_export_equals_the_adapted_forward(tmp_path, stage_name):
    cfg, summary = _run(stage_name, tmp_path)
    state = summary["state"]
    expected = {"lora"} | ({"score_head", "normalizer"} if stage_name == "reward" else set())
    assert set(state["params"]) == expected
    # the optimizer holds moments for adapters (and the head) only: no leaf of a base kernel's shape
    opt_shapes = {x.shape for x in jax.tree.leaves(state["opt_state"])}
    assert (64, 172) not in opt_shapes and (512, 64) not in opt_shapes and (64, 4) in opt_shapes
    adapters = state["params"]["lora"]
    assert any(np.any(np.asarray(a["b"]) != 0) for a in adapters.values())  # they did train
    kind = "score" if stage_name == "reward" else "causal_lm"
    from saferlhf_jax.data.tokenizer import load_tokenizer

    # the base exactly as the stage built it (a pad token added: a resized embedding; a fresh score head)
    base = trainer.load_model(stage_of(stage_name), cfg, None, load_tokenizer(cfg.model_name_or_path))
    exported = (models.load_score_model if kind == "score" else models.load_causal_lm)(
        tmp_path / stage_name / "export")
    ids, mask = _batch(exported.config.vocab_size)
    frozen = {k: v for k, v in base.params.items()}
    adapted = trainer.adapted_apply(base.apply, frozen, lora.scale(cfg.lora.alpha, cfg.lora.rank))
    want = adapted(jax.device_get(state["params"]), ids, mask)
    got = exported.apply(exported.params, ids, mask)
    # training ran x@W + (x@A)@(s·B), the export x@(W + s·A@B): the same function, f32 rounding apart
    for w, g in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
    # the export differs from the base (the merge happened) while the base checkpoint is untouched on disk
    assert not np.allclose(exported.params["model"]["layers"][0]["self_attn"]["q_proj"]["kernel"],
                           base.params["model"]["layers"][0]["self_attn"]["q_proj"]["kernel"])


def test_lora_config_errors_are_one_line(tmp_path):
    from saferlhf_jax.errors import ConfigError

    with pytest.raises(ConfigError, match="lora.init"):
        _run("sft", tmp_path, lora=dict(rank=4, alpha=16.0, init="xavier", targets=lora.DEFAULT_TARGETS))
    with pytest.raises(ConfigError, match=r"lora.targets must name projections among .*got \['qproj'\]"):
        _run("sft", tmp_path, lora=dict(rank=4, alpha=16.0, init="gaussian", targets=("qproj",)))


def test_lora_targets_from_the_command_line(tmp_path, capsys):
    """`--config.lora.targets=(q_proj,v_proj)` arrived as the one target '(q_proj,v_proj)': a traceback."""
    from launch.common import parse_config

    for given in ("(q_proj,v_proj)", "q_proj,v_proj", "('q_proj', 'v_proj')"):
        cfg, _ = parse_config(["prog", "--config=configs/sft.py:tiny", f"--config.lora.targets={given}"],
                              "configs/sft.py:tiny")
        assert tuple(cfg.lora.targets) == ("q_proj", "v_proj"), given
    cfg, _ = parse_config(["prog", "--config=configs/sft.py:tiny", "--config.train_datasets=alpaca:0.5,alpaca:8/-1",
                           "--config.data.buckets=(64,128)"], "configs/sft.py:tiny")
    assert tuple(cfg.train_datasets) == ("alpaca:0.5", "alpaca:8/-1") and tuple(cfg.data.buckets) == (64, 128)


def test_adapters_are_sharded_like_their_kernels():
    """A (…, d_in, r) split like W's d_in, B (…, r, d_out) like W's d_out; the rank axis ('lora_rank' → fsdp) only
    where the other axis left fsdp free."""
    from saferlhf_jax.parallel import mesh as mesh_lib
    from saferlhf_jax.training import state as state_lib

    model = models.load_causal_lm(STORIES)
    param_axes = models.param_logical_axes(model.config, "causal_lm")
    adapters = lora.init(model.params, rank=4)
    axes = lora.adapter_axes(param_axes, adapters)["lora"]
    for key in ("model/layers/0/self_attn/q_proj", "model/layers/1/mlp/down_proj"):
        *_, layer, block, proj = key.split("/")
        w_axes = param_axes["model"]["layers"][int(layer)][block][proj]["kernel"]
        assert axes[key] == {"a": (w_axes[0], "lora_rank"), "b": ("lora_rank", w_axes[1])}
    mesh = mesh_lib.make_mesh(1, 8, 1)
    sh = state_lib.state_shardings({"lora": adapters}, [param_axes, {"lora": axes}], mesh)["lora"]
    # rank 4 does not divide over 8 devices: the rank axis stays whole (rank 8 splits it: test_plan)
    w_sh = state_lib.state_shardings(model.params, [param_axes], mesh)
    q = sh["model/layers/0/self_attn/q_proj"]
    w_spec = w_sh["model"]["layers"][0]["self_attn"]["q_proj"]["kernel"].spec
    assert q["a"].spec[0] == w_spec[0] and q["b"].spec[1] == w_spec[1] and q["a"].spec[1] is None
    assert any(axis is not None for axis in tuple(q["a"].spec) + tuple(q["b"].spec))  # really split on 8


@pytest.mark.slow  # two reward runs (~90 s); the layout itself is checked above in CI
def test_lora_sharded_equals_unsharded(tmp_path):
    """A LoRA reward run on 8 simulated devices (fsdp) trains the same adapters as on one."""
    from saferlhf_jax.parallel import mesh as mesh_lib
    from saferlhf_jax.training import state as state_lib

    model = models.load_causal_lm(STORIES)
    shardings = state_lib.state_shardings(model.params, [models.param_logical_axes(model.config, "causal_lm")],
                                          mesh_lib.make_mesh(1, 8, 1))
    w_spec = shardings["model"]["layers"][0]["self_attn"]["q_proj"]["kernel"].spec
    _, one = _run("reward", tmp_path / "one")
    _, eight = _run("reward", tmp_path / "eight", mesh=dict(data=1, fsdp=8, tensor=1))
    got = eight["state"]["params"]["lora"]["model/layers/0/self_attn/q_proj"]["b"]
    assert got.sharding.spec[1] == w_spec[1]
    # Adam normalises each gradient: an element whose gradient is ~0 moves by ±lr on reduction-order noise, so the
    # check is the bulk of the elements and the size of the rare outliers (lr 5e-3 × 3 steps), as in test_sharding
    diffs = np.concatenate([np.abs(np.asarray(a) - np.asarray(b)).ravel() for a, b in zip(
        jax.tree.leaves(jax.device_get(one["state"]["params"])),
        jax.tree.leaves(jax.device_get(eight["state"]["params"])))])
    assert diffs.max() <= 2e-3 and np.mean(diffs > 1e-5) < 5e-3, (diffs.max(), np.mean(diffs > 1e-5))
    assert one["eval"]["accuracy"] == eight["eval"]["accuracy"]
    assert one["eval"] == pytest.approx(eight["eval"], rel=1e-3, abs=1e-4)  # held-out scores: the same model


def test_rl_with_lora_trains_adapters_over_the_frozen_models(tiny_models, tmp_path):
    """PPO-Lag with LoRA: the actor's state holds adapters only, its reference is the base (KL starts at 0), and the
    export is base + merged adapters; lora.critics (the default with a rank): each critic's state is adapters + its
    own head over the frozen reward / cost model (no backbone copy), and with B = 0 its first values are exactly
    those of the fully trained critic."""
    import json

    from conftest import tiny_rl_config
    from saferlhf_jax.algorithms import ppo_lag
    from saferlhf_jax.errors import ConfigError

    def run(name, critics):
        c = tiny_rl_config("ppo_lag", tiny_models, tmp_path / name, max_steps=2)
        c.lora.rank, c.lora.critics = 4, critics
        c.actor.learning_rate = 5e-3
        return c, ppo_lag.run(c)

    _, full = run("full", False)
    c, low = run("lora", True)
    actor = low["state"].actor
    assert set(actor.params) == {"lora"}
    assert {x.shape for x in jax.tree.leaves(actor.opt_state)} <= {(), (64, 4), (4, 64), (4, 32), (172, 4),
                                                                  (4, 172)}
    base = models.load_causal_lm(tiny_models / "sft")
    exported = models.load_causal_lm(tmp_path / "lora" / "export")
    ids, mask = _batch(base.config.vocab_size)
    merged = lora.merge(base.params, jax.device_get(actor.params), lora.scale(c.lora.alpha, c.lora.rank))
    np.testing.assert_allclose(exported.apply(exported.params, ids, mask), base.apply(merged, ids, mask),
                               rtol=1e-5, atol=1e-5)
    assert not np.allclose(exported.apply(exported.params, ids, mask), base.apply(base.params, ids, mask))
    for critic in (low["state"].reward_critic, low["state"].cost_critic):
        assert set(critic.params) == {"lora", "score_head", "normalizer"}
        assert {x.shape for x in jax.tree.leaves(critic.opt_state)} <= {(), (64, 4), (4, 64), (4, 32), (172, 4),
                                                                       (4, 172), (64, 1), (1,)}
        assert any(np.any(np.asarray(a["b"]) != 0) for a in critic.params["lora"].values())  # they trained
    assert set(full["state"].reward_critic.params) == {"model", "score_head", "normalizer"}  # critics=False
    rows = {n: [json.loads(x) for x in (tmp_path / n / "metrics.jsonl").read_text().splitlines()]
            for n in ("full", "lora")}
    assert abs(rows["lora"][0]["train/kl_divergence"]) < 1e-4  # B = 0: the first rollout's policy is the reference
    for key in ("train/reward_value", "train/cost_value", "train/reward"):
        assert rows["lora"][0][key] == pytest.approx(rows["full"][0][key], abs=1e-5), key
    assert rows["lora"][0]["train/reward_critic_loss"] == pytest.approx(rows["full"][0]["train/reward_critic_loss"],
                                                                        rel=1e-4)
    c.reward_critic_model_name_or_path = str(tiny_models / "sft")
    c.output_dir = str(tmp_path / "other")
    with pytest.raises(ConfigError, match="lora.critics: the reward critic's base is the reward model"):
        ppo_lag.run(c)


def test_peft_adapter_export_loads_in_peft_with_the_merged_logits(tmp_path):
    """lora.export='both': export/adapter/ is a PEFT LoRA directory; transformers' base (resized to the tokenizer, as
    PEFT's docs say when a pad token was added) + PeftModel gives the merged export's logits."""
    peft = pytest.importorskip("peft")
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg, _ = _run("sft", tmp_path, lora=dict(rank=4, alpha=16.0, init="kaiming_uniform",
                                             targets=lora.DEFAULT_TARGETS, export="both"))
    export = tmp_path / "sft" / "export"
    config = __import__("json").loads((export / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == cfg.lora.alpha
    tok = AutoTokenizer.from_pretrained(str(export))
    base = AutoModelForCausalLM.from_pretrained(STORIES, torch_dtype=torch.float32)
    base.resize_token_embeddings(len(tok))
    adapted = peft.PeftModel.from_pretrained(base, str(export / "adapter")).eval()
    merged = AutoModelForCausalLM.from_pretrained(str(export), torch_dtype=torch.float32).eval()
    ids = torch.tensor(np.random.default_rng(0).integers(3, 500, (2, 16)))
    with torch.no_grad():
        want, got = merged(ids).logits.numpy(), adapted(ids).logits.numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    with torch.no_grad(), adapted.disable_adapter():  # the adapters matter: without them the logits differ
        assert not np.allclose(adapted(ids).logits.numpy(), want, atol=1e-3)


def test_adapters_are_refused_on_the_rollout_layout():
    """inject is for the training layout; the sampler's fused layout gets merged weights (`lora.merge`)."""
    from saferlhf_jax.errors import ModelError

    model = models.load_causal_lm(STORIES)
    fused, to_fused = model.rollout_as("fused")
    adapters = lora.init(model.params, rank=2, targets=("o_proj",))
    ids, mask = _batch(model.config.vocab_size)
    with pytest.raises(ModelError, match="training layout"):
        fused.apply(lora.inject(to_fused(model.params), {"lora": adapters}, 1.0), ids, mask)
