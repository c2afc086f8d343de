"""The pieces of PPO, PPO-Lagrangian (Safe RLHF) and the reward-shaping baseline as pure jitted functions
(spec §1.3, §3.9–§3.15), over one `RLState` pytree and a typed `Rollout`. The loop that strings them together is
`saferlhf_jax.algorithms.ppo_lag`.

Shapes: B rollout micro-batch, L sequence width (prompt + response, bucketed), A = L − 1 action positions,
dp data-parallel shards (data × fsdp), W the episode-cost window per shard.

The response of every row starts at action `start` (the prompt width − 1, spec §2.2). `start` is data (a (B,) array),
not a static slice bound: GAE runs over all A positions (values and rewards outside the sequence mask are zero and
A_t depends only on t' ≥ t, so A[start:] is exactly the reference's) and every loss and metric masks t < start away.
One compiled step therefore serves every prompt width. Rewards and costs stay float32 end to end.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from saferlhf_jax import ops
from saferlhf_jax.models import lora
from saferlhf_jax.models.api import trainable_params
from saferlhf_jax.training.state import to_device, to_host

MODES = ("ppo", "ppo_lag", "reward_shaping", "grpo", "grpo_lag")  # grpo*: critic-free (METHODS_BEYOND §2)
LAMBDA_UPDATES = ("log_sgd", "pid")
PID_LAMBDA_FLOOR = 1e-30  # a PID λ of 0 is stored as log(1e-30): exp of it is 0 to f32 precision in (1 + λ)


@dataclasses.dataclass(frozen=True)
class RLConfig:
    """Static hyperparameters of one RL run (defaults: the reference's PPO-Lag recipe, spec §6)."""

    mode: str = "ppo_lag"
    kl_coeff: float = 0.01
    clip_range_ratio: float = 0.2
    clip_range_score: float = 50.0
    clip_range_value: float = 5.0
    gamma: float = 1.0
    gae_lambda: float = 0.95
    ptx_coeff: float = 0.0
    threshold: float = 0.0
    lambda_init: float = 1.0
    lambda_lr: float = 0.1
    lambda_max: float | None = 5.0
    lambda_update_delay_steps: int = 0
    # log_sgd: the reference's SGD step on log λ (spec §3.13); pid: the PID Lagrangian (ops.pid_lagrange_update,
    # spec §7.27) with gains (k_p, k_i, k_d), the same for every constraint
    lambda_update: str = "log_sgd"
    lambda_pid: tuple[float, float, float] = (1.0, 0.1, 0.0)
    episode_cost_window_size: int = 128
    # subtracted from the reward-model score of a response that never emitted EOS (cut off by the length budget):
    # 0 = off, as in the reference. Score models trained on finished answers misjudge cut-off ones (spec §7.29)
    missing_eos_penalty: float = 0.0
    whiten_advantages: bool = False
    joint_update: bool = True  # one value_and_grad over actor + critics (fast on CPU); False: one after another
                               # (lower peak memory at scale: the three models' backward passes never overlap)
    # critic-free modes (grpo, grpo_lag): G = group_size responses per prompt, group-relative advantages
    group_size: int = 1
    advantage_estimator: str = "grpo"   # grpo | dr_grpo | rloo
    group_eps: float = 1e-4
    kl_mode: str = "loss"               # loss: β_kl·k3 in the loss | reward: −β·K in R̂, +β·K in Ĉ (sequence level)
    kl_loss_coeff: float = 0.04
    aggregation: str = "seq"            # seq | token | constant
    loss_normalizer: float = 0.0        # 'constant' aggregation's L_norm (0: the rollout width)
    # several constraints at once (METHODS_BEYOND §3): K names and per-constraint λ settings; () = the single
    # constraint above (scalar λ, costs (B,)). With K ≥ 1 costs are (B, K), λ and the window means (K,).
    constraints: tuple[str, ...] = ()
    thresholds: tuple[float, ...] = ()
    lambda_inits: tuple[float, ...] = ()
    lambda_lrs: tuple[float, ...] = ()
    lambda_maxes: tuple[float | None, ...] = ()   # None: no upper clamp for that constraint

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        self._check_ranges()
        if self.lambda_max is not None and self.lambda_max <= 0:
            raise ValueError("lambda_max must be > 0 (or None)")
        if self.missing_eos_penalty < 0:
            raise ValueError(f"missing_eos_penalty must be ≥ 0 (it is subtracted), got {self.missing_eos_penalty}")
        if self.lambda_init <= 0 and self.learns_lambda:
            raise ValueError("lambda_init must be > 0 for PPO-Lag (log λ is learned)")
        k = len(self.constraints)
        if k and not self.uses_cost:
            raise ValueError(f"{self.mode} has no cost: rl.constraints apply to ppo_lag and grpo_lag")
        if k and self.mode == "reward_shaping":
            raise ValueError("reward_shaping takes one cost (rl.constraints apply to ppo_lag and grpo_lag)")
        if any(len(t) != k for t in (self.thresholds, self.lambda_inits, self.lambda_lrs, self.lambda_maxes)):
            raise ValueError("thresholds, lambda_inits, lambda_lrs and lambda_maxes need one entry per "
                             f"constraint ({k})")
        if len(set(self.constraints)) != k:
            raise ValueError(f"constraint names must be unique, got {list(self.constraints)}")
        if any(v <= 0 for v in self.lambda_inits) or any(v is not None and v <= 0 for v in self.lambda_maxes):
            raise ValueError("every constraint's lambda_init and lambda_max must be > 0")
        if self.lambda_update not in LAMBDA_UPDATES:
            raise ValueError(f"lambda_update must be one of {LAMBDA_UPDATES}, got {self.lambda_update!r}")
        if len(self.lambda_pid) != 3 or min(self.lambda_pid) < 0:
            raise ValueError(f"lambda_pid must be three gains (k_p, k_i, k_d) ≥ 0, got {tuple(self.lambda_pid)}")
        if self.episode_cost_window_size < 1:
            raise ValueError(f"episode_cost_window_size must be ≥ 1, got {self.episode_cost_window_size}")
        if self.critic_free:
            if self.group_size < 2:
                raise ValueError(f"{self.mode} needs num_return_sequences (the group size G) ≥ 2")
            if self.advantage_estimator not in ops.GROUP_ESTIMATORS:
                raise ValueError(f"advantage estimator must be one of {ops.GROUP_ESTIMATORS}")
            if self.kl_mode not in ("loss", "reward") or self.aggregation not in ops.AGGREGATIONS:
                raise ValueError("kl_mode must be loss|reward and aggregation one of " + str(ops.AGGREGATIONS))

    def _check_ranges(self):
        """The numeric fields' domains. Outside them a run does not fail, it silently optimises something else: a
        negative λ learning rate moves λ away from the budget, a negative KL coefficient rewards drifting from the
        reference, γ or the GAE λ above 1 let the returns grow without bound, a clip range ≤ 0 freezes the policy."""
        positive = {"clip_range_ratio": self.clip_range_ratio, "clip_range_score": self.clip_range_score,
                    "clip_range_value": self.clip_range_value, "group_eps": self.group_eps}
        non_negative = {"kl_coeff": self.kl_coeff, "ptx_coeff": self.ptx_coeff, "lambda_lr": self.lambda_lr,
                        "kl_loss_coeff": self.kl_loss_coeff, "loss_normalizer": self.loss_normalizer}
        unit = {"gamma": self.gamma, "gae_lambda": self.gae_lambda}
        bad = ([f"{k} must be > 0, got {v}" for k, v in positive.items() if not v > 0]
               + [f"{k} must be ≥ 0, got {v}" for k, v in non_negative.items() if not v >= 0]
               + [f"{k} must be in [0, 1], got {v}" for k, v in unit.items() if not 0 <= v <= 1]
               + [f"every lambda_lrs entry must be ≥ 0, got {list(self.lambda_lrs)}"] * any(
                   not v >= 0 for v in self.lambda_lrs))
        if bad:
            raise ValueError("; ".join(bad))

    @property
    def uses_cost(self) -> bool:
        return self.mode in ("ppo_lag", "reward_shaping", "grpo_lag")

    @property
    def num_constraints(self) -> int:
        """K of METHODS_BEYOND §3, or 0 for the single (legacy, scalar) constraint."""
        return len(self.constraints)

    def lambda_hyper(self):
        """(log λ init, threshold, lambda_lr, lambda_max | None): scalars, or (K,) arrays with +inf = no clamp."""
        if not self.num_constraints:
            init = jnp.log(jnp.float32(self.lambda_init)) if self.lambda_init > 0 else jnp.float32(0.0)
            return init, self.threshold, self.lambda_lr, self.lambda_max
        vec = lambda xs: jnp.asarray(xs, jnp.float32)  # noqa: E731
        return (jnp.log(vec(self.lambda_inits)), vec(self.thresholds), vec(self.lambda_lrs),
                vec([jnp.inf if v is None else v for v in self.lambda_maxes]))

    @property
    def pid(self) -> bool:
        """λ follows the PID Lagrangian (its integral and last J_c are state) instead of log-λ SGD."""
        return self.learns_lambda and self.lambda_update == "pid"

    @property
    def critic_free(self) -> bool:
        return self.mode in ("grpo", "grpo_lag")

    @property
    def learns_lambda(self) -> bool:
        return self.mode in ("ppo_lag", "grpo_lag")

    @property
    def cost_critic(self) -> bool:
        return self.mode == "ppo_lag"

    @property
    def critics(self) -> tuple["Role", ...]:
        """The critics the mode trains: the reward critic and, for PPO-Lag, the cost critic; none when critic-free."""
        if self.critic_free:
            return ()
        return (REWARD, COST) if self.cost_critic else (REWARD,)


# ---------------------------------------------------------------------------------------------------- state


@flax.struct.dataclass
class ModuleState:
    """One trained model: parameters (score models: with their frozen normalizer stats), optimizer state, and the
    number of optimizer updates applied (drives its LR schedule)."""

    params: Any
    opt_state: Any
    updates: jax.Array  # () int32


@flax.struct.dataclass
class CostWindow:
    """The episode-cost FIFO of spec §3.13, one per data-parallel shard, as a fixed-size ring buffer.

    Shard s owns rows [s·B/dp, (s+1)·B/dp) of every rollout micro-batch (the rows its devices hold), so J_c — the mean
    over shards of each shard's window mean — covers the last W × dp costs, as in the reference's per-rank windows."""

    values: jax.Array    # (dp, W) f32, or (dp, W, K) with K constraints
    filled: jax.Array    # () int32 entries filled in every shard (≤ W)
    position: jax.Array  # () int32 next ring slot

    @classmethod
    def empty(cls, shards: int, size: int, constraints: int = 0) -> "CostWindow":
        shape = (int(shards), int(size)) + ((int(constraints),) if constraints else ())
        return cls(jnp.zeros(shape, jnp.float32), jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))

    def push(self, costs) -> "CostWindow":
        """Append a micro-batch of episode costs (B,) or (B, K) — B/dp to each shard's FIFO, oldest dropped first."""
        dp, w = self.values.shape[:2]
        per_shard = costs.astype(jnp.float32).reshape(dp, -1, *costs.shape[1:])  # (dp, n[, K])
        n = per_shard.shape[1]
        if n >= w:  # static: the micro-batch alone fills every window
            return CostWindow(per_shard[:, n - w:], jnp.int32(w), jnp.int32(0))
        slots = (self.position + jnp.arange(n)) % w
        return CostWindow(self.values.at[:, slots].set(per_shard), jnp.minimum(self.filled + n, w),
                          (self.position + n) % w)

    def mean(self):
        """J_c: mean over shards of each shard's window mean (0 while empty); () or (K,)."""
        valid = jnp.arange(self.values.shape[1]) < self.filled  # ring slots fill from 0 before the first wrap
        valid = valid.reshape(1, -1, *([1] * (self.values.ndim - 2)))
        per_shard = jnp.sum(jnp.where(valid, self.values, 0.0), axis=1) / jnp.maximum(self.filled, 1)
        return jnp.mean(per_shard, axis=0)


