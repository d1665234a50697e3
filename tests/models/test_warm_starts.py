"""Warm starts that vary with the trial seed (``model.tiny.warm_starts``): trial seed s starts from the
tiny-arith build of seed ``tiny.seed + s mod warm_starts``, each built once and cached; the default
(one warm start) is every trial starting from the same build, as before the option existed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient
from safetensors.torch import load_file

from krpo_bench import tags as krpo_tags
from krpo_bench.models import load_model
from krpo_bench.models.config import ModelSpec, TinyArithOptions
from krpo_bench.models.tiny_arith import SHIPPED_BUILDS, WEIGHTS_FILE, build_tiny_arith, tiny_arith_cache_key
from krpo_bench.spec.trial import TrialSpec
from krpo_bench.training.trial import run_trial

SMALL = {"warmup_steps": 3, "hidden_size": 16, "num_layers": 1, "num_heads": 1}
"""A barely warmed-up, very small build: seconds to make."""
UPGRADE_TRIAL = Path(__file__).resolve().parents[1] / "data" / "upgrade" / "trial.yaml"


def weights(loaded_model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in loaded_model.state_dict().items()}


def same(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KRPO_BENCH_HOME", str(tmp_path))
    return tmp_path


def test_trial_seed_picks_the_warm_start_seed_modulo_warm_starts() -> None:
    options = TinyArithOptions(seed=5, warm_starts=3)
    assert [options.warm_start(s).seed for s in range(7)] == [5, 6, 7, 5, 6, 7, 5]
    assert {options.warm_start(s).warm_starts for s in range(7)} == {1}
    assert {TinyArithOptions(seed=5).warm_start(s).seed for s in range(7)} == {5}


def test_warm_starts_is_no_part_of_a_build() -> None:
    """The build of one seed is the same folder whatever warm_starts a study sets, so seed 0 of the
    default options still installs the shipped artefact."""
    default_key = tiny_arith_cache_key(TinyArithOptions())
    assert tiny_arith_cache_key(TinyArithOptions(warm_starts=4)) == default_key in SHIPPED_BUILDS
    assert tiny_arith_cache_key(TinyArithOptions(warm_starts=4).warm_start(1)) == tiny_arith_cache_key(
        TinyArithOptions(seed=1)
    )
    assert "warm_starts" not in TinyArithOptions(warm_starts=4).recipe()


def test_two_seeds_start_from_different_warm_starts_and_one_seed_always_from_the_same(home: Path) -> None:
    spec = ModelSpec(name="tiny-arith", tiny=TinyArithOptions(**SMALL, warm_starts=2))
    loaded = {seed: load_model(spec, trial_seed=seed) for seed in (0, 1, 2, 3)}
    assert [loaded[s].warm_start_seed for s in (0, 1, 2, 3)] == [0, 1, 0, 1]
    start = {seed: weights(model.model) for seed, model in loaded.items()}
    assert not same(start[0], start[1])
    assert same(start[0], start[2]) and same(start[1], start[3])
    assert same(start[1], weights(load_model(spec, trial_seed=1).model)), "the same seed twice: the same weights"
    builds = sorted(p.name for p in (home / "cache" / "models").iterdir() if not p.name.startswith("."))
    assert builds == sorted(tiny_arith_cache_key(spec.tiny.warm_start(s)) for s in (0, 1)), "each built once"


def test_one_warm_start_gives_every_seed_the_build_of_tiny_seed(home: Path) -> None:
    options = TinyArithOptions(**SMALL, seed=7)
    built = load_file(build_tiny_arith(options) / WEIGHTS_FILE)
    for seed in (0, 1, 5):
        loaded = load_model(ModelSpec(name="tiny-arith", tiny=options), trial_seed=seed)
        assert loaded.warm_start_seed == 7
        state = weights(loaded.model)
        assert all(torch.equal(state[name], tensor) for name, tensor in built.items())


def test_other_models_have_no_warm_start_seed(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = build_tiny_arith(TinyArithOptions(**SMALL))
    monkeypatch.setenv("KRPO_BENCH_DATA_ROOTS", str(folder.parent))  # local models load only under the data roots
    assert load_model(ModelSpec(name=f"hf:{folder}"), trial_seed=3).warm_start_seed is None


def test_a_trial_starts_from_its_seeds_warm_start_and_records_it(home: Path) -> None:
    """The trial's seed reaches the loader: seed 3 with 2 warm starts trains from the build of seed
    ``tiny.seed + 1``, and its MLflow run says so."""
    config = yaml.safe_load(UPGRADE_TRIAL.read_text())
    config["model"]["tiny"]["warm_starts"] = 2
    config["model"]["tiny"]["seed"] = 10
    config["training"] |= {"seed": 3, "max_steps": 1}
    uri = f"sqlite:///{home / 'mlflow.db'}"
    result = run_trial(TrialSpec.model_validate(config), run_dir=home / "run", tracking_uri=uri)
    assert result.status == "succeeded"
    params = MlflowClient(uri).get_run(result.mlflow_run_id).data.params
    assert params[krpo_tags.WARM_START_SEED_PARAM] == "11" and params["model.tiny.warm_starts"] == "2"
    models = home / "cache" / "models"
    built = sorted(p.name for p in models.iterdir() if not p.name.startswith("."))
    expected = TinyArithOptions.model_validate({**config["model"]["tiny"], "seed": 11, "warm_starts": 1})
    assert built == [tiny_arith_cache_key(expected)]
