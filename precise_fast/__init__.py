"""precise_fast: GRPO post-training of flow-matching text-to-image models around the
Precise SDE-consistent sampler (arXiv 2605.23522)."""

__version__ = "0.1.0"
