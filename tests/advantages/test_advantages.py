"""Estimators: paper vectors, equality with the per-rollout definitions, NaN and order handling,
and the catalog every estimator is registered in (each of its rows is tested here as it is)."""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from krpo_bench.advantages import CATALOG, EstimatorParams, Need, build_estimator, get_estimator, reference
from krpo_bench.spec.trial import TrialSpec
from tests.trial_specs import tiny_trial

SELF_CONTAINED = sorted(n for n, e in CATALOG.items() if not e.needs & {Need.LENGTHS, Need.BASELINE_REWARDS})
VECTORS = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "krpo_vectors.json"


def _vectors() -> list[dict]:
    path = VECTORS if VECTORS.exists() else Path(__file__).resolve().parents[1] / "data" / "krpo_vectors.json"
    return json.loads(path.read_text())["cases"]


@pytest.mark.parametrize("case", _vectors(), ids=lambda c: f"G{len(c['rewards'])}-Q{c['Q']:.1e}")
def test_krpo_matches_paper_vectors(case):
    est = get_estimator("krpo", Q=case["Q"], R=case["R"])
    got = est(torch.tensor([case["rewards"]], dtype=torch.float64))[0]
    want = torch.tensor(case["krpo_advantages"], dtype=torch.float64)
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-9)


def test_paper_facts_order_dependence():
    est = get_estimator("krpo")
    late = est(torch.tensor([[0.0] * 11 + [1.0]], dtype=torch.float64))[0, -1].item()
    early = est(torch.tensor([[1.0] + [0.0] * 11], dtype=torch.float64))[0, 0].item()
    grpo = get_estimator("grpo")(torch.tensor([[0.0] * 11 + [1.0]], dtype=torch.float64))[0, -1].item()
    assert late == pytest.approx(31.0, abs=0.01)
    assert early == pytest.approx(0.0995, abs=1e-3)
    assert grpo == pytest.approx(3.18, abs=0.01)


reward_values = st.sampled_from([0.0, 1.0, 0.5, 0.01, 0.3, 0.7, 2.0, -1.0, math.nan])


@st.composite
def reward_batches(draw, allow_nan: bool = True):
    groups = draw(st.integers(1, 6))
    size = draw(st.integers(2, 12))
    values = reward_values if allow_nan else reward_values.filter(lambda v: not math.isnan(v))
    return [[draw(values) for _ in range(size)] for _ in range(groups)]


kalman_noise = st.fixed_dictionaries(
    {
        "Q": st.floats(0.0, 1.0),
        "R": st.floats(1e-4, 1.0),
        "x0": st.floats(-1.0, 1.0),
        "P0": st.floats(1e-3, 5.0),
        "estimate": st.sampled_from(["posterior", "prior"]),
        "normalize": st.sampled_from(["posterior_std", "innovation_std", "group_std", "none"]),
    }
)


def _close(got: torch.Tensor, want: list[list[float]]) -> None:
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), rtol=1e-7, atol=1e-7), (got, want)


@settings(max_examples=150, deadline=None)
@given(reward_batches(), st.sampled_from(["group", "batch", "none"]))
def test_grpo_equals_definition(rewards, scale):
    _close(
        get_estimator("grpo", scale=scale)(torch.tensor(rewards, dtype=torch.float64)), reference.grpo(rewards, scale)
    )


@settings(max_examples=100, deadline=None)
@given(reward_batches())
def test_group_baselines_equal_definitions(rewards):
    t = torch.tensor(rewards, dtype=torch.float64)
    _close(get_estimator("dr_grpo")(t), reference.dr_grpo(rewards))
    _close(get_estimator("rloo")(t), reference.rloo(rewards))
    _close(get_estimator("reinforce_pp_baseline")(t), reference.reinforce_pp_baseline(rewards))


@settings(max_examples=200, deadline=None)
@given(reward_batches(), kalman_noise)
def test_kalman_equals_definition(rewards, noise):
    t = torch.tensor(rewards, dtype=torch.float64)
    _close(get_estimator("krpo", **noise)(t), reference.krpo(rewards, **noise))


@settings(max_examples=100, deadline=None)
@given(reward_batches(), kalman_noise)
def test_krpo_prior_defaults_and_equals_definition(rewards, noise):
    t = torch.tensor(rewards, dtype=torch.float64)
    noise = {k: v for k, v in noise.items() if k not in ("estimate", "normalize")}
    _close(get_estimator("krpo_prior", **noise)(t), reference.krpo_prior(rewards, **noise))


@settings(max_examples=100, deadline=None)
@given(st.lists(reward_batches(), min_size=1, max_size=4), kalman_noise, st.data())
def test_krpo_persistent_equals_definition_across_steps(batches, noise, data):
    est = get_estimator("krpo_persistent", **noise)
    states: dict = {}
    for rewards in batches:
        ids = data.draw(st.lists(st.integers(0, 5), min_size=len(rewards), max_size=len(rewards), unique=True))
        got = est(torch.tensor(rewards, dtype=torch.float64), ids)
        _close(got, reference.krpo_persistent(rewards, ids, states, **noise))
    assert set(est.states) == set(states)