@flax.struct.dataclass
class LagrangePID:
    """The PID Lagrangian's memory (lambda_update='pid'): its integral term and the J_c of the last update."""

    integral: jax.Array       # () f32, or (K,)
    previous_cost: jax.Array  # () f32, or (K,)


@flax.struct.dataclass
class RLState:
    """Everything an RL run must carry across steps and resumes, as one pytree (checkpointed whole)."""

    actor: ModuleState
    reward_critic: ModuleState | None   # None in the critic-free modes
    cost_critic: ModuleState | None
    log_lambda: jax.Array    # () f32, or (K,) with K constraints
    global_step: jax.Array   # () int32 rl_step calls so far (drives the λ delay, spec §3.13)
    skipped: jax.Array       # () int32 rl_steps whose update was non-finite and therefore not applied
    rng: jax.Array           # (2,) uint32 raw PRNG key: every rollout splits a fresh one off
    cost_window: CostWindow
    lambda_pid: LagrangePID | None = None   # None unless lambda_update='pid' (then λ = exp(log_lambda) is its output)


@flax.struct.dataclass
class Rollout:
    """One scored rollout micro-batch (spec §3.9). The policy fields are None until a `fresh` rl_step (the first
    update, from the parameters that generated the rollout) fills them from its own forward pass."""

    seq: jax.Array                  # (B, L) int32 left-padded prompt, response, right pads
    mask: jax.Array                 # (B, L) bool ≠ pad ∧ ≠ unk
    start: jax.Array                # (B,) int32 action index that emits the first response token
    ref_log_probs: jax.Array        # (B, A) f32
    reward: jax.Array               # (B,) f32 reward-model end score
    cost: jax.Array | None = None   # (B,) f32 cost-model end score (PPO-Lag, reward shaping); (B, K) for K constraints
    log_probs: jax.Array | None = None      # (B, A) f32 actor log-probs at rollout time
    reward_values: jax.Array | None = None  # (B, A) f32 reward-critic values at rollout time
    cost_values: jax.Array | None = None    # (B, A) f32 cost-critic values at rollout time; (B, A, K)
    reward_advantage: jax.Array | None = None  # (B,) f32 group-relative advantages (critic-free modes)
    cost_advantage: jax.Array | None = None    # (B,) f32; (B, K)

    def values(self, role: "Role"):
        return getattr(self, role.values_field)


