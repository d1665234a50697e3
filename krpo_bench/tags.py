"""The names krpo-bench gives things in MLflow: run and experiment tags, the params it logs beside a
spec's own, artifacts (one home; writers and readers import them from here, and this module imports
nothing)."""

from __future__ import annotations

STUDY_ID = "krpo.study_id"
STUDY_NAME = "krpo.study_name"
KIND = "krpo.kind"
ROLE = "krpo.role"
TRIAL_KEY = "krpo.trial_key"
TRIAL_ID = "krpo.trial_id"
VARIANT = "krpo.variant"
"""The run group's display label (``"krpo group_size=2"``); the variant and grid point are the next two."""
VARIANT_NAME = "krpo.variant_name"
GRID_POINT = "krpo.grid_point"
"""JSON list of (dotted path, value) pairs."""
SEED = "krpo.seed"
JOB_ID = "krpo.job_id"
PROCESSES = "krpo.processes"
ESTIMATOR = "krpo.estimator"
PROBE_ID = "krpo.probe_id"

WARM_START_SEED_PARAM = "model.tiny.warm_start_seed"
"""Run param of a tiny-arith trial: the seed of the warm start it trained from (``model.tiny.warm_starts``)."""

ADVANTAGES_ARTIFACT = "diagnostics/advantages.json"
ITEM_OUTCOMES_ARTIFACT = "eval/item_outcomes.json"
