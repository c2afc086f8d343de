"""A synthetic safety world with known ground truth, and the testbed that runs the whole Safe RLHF pipeline in it."""

from saferlhf_jax.testbed import world

__all__ = ["world"]