def test_krpo_persistent_state_round_trips():
    est = get_estimator("krpo_persistent")
    est(torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]]), ["a", "b"])
    again = get_estimator("krpo_persistent")
    again.load_state_dict(json.loads(json.dumps(est.state_dict())))
    batch = torch.tensor([[1.0, 1.0, 0.0]])
    assert torch.equal(est(batch, ["a"]), again(batch, ["a"]))
    with pytest.raises(ValueError, match="prompt id"):
        est(batch)


@pytest.mark.parametrize("name", SELF_CONTAINED)
def test_nan_rewards_get_zero_advantage_and_leave_baselines_alone(name):
    est = get_estimator(name)
    clean = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.5, 0.5, 1.0, 0.0]], dtype=torch.float64)
    with_nan = torch.tensor([[1.0, math.nan, 0.0, 1.0, 0.0], [0.5, 0.5, 1.0, 0.0, math.nan]], dtype=torch.float64)
    ids = ["p0", "p1"]
    got = est(with_nan, ids)
    assert got[0, 1] == 0 and got[1, 4] == 0
    want = get_estimator(name)(clean, ids)
    assert torch.allclose(got[0, [0, 2, 3, 4]], want[0]) and torch.allclose(got[1, :4], want[1])


@pytest.mark.parametrize("name", SELF_CONTAINED)
def test_shuffle_order_permutes_within_groups(name):
    rewards = torch.tensor([[0.0] * 7 + [1.0]] * 64, dtype=torch.float64)
    plain = get_estimator(name)(rewards, list(range(64)))
    shuffled = get_estimator(name, shuffle_order=True)(rewards, list(range(64)))
    assert shuffled.shape == rewards.shape
    assert not torch.isnan(shuffled).any()
    correct = shuffled[rewards == 1.0]
    if CATALOG[name].estimator_class().order_dependent:
        assert correct.unique().numel() > 1, "the correct answer's advantage should depend on its position"
        assert not torch.equal(plain, shuffled)
    else:
        assert torch.allclose(plain, shuffled), "group-mean baselines are order-invariant"


KALMAN = ("krpo", "krpo_prior", "krpo_persistent")


def _mixed_groups(num_groups: int, size: int, seed: int) -> torch.Tensor:
    """0/1 rewards, every group holding at least one of each."""
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.randint(0, 2, (num_groups, size), generator=gen).double()
    rewards[:, 0], rewards[:, 1] = 0.0, 1.0
    return rewards.gather(1, torch.rand(num_groups, size, generator=gen).argsort(dim=1))


@pytest.mark.parametrize("name", KALMAN)
def test_shuffled_kalman_advantages_belong_to_their_own_rollouts(name):
    """With x0 = 0 every Kalman baseline lies in [0, 1) for 0/1 rewards, whatever the order: a
    reward-1 rollout must get a positive advantage and a reward-0 one a non-positive one. Left in
    shuffled order, about half of them would carry another rollout's sign."""
    rewards = _mixed_groups(256, 8, seed=1)
    est = get_estimator(name, shuffle_order=True).estimate(rewards, list(range(256)))
    assert (est.advantages[rewards == 1.0] > 0).all()
    assert (est.advantages[rewards == 0.0] <= 0).all()
    rebuilt = est.advantages * est.scale + est.baseline
    assert torch.allclose(rebuilt, rewards, atol=1e-9), "advantage, scale and baseline of one rollout"


@pytest.mark.parametrize("name", KALMAN)
def test_shuffled_kalman_advantages_are_the_filter_run_in_the_drawn_order(name):
    """The filter's scale falls strictly with position (P0 = 1 is above the steady state), so each
    rollout's scale tells the position the shuffle gave it. Running the plain per-rollout filter over
    the group in that order must give exactly the advantages reported for each rollout."""
    rewards = torch.tensor([[0.1 * i + 0.01 * g for i in range(8)] for g in range(32)], dtype=torch.float64)
    rewards = rewards.gather(1, torch.rand(rewards.shape, generator=torch.Generator().manual_seed(2)).argsort(dim=1))
    est = get_estimator(name, shuffle_order=True).estimate(rewards, list(range(32)))
    order = est.scale.argsort(dim=1, descending=True)
    assert not torch.equal(order, torch.arange(8).expand(32, 8)), "the groups were shuffled"
    drawn = rewards.gather(1, order).tolist()
    params = {"estimate": "prior", "normalize": "innovation_std"} if name == "krpo_prior" else {}
    want = torch.tensor(reference.krpo(drawn, **params), dtype=torch.float64)
    assert torch.allclose(est.advantages.gather(1, order), want, rtol=1e-9, atol=1e-9)


