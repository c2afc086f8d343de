"""saferlhf-jax: Safe RLHF (PKU-SafeRLHF) in JAX/Flax."""

__version__ = "0.1.0"