@dataclasses.dataclass(frozen=True)
class Role:
    """A trained critic's place in the typed state: its `RLState` field, its `Rollout` values field and its
    `Advantages` returns field, named once here (the actor, the frozen reference and the scorers have no critic).
    `name` is the prefix of its metrics ("train/<name>_critic_loss") and its key in the frozen bases."""

    name: str
    critic_field: str
    values_field: str
    returns_field: str

    def critic(self, state: "RLState") -> ModuleState:
        return getattr(state, self.critic_field)

    def with_critic(self, state: "RLState", module: ModuleState) -> "RLState":
        return state.replace(**{self.critic_field: module})


REWARD = Role("reward", "reward_critic", "reward_values", "reward_returns")
COST = Role("cost", "cost_critic", "cost_values", "cost_returns")


@flax.struct.dataclass
class Advantages:
    """KL-shaped scores, GAE advantages and returns of a rollout (spec §3.10–3.12), each (B, A) over every action
    position (mask them with `response_mask`); the cost fields are (B, A, K) with K constraints and None unless
    PPO-Lag. `advantages` is what the actor uses (PPO: A_r; PPO-Lag: (A_r − λA_c)/(1+λ), whitened when asked)."""

    rewards: jax.Array
    reward_advantages: jax.Array
    reward_returns: jax.Array
    advantages: jax.Array
    costs: jax.Array | None = None
    cost_advantages: jax.Array | None = None
    cost_returns: jax.Array | None = None

    def returns(self, role: Role) -> jax.Array:
        return getattr(self, role.returns_field)


@flax.struct.dataclass
class PolicyScores:
    """What the trained models give on a rollout: actor log-probs and each critic's values ((B, A); cost values
    (B, A, K) with K constraints) — the policy fields of a `Rollout`."""

    log_probs: jax.Array
    reward_values: jax.Array | None = None
    cost_values: jax.Array | None = None

    def fields(self) -> dict:
        return {"log_probs": self.log_probs, "reward_values": self.reward_values, "cost_values": self.cost_values}