def test_vectorised_float32_stays_close_to_float64():
    rewards = torch.randint(0, 2, (256, 12)).double()
    a64 = get_estimator("krpo")(rewards)
    a32 = get_estimator("krpo")(rewards.float())
    assert torch.allclose(a32.double(), a64, rtol=1e-4, atol=1e-3)


def test_bad_parameters_are_named():
    with pytest.raises(ValidationError, match="R"):
        get_estimator("krpo", R=0.0)
    with pytest.raises(ValidationError, match="Qq"):
        get_estimator("krpo", Qq=1e-5)
    with pytest.raises(ValueError, match="allowed: dr_grpo, ebpo, gpg, grpo"):
        get_estimator("ppo")
    with pytest.raises(ValueError, match="num_groups, group_size"):
        get_estimator("grpo")(torch.zeros(12))


# --- every row of the catalog, as it is ---------------------------------------------------------


def _reference(name: str, rewards: list[list[float]], offered: dict) -> list[list[float]]:
    """The row's reference loop with the estimator's default parameters and whichever of
    ``offered`` (lengths, baseline_rewards, prompt_ids, state) its signature names."""
    entry = CATALOG[name]
    params = get_estimator(name).params.model_dump(exclude={*EstimatorParams.model_fields, "name"})
    accepted = inspect.signature(entry.reference).parameters
    return entry.reference(rewards, **params, **{k: v for k, v in offered.items() if k in accepted})


@pytest.mark.parametrize("name", list(CATALOG))
@settings(max_examples=25, deadline=None)
@given(batches=st.lists(reward_batches(), min_size=1, max_size=3), data=st.data())
def test_every_estimator_equals_its_reference_loop_across_steps(name, batches, data):
    est = get_estimator(name)
    state: dict = {}
    for rewards in batches:
        ids = data.draw(st.lists(st.integers(0, 5), min_size=len(rewards), max_size=len(rewards)))
        lengths = [[data.draw(st.integers(0, 30)) for _ in row] for row in rewards]
        greedy = [data.draw(reward_values) for _ in rewards]
        inputs = {"lengths": lengths, "baseline_rewards": greedy}
        got = est(
            torch.tensor(rewards, dtype=torch.float64),
            ids,
            **{k: torch.tensor(v, dtype=torch.float64) for k, v in inputs.items()},
        )
        want = _reference(name, rewards, {**inputs, "prompt_ids": ids, "state": state})
        want = torch.tensor(want, dtype=torch.float64)
        assert torch.allclose(got, want, rtol=1e-6, atol=1e-6 * max(1.0, want.abs().max().item())), (got, want)


@pytest.mark.parametrize("name", [n for n, e in CATALOG.items() if e.needs])
def test_every_estimator_refuses_a_batch_without_what_it_needs(name):
    rewards = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    supplied = {"prompt_ids": ["a", "b"], "lengths": torch.ones(2, 3), "baseline_rewards": torch.zeros(2)}
    for need in CATALOG[name].needs:
        inputs = {k: v for k, v in supplied.items() if k != need}
        with pytest.raises(ValueError, match=f"{name} needs"):
            get_estimator(name).estimate(rewards, inputs.pop("prompt_ids", None), **inputs)


@pytest.mark.parametrize("name", list(CATALOG))
def test_a_trial_builds_its_estimator_from_the_validated_block_itself(name):
    """The spec's union is the catalog's, and the estimator keeps the validated block as its
    parameters: no dump to keyword arguments, no second validation."""
    block = TrialSpec.model_validate(tiny_trial(estimator={"name": name, "advantage_noise": 0.5})).estimator
    assert type(block) is CATALOG[name].spec and isinstance(block, CATALOG[name].params)
    est = build_estimator(block, seed=3)
    assert type(est) is CATALOG[name].estimator_class() and est.params is block and est.seed == 3
    assert est.name == name and est.needs == CATALOG[name].needs


def test_maxrl_reads_a_group_mean_zero_up_to_rounding_as_zero():
    """Signed rewards that cancel sum to +-5.6e-17 by the order of the additions (found by the
    reference-loop property test): both forms read that mean as zero, never advantages of 1e16."""
    rewards = [[0.7, -1.0, math.nan, math.nan, 2.0, 0.3, -1.0, 0.0, -1.0]]
    got = get_estimator("maxrl")(torch.tensor(rewards, dtype=torch.float64))
    assert torch.equal(got, torch.zeros(1, 9, dtype=torch.float64))
    assert reference.maxrl(rewards) == [[0.0] * 9]
    assert get_estimator("maxrl")(torch.tensor([[0.5, 1.0]], dtype=torch.float64)).tolist() == [[-1 / 3, 1 / 3]]
