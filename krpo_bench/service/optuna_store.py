"""Optuna's RDB storage beside the job database, and translating study specs to Optuna objects.

Optuna's tables (``studies``, ``alembic_version``, ...) must not meet ours, so on PostgreSQL they
live in their own schema (``optuna``) of the same database, and on SQLite in a sibling file
(``<db>-optuna.db``, which also keeps Optuna's writes off the job queue's write lock).
"""

from __future__ import annotations

import weakref
from functools import lru_cache

import optuna
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from krpo_bench.service.db import normalize_url
from krpo_bench.spec.study import Pruner, SearchParam, StudySpec, grid_values

OPTUNA_SCHEMA = "optuna"


def optuna_url(db_url: str) -> tuple[str, dict]:
    """Optuna's storage URL and engine kwargs for the job database ``db_url``."""
    url = normalize_url(db_url)
    if url.get_backend_name() == "sqlite":
        database = url.database or ":memory:"
        sibling = database[:-3] + "-optuna.db" if database.endswith(".db") else database + "-optuna"
        return url.set(database=sibling).render_as_string(hide_password=False), {"connect_args": {"timeout": 60}}
    with create_engine(url, poolclass=NullPool).begin() as conn:  # one-off: closed on release
        conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {OPTUNA_SCHEMA}"))
    return url.render_as_string(hide_password=False), {
        "connect_args": {"options": f"-csearch_path={OPTUNA_SCHEMA}"},
        "pool_pre_ping": True,
    }


# The storages made by ``optuna_storage`` that are still alive (cached, or evicted but in use), so
# that ``dispose_optuna_storage`` can reach one without making it.
_live_storages: weakref.WeakValueDictionary[str, optuna.storages.RDBStorage] = weakref.WeakValueDictionary()


@lru_cache(maxsize=8)
def optuna_storage(db_url: str) -> optuna.storages.RDBStorage:
    """The (cached, per process) Optuna storage for ``db_url``; one evicted from the cache closes its
    connections when it is collected."""
    url, engine_kwargs = optuna_url(db_url)
    storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    weakref.finalize(storage, storage.engine.dispose)
    _live_storages[db_url] = storage
    return storage


def dispose_optuna_storage(db_url: str) -> None:
    """Close the pooled connections of the Optuna storage for ``db_url``, if one was made (it stays
    cached and usable: it connects again when next used). Call it before the database goes away
    (dropped, a server shut down): the cache keeps the storage alive past its database, and its pool's
    connections would otherwise stay open until the process ends."""
    storage = _live_storages.get(db_url)
    if storage is not None:
        storage.engine.dispose()


def distribution(param: SearchParam) -> optuna.distributions.BaseDistribution:
    """The Optuna distribution of one ``space`` entry."""
    if param.type == "choice":
        return optuna.distributions.CategoricalDistribution(param.choices)
    if param.type == "int":
        return optuna.distributions.IntDistribution(int(param.low), int(param.high), step=int(param.step or 1))
    return optuna.distributions.FloatDistribution(
        param.low, param.high, log=param.type == "log_uniform", step=param.step
    )


def make_sampler(spec: StudySpec, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
    """The sampler a search spec names, seeded by ``sampler_seed + seed_offset``.

    Schedulers build a fresh sampler for every batch of asks (in whichever process runs them), so
    the offset (trials asked so far) keeps batches from replaying the same random draws. The grid
    sampler takes ``sampler_seed`` alone: its seed shuffles the grid, and the grid ids it keeps in
    the study index that shuffled list, so the shuffle must be the same in every batch.
    """
    seed = spec.sampler_seed + seed_offset
    if spec.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    if spec.sampler == "qmc":
        return optuna.samplers.QMCSampler(seed=seed)
    space = {path: grid_values(param) for path, param in (spec.space or {}).items()}
    return optuna.samplers.GridSampler(space, seed=spec.sampler_seed)


def make_pruner(pruner: Pruner) -> optuna.pruners.BasePruner:
    """The pruner a search spec names."""
    if pruner.type == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=pruner.startup_trials, n_warmup_steps=pruner.warmup_steps)
    if pruner.type == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, pruner.warmup_steps))
    return optuna.pruners.NopPruner()
