"""Device mesh, logical-axis rules and sharding helpers."""

from saferlhf_jax.parallel.mesh import (
    BATCH_AXES,
    DEFAULT_RULES,
    MESH_AXES,
    batch_divisor,
    initialize_distributed,
    put_global,
    batch_sharding,
    logical_to_spec,
    make_mesh,
    mesh_from_config,
    replicated,
    resolve_mesh_shape,
    rules_dict,
    shard_batch,
    tree_shardings,
)

__all__ = ["BATCH_AXES", "DEFAULT_RULES", "MESH_AXES", "batch_divisor", "initialize_distributed", "put_global", "batch_sharding", "logical_to_spec",
           "make_mesh", "mesh_from_config", "replicated", "resolve_mesh_shape", "rules_dict", "shard_batch",
           "tree_shardings"]