@dataclasses.dataclass(frozen=True)
class RLModels:
    """What the jitted RL functions close over: the forwards, optimizers, LR schedules and settings."""

    actor_log_probs: Callable       # (params, ids (B, L), mask, labels (B, T)) → log π(labels) (B, T) f32
    critic_apply: Callable          # (params, ids, mask) → (scores (B, L, 1), end (B, 1))
    actor_opt: optax.GradientTransformation
    critic_opt: optax.GradientTransformation
    actor_schedule: Callable
    critic_schedule: Callable
    cfg: RLConfig
    optimizer_on_host: bool = False  # optimizer state lives in host memory; brought to the device for updates only
    lora_scale: float = 0.0          # > 0: the actor's parameters are LoRA adapters over a frozen base (the
                                     # reference model itself), passed to the jitted functions in `bases`
    critic_lora_scale: float = 0.0   # > 0: each critic's parameters are adapters + its own head over the frozen
                                     # scoring model it starts from (lora.critics: the reward / cost model)
    cost_base_key: str = ""          # several constraints: the frozen['cost'] model the cost critic sits on

    def bases(self, frozen: dict) -> dict | None:
        """The frozen arrays LoRA adapters sit on, taken from the frozen models (never copies):
        {'actor': reference, 'reward': reward model, 'cost': cost model}; None without LoRA."""
        out = {}
        if self.lora_scale:
            out["actor"] = frozen["ref"]
        if self.critic_lora_scale:
            out["reward"] = frozen["reward"]
            if self.cfg.cost_critic:
                out["cost"] = frozen["cost"][self.cost_base_key] if self.cost_base_key else frozen["cost"]
        return out or None

    def log_probs_fn(self, actor_base=None) -> Callable:
        """actor_log_probs on base + adapters (models/lora.py) when `actor_base` is given, else as is."""
        if actor_base is None or not self.lora_scale:
            return self.actor_log_probs

        def fn(params, *args):
            return self.actor_log_probs(lora.inject(actor_base, params, self.lora_scale) if lora.KEY in params
                                        else params, *args)

        return fn


def trainable(params):
    """Everything but a score model's normalizer statistics."""
    return trainable_params(params)


def init_module_state(params, optimizer) -> ModuleState:
    return ModuleState(params, optimizer.init(trainable(params)), jnp.zeros((), jnp.int32))


def init_state(models: RLModels, actor_params, reward_critic_params, cost_critic_params, seed: int,
               data_shards: int) -> RLState:
    """The initial RLState (call eagerly: optimizer zeros inherit the parameters' shardings; or under
    `jax.eval_shape` for the layout alone)."""
    cfg = models.cfg
    log_lambda = cfg.lambda_hyper()[0]
    zero = lambda: jnp.zeros((), jnp.int32)  # noqa: E731 — distinct buffers: the state is donated leaf by leaf
    return RLState(
        actor=init_module_state(actor_params, models.actor_opt),
        reward_critic=None if cfg.critic_free else init_module_state(reward_critic_params, models.critic_opt),
        cost_critic=init_module_state(cost_critic_params, models.critic_opt) if cfg.cost_critic else None,
        log_lambda=jnp.asarray(log_lambda, jnp.float32), global_step=zero(), skipped=zero(),
        rng=jax.random.PRNGKey(seed),
        cost_window=CostWindow.empty(data_shards, cfg.episode_cost_window_size, cfg.num_constraints),
        # I₀ = λ₀: with J_c on the threshold the first λ is lambda_init, as in log-λ SGD
        lambda_pid=LagrangePID(jnp.exp(jnp.asarray(log_lambda, jnp.float32)),
                               jnp.zeros(jnp.shape(log_lambda), jnp.float32)) if cfg.pid else None)


# ---------------------------------------------------------------------------------------------------- scoring


def critic_values(models: RLModels, params, seq, mask, outputs: int = 0):
    """V(x_≤t) for every action position: (B, A) f32, or (B, A, K) from a K-output critic (`outputs` = K; the
    cost critic with K constraints). The critic output at the last token is dropped (§2.1)."""
    scores = models.critic_apply(params, seq, mask)[0][:, :-1]
    return scores[..., :outputs] if outputs else scores[..., 0]


def _values(models: RLModels, role: Role, params, seq, mask, bases=None):
    """The values of `role`'s critic; with LoRA critics its adapters and head over its base in `bases`."""
    base = (bases or {}).get(role.name)
    if base is not None and models.critic_lora_scale:
        params = lora.inject(base, params, models.critic_lora_scale)
    return critic_values(models, params, seq, mask, models.cfg.num_constraints if role is COST else 0)


def _critic_loss(values, old_values, returns, mask, clip_range_value):
    """§3.12's clipped value loss; with K value streams (B, A, K) the mean over k (METHODS_BEYOND §3.4)."""
    if values.ndim == 3:
        per = jax.vmap(lambda v, o, r: ops.critic_loss(v, o, r, mask, clip_range_value), in_axes=-1)
        return jnp.mean(per(values, old_values, returns))
    return ops.critic_loss(values, old_values, returns, mask, clip_range_value)


def policy_scores(models: RLModels, actor_params, critics: dict, seq, mask, bases=None) -> PolicyScores:
    """What the trained models give on a rollout; critics: {role name: parameters}; bases: `RLModels.bases`
    (LoRA)."""
    log_probs = models.log_probs_fn((bases or {}).get("actor"))(actor_params, seq, mask, seq[:, 1:])
    return PolicyScores(log_probs=log_probs, **{role.values_field: _values(models, role, critics[role.name], seq,
                                                                          mask, bases)
                                                 for role in models.cfg.critics})


