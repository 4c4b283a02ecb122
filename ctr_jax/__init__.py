"""ctr_jax: CTR (Capsules and Transfer Routing) continual learning for text classification."""

__version__ = "0.1.0"
