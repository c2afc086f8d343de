"""One device mesh with axes (data, fsdp, tensor) and logical-axis rules kept as config data.

Every parameter declares its logical axes where it is created (`saferlhf_jax.models.llama`); activations are
constrained to logical axes where they are made (`saferlhf_jax.parallel.constraints`); the rules below map each
logical name to mesh axes (`mesh.rules.<name>` in every config overrides one). A dimension that the mapped axes do
not divide is replicated instead (and reported), so the same code runs on 1 CPU, 8 simulated devices, an 8-GPU node
or a TPU pod.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# logical name → mesh axis (or tuple of axes, or None = replicated). Overridable from config (`mesh.rules`).
# Parameter axes: vocab, embed, heads, kv_heads, mlp, layers, norm, score. Activation axes: batch, seq, act_*
# (the residual stream is sharded over the batch only: FSDP gathers each layer's weights instead).
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("layers", None),
    ("norm", None),
    ("score", None),
    ("seq", None),
    ("cache_seq", None),
    ("head_dim", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    # a LoRA adapter's rank axis: claims fsdp only where the adapter's other axis has not (A of down_proj, B of
    # q/k/v/o/gate/up — replicated over fsdp before, ~5 GiB per device at 70B and rank 64)
    ("lora_rank", "fsdp"),
)


def rules_config() -> dict[str, str]:
    """The default rules as config strings: 'data,fsdp' for several mesh axes, '' for replicated."""
    def text(target):
        if target is None:
            return ""
        return target if isinstance(target, str) else ",".join(target)

    return {name: text(target) for name, target in DEFAULT_RULES}


def rules_from_config(mesh_cfg) -> tuple[tuple[str, Any], ...]:
    """`mesh.rules` (name → 'axis' | 'axis,axis' | '') → rules; unknown mesh axes are a ValueError."""
    overrides = dict((mesh_cfg.get("rules") if hasattr(mesh_cfg, "get") else None) or {})
    out = []
    for name, target in DEFAULT_RULES:
        if name in overrides:
            axes = tuple(a.strip() for a in str(overrides[name]).split(",") if a.strip())
            bad = [a for a in axes if a not in MESH_AXES]
            if bad:
                raise ValueError(f"mesh.rules.{name}: unknown mesh axes {bad}; use {MESH_AXES} (comma-separated) "
                                 "or '' for replicated")
            target = None if not axes else (axes[0] if len(axes) == 1 else axes)
        out.append((name, target))
    return tuple(out)


def resolve_mesh_shape(data: int = 1, fsdp: int = -1, tensor: int = 1, num_devices: int | None = None) -> tuple:
    """Sizes for (data, fsdp, tensor); one of them may be −1 (fill the rest). Raises a one-line error if impossible."""
    n = num_devices if num_devices is not None else jax.device_count()
    sizes = [int(data), int(fsdp), int(tensor)]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh: at most one axis may be -1, got data={data} fsdp={fsdp} tensor={tensor}")
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh: axis sizes must be positive or -1, got data={data} fsdp={fsdp} tensor={tensor}")
    if -1 in sizes:
        known = math.prod(s for s in sizes if s != -1)
        if n % known:
            raise ValueError(f"mesh: {n} devices cannot be split with data={data} fsdp={fsdp} tensor={tensor}")
        sizes[sizes.index(-1)] = n // known
    if math.prod(sizes) > n:
        raise ValueError(f"mesh: data×fsdp×tensor = {'×'.join(map(str, sizes))} = {math.prod(sizes)} "
                         f"but only {n} devices are available")
    if math.prod(sizes) < n:
        log.warning("mesh uses %d of the %d devices", math.prod(sizes), n)
    return tuple(sizes)


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1, devices: Sequence | None = None) -> Mesh:
    """Mesh with axes ('data', 'fsdp', 'tensor'); `devices` defaults to all devices."""
    devices = list(devices) if devices is not None else jax.devices()
    shape = resolve_mesh_shape(data, fsdp, tensor, len(devices))
    return Mesh(np.asarray(devices[: math.prod(shape)]).reshape(shape), MESH_AXES)


def mesh_from_config(cfg: Mapping | Any) -> Mesh:
    """cfg has fields data / fsdp / tensor (ml_collections or dict)."""
    get = cfg.get if isinstance(cfg, Mapping) else (lambda k, d=None: getattr(cfg, k, d))
    return make_mesh(get("data", 1), get("fsdp", -1), get("tensor", 1))


def rules_dict(rules=None) -> dict:
    return dict(DEFAULT_RULES if rules is None else rules)


def logical_to_spec(logical_axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules=None,
                    quiet: bool = False) -> P:
    """PartitionSpec for one array; dims whose mapped mesh axes don't divide them (or repeat an axis) replicate
    (reported unless `quiet`: activations of odd sizes, e.g. one decode token, replicate by design)."""
    rules = rules_dict(rules)
    used: set[str] = set()
    spec = []
    for name, dim in zip(logical_axes, shape):
        target = rules.get(name) if name is not None else None
        axes = () if target is None else ((target,) if isinstance(target, str) else tuple(target))
        axes = tuple(a for a in axes if mesh.shape.get(a, 1) > 1 and a not in used)
        size = math.prod(mesh.shape[a] for a in axes) if axes else 1
        if axes and dim % size:
            if not quiet:
                log.info("replicating a dim of size %d (logical %r): not divisible by %s=%d", dim, name, axes, size)
            axes = ()
        used.update(axes)
        spec.append(None if not axes else (axes[0] if len(axes) == 1 else axes))
    return P(*spec)


def tree_shardings(logical_tree, shape_tree, mesh: Mesh, rules=None):
    """Map a tree of logical-axis tuples (and a matching tree of shaped leaves) to NamedShardings."""
    return jax.tree.map(
        lambda axes, x: NamedSharding(mesh, logical_to_spec(axes, np.shape(x), mesh, rules)),
        logical_tree, shape_tree, is_leaf=lambda a: isinstance(a, tuple))


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Leading (batch) dim over (data, fsdp); the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def shardings_of(tree, mesh: Mesh):
    """Each array's sharding when it is placed on `mesh`; anything else (scalars and arrays not yet placed on the
    mesh: optimizer counts, PRNG keys) replicated. For explicit `in_shardings` that match the arguments."""
    rep = replicated(mesh)

    def one(x):
        sh = getattr(x, "sharding", None)
        return sh if isinstance(sh, NamedSharding) and sh.mesh == mesh else rep

    return jax.tree.map(one, tree)


def batch_divisor(mesh: Mesh) -> int:
    """How many shards the batch dimension is split into."""
    return mesh.shape["data"] * mesh.shape["fsdp"]


def shard_batch(batch, mesh: Mesh):
    """Place a *global* batch dict (the same full arrays on every process) with the batch sharding: each device
    takes its rows. Clear error if B doesn't divide. (`put_local_batch` is for per-host slices.)"""
    div = batch_divisor(mesh)

    def put(x):
        x = np.asarray(x)
        sharding = replicated(mesh) if x.ndim == 0 else batch_sharding(mesh, x.ndim)
        if x.ndim and x.shape[0] % div:
            raise ValueError(f"batch size {x.shape[0]} is not divisible by the data axes data×fsdp = {div}")
        if jax.process_count() == 1:
            return jax.device_put(x, sharding)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(put, batch)