def make_score_rollout(models: RLModels, reward_fn, cost_fn, policy: bool = True, eos_token_ids=()):
    """score(actor_params, frozen, critics, window, seq, mask, start, scorer_inputs) → (Rollout, window).

    frozen: {'ref', 'reward', ['cost']} parameters; critics: {'reward', ['cost']} parameters.
    reward_fn / cost_fn: (params, ids, mask) → (B,) end scores; scorer_inputs: {'reward' | 'cost': (ids, mask)}
    re-tokenized for a scorer with its own tokenizer (else the rollout itself). The costs are pushed into the
    episode-cost window here, during the rollout phase and before any update (spec §1.3).
    policy=False leaves the policy fields empty for a `fresh` rl_step to fill.
    eos_token_ids: the sampler's EOS ids, which `cfg.missing_eos_penalty` looks for in each response.
    """
    cfg = models.cfg
    if cfg.missing_eos_penalty and not eos_token_ids:
        raise ValueError("missing_eos_penalty needs the sampler's EOS token ids")

    def score(actor_params, frozen, critics, window: CostWindow, seq, mask, start, scorer_inputs=None):
        scorer_inputs = scorer_inputs or {}
        ref = models.actor_log_probs(frozen["ref"], seq, mask, seq[:, 1:])
        reward = reward_fn(frozen["reward"], *scorer_inputs.get("reward", (seq, mask))).astype(jnp.float32)
        if cfg.missing_eos_penalty:
            reward = reward - cfg.missing_eos_penalty * (1.0 - ended_with_eos(seq, mask, start, eos_token_ids))
        cost = None
        if cfg.uses_cost:
            cost = cost_fn(frozen["cost"], *scorer_inputs.get("cost", (seq, mask))).astype(jnp.float32)
            window = window.push(cost)
        # with LoRA the reference is the actor's frozen base (the same arrays, adapters off), and LoRA critics sit on
        # the reward / cost models
        scores = policy_scores(models, actor_params, critics, seq, mask, models.bases(frozen)).fields() if policy \
            else {}
        rollout = Rollout(seq=seq, mask=mask, start=start, ref_log_probs=ref, reward=reward, cost=cost, **scores)
        return jax.lax.stop_gradient(rollout), window

    return score


def ended_with_eos(seq, mask, start, eos_token_ids):
    """(B,) float 1.0 where the response (actions t ≥ start of seq[:, 1:], inside the mask) holds an EOS token."""
    actions = response_mask(mask[:, 1:].astype(bool), start)
    is_eos = jnp.isin(seq[:, 1:], jnp.asarray(eos_token_ids, seq.dtype))
    return jnp.any(is_eos & actions, axis=-1).astype(jnp.float32)


# ---------------------------------------------------------------------------------------------------- one rl_step


def response_mask(sequence_mask, start):
    """(B, A) bool: action positions of the response (t ≥ start) that are inside the sequence."""
    t = jnp.arange(sequence_mask.shape[1])
    return sequence_mask & (t[None, :] >= start[:, None])


def _masked_sum_mean(x, mask):
    """mean_b Σ_t x·m (the reference's '*_with_kl_penalty' and KL metrics)."""
    return jnp.mean(jnp.sum(x * mask, axis=-1))


def _whiten(x, mask):
    m = mask.astype(jnp.float32)
    mean = jnp.sum(x * m) / jnp.sum(m)
    var = jnp.sum(jnp.square(x - mean) * m) / jnp.sum(m)
    return (x - mean) * jax.lax.rsqrt(var + 1e-8)


def advantages(rollout: Rollout, lam, cfg: RLConfig) -> Advantages:
    """KL-shaped rewards/costs → GAE → the actor's advantage (PPO: A_r; PPO-Lag: (A_r − λA_c)/(1+λ))."""
    seq_mask = rollout.mask[:, 1:]
    reward = rollout.reward
    if cfg.mode == "reward_shaping":
        reward = reward - cfg.lambda_init * rollout.cost  # R' = R − λ·C with a fixed λ (§3.14)
    rewards = ops.kl_shaped_scores(reward, rollout.log_probs, rollout.ref_log_probs, seq_mask, cfg.kl_coeff,
                                   cfg.clip_range_score)
    adv_r, ret_r = ops.gae_advantages_and_returns(rollout.reward_values, rewards, seq_mask, 0, cfg.gamma,
                                                  cfg.gae_lambda)
    out = Advantages(rewards=rewards, reward_advantages=adv_r, reward_returns=ret_r, advantages=adv_r)
    if cfg.cost_critic:
        def stream(cost, values):
            costs = ops.kl_shaped_scores(cost, rollout.log_probs, rollout.ref_log_probs, seq_mask,
                                         -cfg.kl_coeff, cfg.clip_range_score)  # c_t = +β·kl_t (spec §3.10)
            return (costs, *ops.gae_advantages_and_returns(values, costs, seq_mask, 0, cfg.gamma, cfg.gae_lambda))

        if cfg.num_constraints:  # K streams, each shaped and GAE'd alone; (B, A, K) like the critic's values
            costs, adv_c, ret_c = jax.vmap(stream, in_axes=(1, 2), out_axes=-1)(rollout.cost, rollout.cost_values)
            combined = ops.lagrangian_advantages_multi(adv_r, jnp.moveaxis(adv_c, -1, 0), lam)
        else:
            costs, adv_c, ret_c = stream(rollout.cost, rollout.cost_values)
            combined = ops.lagrangian_advantages(adv_r, adv_c, lam)
        out = out.replace(costs=costs, cost_advantages=adv_c, cost_returns=ret_c, advantages=combined)
    if cfg.whiten_advantages:
        out = out.replace(advantages=_whiten(out.advantages, response_mask(seq_mask, rollout.start)))
    return out


