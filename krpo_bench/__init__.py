"""krpo-bench: benchmarking and ablation of critic-free RL baselines (KRPO, GRPO, RLOO, ...)."""

__version__ = "0.1.0"
