"""Test-wide settings: offline hubs and a throw-away data home."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("KRPO_BENCH_HOME", os.path.join(os.getcwd(), ".pytest-home"))

pytest_plugins = ["tests.db"]