def lambda_step(state: RLState, cfg: RLConfig):
    """(log λ after this step's update, the PID memory after it (None unless lambda_update='pid'), J_c used): one
    update from the window's J_c once global_step ≥ lambda_update_delay_steps (PPO-Lag / GRPO-Lag only): an SGD
    step on log λ (spec §3.13) or the PID Lagrangian (§7.27). A non-finite result keeps the old values.
    With K constraints all are (K,) and each λ_k moves with its own J_ck only (METHODS_BEYOND §3.2)."""
    episode_cost = state.cost_window.mean()
    log_lambda, pid = state.log_lambda, state.lambda_pid
    if not cfg.learns_lambda:
        return log_lambda, pid, episode_cost
    _, threshold, lambda_lr, lambda_max = cfg.lambda_hyper()
    due = state.global_step >= cfg.lambda_update_delay_steps
    if cfg.pid:
        lam, integral = ops.pid_lagrange_update(pid.integral, pid.previous_cost, episode_cost, threshold,
                                                cfg.lambda_pid, lambda_max,
                                                first=state.global_step <= cfg.lambda_update_delay_steps)
        # λ may reach 0 (the constraint switched off): log λ is floored so that exp(log λ) is 0 to f32 precision
        updated = jnp.log(jnp.maximum(lam, PID_LAMBDA_FLOOR))
        apply = due & jnp.isfinite(updated) & jnp.isfinite(integral)
        pid = LagrangePID(jnp.where(apply, integral, pid.integral), jnp.where(apply, episode_cost, pid.previous_cost))
    else:
        updated = ops.lagrange_update(log_lambda, episode_cost, threshold, lambda_lr, lambda_max)
        apply = due & jnp.isfinite(updated)
    return jnp.where(apply, updated, log_lambda), pid, episode_cost


def _apply_update(module: ModuleState, grads, optimizer, finite, on_host: bool = False) -> ModuleState:
    """One optimizer update; when `finite` is False the module is returned unchanged (the step is skipped).

    A `lax.cond`, not a `where` over old and new: the skipped branch passes the (donated) buffers through, so the
    update happens in place instead of holding two copies of parameters and optimizer state (≈ 10 GiB per 7B model
    and device at fsdp=8)."""

    def apply(m: ModuleState) -> ModuleState:
        updates, opt_state = optimizer.update(trainable(grads), to_device(m.opt_state, on_host), trainable(m.params))
        return ModuleState({**m.params, **optax.apply_updates(trainable(m.params), updates)},
                           to_host(opt_state, on_host), m.updates + 1)

    return jax.lax.cond(finite, apply, lambda m: m, module)


def ptx_loss(models: RLModels, actor_params, batch, actor_base=None) -> jax.Array:
    """The SFT loss (§3.3) of a PTX batch {'input_ids', 'attention_mask', 'labels'}, through the actor's log-probs
    (chunked over the vocabulary when configured)."""
    targets = batch["labels"][:, 1:]
    safe = jnp.where(targets == ops.IGNORE_INDEX, 0, targets)
    lp = models.log_probs_fn(actor_base)(actor_params, batch["input_ids"], batch["attention_mask"], safe)
    return ops.sft_loss_from_log_probs(lp, batch["labels"])