def initialize_distributed(cfg) -> None:
    """Multi-host start (`config.distributed.enabled`): one process per host, before any other JAX call.

    On TPU pods and SLURM/Open MPI clusters the arguments are discovered automatically; elsewhere give
    coordinator_address ("host:port"), num_processes and process_id."""
    if cfg is None or not bool(cfg.get("enabled", False)):
        return
    kwargs = {}
    if cfg.get("coordinator_address"):
        kwargs["coordinator_address"] = str(cfg.coordinator_address)
    if int(cfg.get("num_processes", 0)) > 0:
        kwargs["num_processes"] = int(cfg.num_processes)
    if int(cfg.get("process_id", -1)) >= 0:
        kwargs["process_id"] = int(cfg.process_id)
    # CPU hosts (and the CPU side of GPU/TPU hosts) talk through gloo; accelerators use their own collectives
    jax.config.update("jax_cpu_collectives_implementation", str(cfg.get("cpu_collectives", "gloo")))
    jax.distributed.initialize(**kwargs)
    log.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())


def put_global(local_batch, sharding):
    """Host-local batch (this process's slice of the global batch) → global arrays with `sharding`.

    `sharding` is one sharding for every leaf, or a function ndim → sharding."""
    pick = sharding if callable(sharding) else (lambda ndim: sharding)
    if jax.process_count() == 1:
        return jax.tree.map(lambda x: jax.device_put(x, pick(np.ndim(x))), local_batch)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(pick(np.ndim(x)), np.asarray(x)),
                        local_batch)


def put_local_batch(local_batch, mesh: Mesh):
    """This process's rows of a batch dict → global (B, ...) arrays sharded over the data axes (one process: the
    whole batch, as `shard_batch`). Clear error when the rows do not split over this process's devices."""
    div = batch_divisor(mesh) // jax.process_count() or 1
    for x in jax.tree.leaves(local_batch):
        if np.ndim(x) and np.shape(x)[0] % div:
            raise ValueError(f"batch of {np.shape(x)[0]} rows on this host is not divisible by its "
                             f"{div} data shards (data×fsdp = {batch_divisor(mesh)} over {jax.process_count()} hosts)")
    return put_global(local_batch, lambda ndim: batch_sharding(mesh, ndim) if ndim else replicated(mesh))


def local_rows(x) -> np.ndarray:
    """This process's rows of a batch-sharded global array, in order, as numpy (the inverse of `put_global`)."""
    if jax.process_count() == 1 or getattr(x, "is_fully_addressable", True):
        return np.asarray(x)
    shards = {}
    for shard in x.addressable_shards:
        rows = shard.index[0]
        shards.setdefault((rows.start or 0), np.asarray(shard.data))  # replicas over tensor: keep one
    return np.concatenate([shards[k] for k in sorted(shards)], axis=0)


def global_max(value: int) -> int:
    """The largest of one integer per process (a collective in multi-host runs)."""
    if jax.process_count() == 1:
        return int(value)
    from jax.experimental import multihost_utils

    return int(np.max(multihost_utils.process_allgather(np.int32(value))))


def to_host(tree):
    """Full numpy values of (possibly multi-host sharded) arrays, on every process; a collective when sharded
    across processes, so every process must call it at the same point."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    def one(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable:
            return np.asarray(x)
        if x.sharding.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(one, tree)
