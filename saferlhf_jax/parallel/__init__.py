"""Device mesh, logical-axis rules and sharding helpers."""

from saferlhf_jax.parallel.mesh import (
    BATCH_AXES,
    DEFAULT_RULES,
    MESH_AXES,
    batch_divisor,
    initialize_distributed,
    local_rows,
    put_global,
    put_local_batch,
    batch_sharding,
    logical_to_spec,
    make_mesh,
    mesh_from_config,
    replicated,
    resolve_mesh_shape,
    rules_dict,
    shard_batch,
    shardings_of,
    to_host,
    tree_shardings,
)

__all__ = ["BATCH_AXES", "DEFAULT_RULES", "MESH_AXES", "batch_divisor", "batch_sharding", "initialize_distributed",
           "local_rows", "logical_to_spec", "make_mesh", "mesh_from_config", "put_global", "put_local_batch",
           "replicated", "resolve_mesh_shape", "rules_dict", "shard_batch", "shardings_of", "to_host", "tree_shardings"]