def make_rl_step(models: RLModels, fresh: bool = False):
    """rl_step(state, rollout, ptx_batch | None, bases | None) → (state, metrics, rollout | None) (spec §1.3 step 2);
    bases: the frozen arrays LoRA adapters sit on (`RLModels.bases`).

    λ is updated first (PPO-Lag, after the delay), then one actor update (with the PTX term ½(∇L_rl + ptx_coeff·∇L_ptx)
    when a PTX batch is given, spec §3.15) and the clipped critic updates. A step whose losses or gradients are
    non-finite applies no update and counts in `state.skipped`.

    joint_update: the actor and critic losses touch disjoint parameters, so one `value_and_grad` of their sum gives
    each model exactly its own gradient from a single pass; otherwise the actor's gradient is taken first and each
    critic's after it (the same gradients; lower peak memory). fresh=True: the state's parameters are the ones that
    generated the rollout (the first update on it), so the old log-probs and values are this pass's forward outputs
    (stop-gradient); the returned rollout carries them for later micro-batch passes (None when not fresh).
    """
    cfg = models.cfg
    critics = cfg.critics
    if cfg.critic_free:
        return _make_critic_free_step(models)

    def step(state: RLState, rollout: Rollout, ptx_batch, bases=None):
        log_lambda, lambda_pid, episode_cost = lambda_step(state, cfg)
        lam = jnp.exp(log_lambda)
        seq, mask = rollout.seq, rollout.mask
        resp = response_mask(mask[:, 1:], rollout.start)
        actor_base = (bases or {}).get("actor")
        actor_log_probs = models.log_probs_fn(actor_base)

        def actor_objective(actor_params, old_values):
            """L_rl (+ PTX): (loss, (aux, old rollout, advantages)); old_values fill a fresh rollout's values."""
            log_probs = actor_log_probs(actor_params, seq, mask, seq[:, 1:])
            old = rollout
            if fresh:
                old = jax.lax.stop_gradient(rollout.replace(log_probs=log_probs, **old_values))
            adv = advantages(old, lam, cfg)
            rl_loss = ops.ppo_actor_loss(log_probs, old.log_probs, adv.advantages, resp, cfg.clip_range_ratio)
            ratio = jnp.exp(log_probs - old.log_probs)
            aux = {"train/actor_loss": rl_loss,
                   "train/ratio": ops.masked_mean(ratio, resp),
                   "train/clip_fraction": ops.masked_mean(
                       (jnp.abs(ratio - 1.0) > cfg.clip_range_ratio).astype(jnp.float32), resp)}
            total = rl_loss
            if ptx_batch is not None:
                aux["train/ptx_loss"] = ptx_loss(models, actor_params, ptx_batch, actor_base)
                total = 0.5 * (rl_loss + cfg.ptx_coeff * aux["train/ptx_loss"])
            return total, (aux, old, adv)

        def critic_objective(params, role, old, adv):
            return _critic_loss(_values(models, role, params, seq, mask, bases), old.values(role), adv.returns(role),
                                resp, cfg.clip_range_value)

        # gradients are keyed by the state's field names ("actor", "reward_critic", "cost_critic")
        if cfg.joint_update:
            def objective(params):
                values = {role: _values(models, role, params[role.critic_field], seq, mask, bases) for role in critics}
                fresh_values = {role.values_field: v for role, v in values.items()} if fresh else {}
                total, (aux, old, adv) = actor_objective(params["actor"], fresh_values)
                for role in critics:
                    loss = _critic_loss(values[role], old.values(role), adv.returns(role), resp, cfg.clip_range_value)
                    aux[f"train/{role.name}_critic_loss"] = loss
                    total = total + loss
                return total, (aux, old, adv)

            trainables = {"actor": state.actor.params, **{r.critic_field: r.critic(state).params for r in critics}}
            (total, (aux, old, adv)), grads = jax.value_and_grad(objective, has_aux=True)(trainables)
        else:
            fresh_values = {}
            if fresh:  # the critics' rollout-time values, before any of them moves
                fresh_values = {r.values_field: jax.lax.stop_gradient(_values(models, r, r.critic(state).params, seq,
                                                                              mask, bases)) for r in critics}
            (total, (aux, old, adv)), actor_grads = jax.value_and_grad(actor_objective, has_aux=True)(
                state.actor.params, fresh_values)
            grads = {"actor": actor_grads}
            for role in critics:
                loss, grads[role.critic_field] = jax.value_and_grad(critic_objective)(role.critic(state).params, role,
                                                                                     old, adv)
                aux[f"train/{role.name}_critic_loss"] = loss
                total = total + loss
        grad_norm = optax.global_norm({k: trainable(v) for k, v in grads.items()})
        finite = jnp.isfinite(total) & jnp.isfinite(grad_norm)
        new_state = state.replace(
            log_lambda=log_lambda, lambda_pid=lambda_pid, global_step=state.global_step + 1,
            skipped=state.skipped + (~finite).astype(jnp.int32),
            actor=_apply_update(state.actor, grads["actor"], models.actor_opt, finite, models.optimizer_on_host))
        metrics: dict[str, Any] = {"train/actor_lr": models.actor_schedule(state.actor.updates)}
        for role in critics:
            module = role.critic(state)
            metrics[f"train/{role.critic_field}_lr"] = models.critic_schedule(module.updates)
            new_state = role.with_critic(new_state, _apply_update(module, grads[role.critic_field], models.critic_opt,
                                                                  finite, models.optimizer_on_host))

        lengths = jnp.sum(resp, axis=-1).astype(jnp.float32)
        kl = old.log_probs - old.ref_log_probs
        metrics.update(aux)
        metrics.update({
            "train/reward": jnp.mean(old.reward),
            "train/reward_with_kl_penalty": _masked_sum_mean(adv.rewards, resp),
            "train/reward_advantage": ops.masked_mean(adv.reward_advantages, resp),
            "train/reward_return": ops.masked_mean(adv.reward_returns, resp),
            "train/reward_value": ops.masked_mean(old.reward_values, resp),
            "train/kl_divergence": _masked_sum_mean(kl, resp),
            "train/mean_generated_length": jnp.mean(lengths),
            "train/max_generated_length": jnp.max(lengths),
            "train/grad_norm": grad_norm,
            "train/skipped_updates": new_state.skipped,
            "train/global_step": new_state.global_step,  # read with the metrics: no extra host round trip
        })
        metrics.update(constraint_metrics(cfg, lam, episode_cost, old.cost))
        if cfg.cost_critic:
            streams = {"cost_with_kl_penalty": (_masked_sum_mean, adv.costs),
                       "cost_advantage": (ops.masked_mean, adv.cost_advantages),
                       "cost_return": (ops.masked_mean, adv.cost_returns),
                       "cost_value": (ops.masked_mean, old.cost_values)}
            for key, (reduce, x) in streams.items():
                metrics.update(per_constraint(cfg, key, lambda k, r=reduce, x=x: r(x if k is None else x[..., k],
                                                                                   resp)))
        return new_state, metrics, (old if fresh else None)

    return step


# ---------------------------------------------------------------------------------------------------- critic-free


def sequence_kl(rollout: Rollout):
    """K_i = Σ_{t ≥ start} (log π_old − log π_ref)·m: (B,) (METHODS_BEYOND §2.2)."""
    resp = response_mask(rollout.mask[:, 1:], rollout.start)
    return jnp.sum((rollout.log_probs - rollout.ref_log_probs) * resp, axis=-1)


def make_group_advantages(cfg: RLConfig):
    """advantages(rollouts of one chunk of prompts, G of them in return order) → the same rollouts with
    reward_advantage / cost_advantage: group g of prompt p is row p of the G micro-batches (METHODS_BEYOND §2.3)."""

    def fn(rewards, costs, kls):
        """rewards, kls: (G, B), costs (G, B) or (G, B, K) → A_r (G, B), A_c like costs | None."""
        g = rewards.shape[0]
        if cfg.kl_mode == "reward":  # sequence-level shaping, the PPO-Lag signs (B§3.10)
            rewards = rewards - cfg.kl_coeff * kls
            costs = None if costs is None else costs + cfg.kl_coeff * kls.reshape(kls.shape + (1,) * (costs.ndim - 2))
        clip = lambda x: jnp.clip(x, -cfg.clip_range_score, cfg.clip_range_score)  # noqa: E731
        adv = lambda x: ops.group_advantages(clip(x).T.reshape(-1), g, cfg.advantage_estimator,  # noqa: E731
                                             cfg.group_eps).reshape(-1, g).T
        if costs is None:
            return adv(rewards), None
        if costs.ndim == 3:  # each constraint's cost is normalised within the group on its own
            return adv(rewards), jnp.stack([adv(costs[..., k]) for k in range(costs.shape[-1])], axis=-1)
        return adv(rewards), adv(costs)

    return fn


def per_constraint(cfg: RLConfig, key: str, value: Callable) -> dict:
    """{'train/<key>': value(None)} for the single constraint, {'train/<key>/<name>': value(k)} for K of them."""
    if not cfg.num_constraints:
        return {f"train/{key}": value(None)}
    return {f"train/{key}/{name}": value(k) for k, name in enumerate(cfg.constraints)}


def constraint_metrics(cfg: RLConfig, lam, episode_cost, cost) -> dict:
    """λ, the window's J_c and the rollout's mean cost, per constraint (METHODS_BEYOND §3.5 names)."""
    pick = lambda x, k: x if k is None else x[..., k]  # noqa: E731
    out = {**per_constraint(cfg, "lambda", lambda k: pick(lam, k)),
           **per_constraint(cfg, "episode_cost", lambda k: pick(episode_cost, k))}
    if cfg.uses_cost:
        out.update(per_constraint(cfg, "cost", lambda k: jnp.mean(pick(cost, k))))
    return out


def _make_critic_free_step(models: RLModels):
    """GRPO / GRPO-Lag rl_step(state, rollout, ptx) → (state, metrics, None): λ update, A = (A_r − λA_c)/(1+λ) from
    the stored group advantages, the clipped surrogate + β_kl·k3 (kl_mode 'loss'), aggregated; no critics."""
    cfg = models.cfg

    def step(state: RLState, rollout: Rollout, ptx_batch, bases=None):
        log_lambda, lambda_pid, episode_cost = lambda_step(state, cfg)
        lam = jnp.exp(log_lambda)
        seq, mask = rollout.seq, rollout.mask
        resp = response_mask(mask[:, 1:], rollout.start)
        actor_base = (bases or {}).get("actor")
        actor_log_probs = models.log_probs_fn(actor_base)
        adv = rollout.reward_advantage
        if cfg.uses_cost and cfg.num_constraints:
            adv = ops.lagrangian_advantages_multi(rollout.reward_advantage, rollout.cost_advantage.T, lam)
        elif cfg.uses_cost:
            adv = ops.lagrangian_advantages(rollout.reward_advantage, rollout.cost_advantage, lam)
        beta_kl = cfg.kl_loss_coeff if cfg.kl_mode == "loss" else 0.0
        normalizer = cfg.loss_normalizer or float(seq.shape[1] - 1)

        def objective(params):
            log_probs = actor_log_probs(params, seq, mask, seq[:, 1:])
            loss, aux = ops.grpo_actor_loss(log_probs, rollout.log_probs, rollout.ref_log_probs, adv, resp,
                                            cfg.clip_range_ratio, beta_kl, cfg.aggregation, normalizer)
            aux = {"train/actor_loss": loss, **{f"train/{k}": v for k, v in aux.items()}}
            total = loss
            if ptx_batch is not None:
                aux["train/ptx_loss"] = ptx_loss(models, params, ptx_batch, actor_base)
                total = 0.5 * (loss + cfg.ptx_coeff * aux["train/ptx_loss"])
            return total, aux

        (total, aux), grads = jax.value_and_grad(objective, has_aux=True)(state.actor.params)
        grad_norm = optax.global_norm(trainable(grads))
        finite = jnp.isfinite(total) & jnp.isfinite(grad_norm)
        new_state = state.replace(
            log_lambda=log_lambda, lambda_pid=lambda_pid, global_step=state.global_step + 1,
            skipped=state.skipped + (~finite).astype(jnp.int32),
            actor=_apply_update(state.actor, grads, models.actor_opt, finite, models.optimizer_on_host))
        lengths = jnp.sum(resp, axis=-1).astype(jnp.float32)
        metrics = {**aux, "train/actor_lr": models.actor_schedule(state.actor.updates),
                   "train/reward": jnp.mean(rollout.reward),
                   "train/reward_advantage": jnp.mean(jnp.abs(rollout.reward_advantage)),
                   "train/kl_divergence": jnp.mean(sequence_kl(rollout)),
                   "train/mean_generated_length": jnp.mean(lengths), "train/max_generated_length": jnp.max(lengths),
                   "train/grad_norm": grad_norm,
                   "train/skipped_updates": new_state.skipped, "train/global_step": new_state.global_step,
                   **constraint_metrics(cfg, lam, episode_cost, rollout.cost)}
        if cfg.uses_cost:
            metrics.update(per_constraint(cfg, "cost_advantage", lambda k: jnp.mean(jnp.abs(
                rollout.cost_advantage if k is None else rollout.cost_advantage[:, k]))))
        return new_state, metrics, None

    return step


def score_model_end_fn(score_apply) -> Callable:
    """(params, seq, mask) → (B,) end scores of a score model."""

    def fn(params, seq, mask):
        return score_apply(params, seq, mask)[1][:, 0]

    return fn
