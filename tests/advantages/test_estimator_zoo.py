"""The estimator zoo beyond KRPO (ESTIMATORS.md): equality with plain per-rollout loops, the
documented edge cases, the source quirks we chose not to copy, advantage noise and resumable state."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from krpo_bench.advantages import CATALOG, Need, get_estimator, reference
from krpo_bench.advantages.running import ema_before
from krpo_bench.spec.loading import SpecError, validate
from krpo_bench.spec.trial import TrialSpec
from tests.trial_specs import tiny_trial

NAN = math.nan
STATEFUL = ("rae", "running_norm", "ebpo")
reward_values = st.sampled_from([0.0, 1.0, 0.5, 0.01, 0.3, 0.7, 2.0, -1.0, NAN])


@st.composite
def reward_batches(draw, min_groups: int = 1, non_negative: bool = False):
    """Random shapes (group size 2..12), NaNs, and sometimes every group all-equal."""
    groups = draw(st.integers(min_groups, 6))
    size = draw(st.integers(2, 12))
    values = reward_values.filter(lambda v: v >= 0 or math.isnan(v)) if non_negative else reward_values
    rows = [[draw(values) for _ in range(size)] for _ in range(groups)]
    if draw(st.booleans()) and draw(st.booleans()):
        rows = [[row[0]] * size for row in rows]
    return rows


def _close(got: torch.Tensor, want: list[list[float]]) -> None:
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), rtol=1e-7, atol=1e-7), (got, want)


def _t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def _inputs(rows: list[list[float]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Completion lengths and greedy rewards for estimators that take them."""
    gen = torch.Generator().manual_seed(seed)
    t = _t(rows)
    return {
        "lengths": torch.randint(1, 20, t.shape, generator=gen).double(),
        "baseline_rewards": torch.randint(0, 2, t.shape[:1], generator=gen).double(),
    }


# --- equality with the plain loops -------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(reward_batches(), st.data())
def test_opo_equals_definition(rewards, data):
    lengths = [[data.draw(st.integers(0, 30)) for _ in row] for row in rewards]
    got = get_estimator("opo")(_t(rewards), lengths=_t(lengths))
    _close(got, reference.opo(rewards, lengths))


@settings(max_examples=100, deadline=None)
@given(reward_batches(), st.sampled_from(["paper", "verl"]))
def test_gpg_equals_definition(rewards, alpha):
    _close(get_estimator("gpg", alpha=alpha)(_t(rewards)), reference.gpg(rewards, alpha))


@settings(max_examples=100, deadline=None)
@given(reward_batches(), st.booleans())
def test_grpo_passk_equals_definition(rewards, norm):
    _close(get_estimator("grpo_passk", norm_by_std=norm)(_t(rewards)), reference.grpo_passk(rewards, norm))


@settings(max_examples=100, deadline=None)
@given(reward_batches(), st.data())
def test_remax_equals_definition(rewards, data):
    greedy = [data.draw(reward_values) for _ in rewards]
    got = get_estimator("remax")(_t(rewards), baseline_rewards=torch.tensor(greedy, dtype=torch.float64))
    _close(got, reference.remax(rewards, greedy))


@settings(max_examples=100, deadline=None)
@given(reward_batches())
def test_maxrl_and_js_shrinkage_equal_definitions(rewards):
    _close(get_estimator("maxrl")(_t(rewards)), reference.maxrl(rewards))
    _close(get_estimator("js_shrinkage")(_t(rewards)), reference.js_shrinkage(rewards))


@settings(max_examples=60, deadline=None)
@given(st.lists(reward_batches(), min_size=1, max_size=4), st.floats(0.0, 0.99), st.booleans(), st.data())
def test_rae_equals_definition_across_steps(batches, decay, per_prompt, data):
    est = get_estimator("rae", decay=decay, per_prompt=per_prompt)
    state: dict = {}
    for rewards in batches:
        ids = data.draw(st.lists(st.integers(0, 5), min_size=len(rewards), max_size=len(rewards)))
        got = est(_t(rewards), ids)
        _close(got, reference.rae(rewards, state, decay, per_prompt, prompt_ids=ids))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(reward_batches(), min_size=1, max_size=4),
    st.sampled_from(["running", "group"]),
    st.sampled_from(["running", "none"]),
)
def test_running_norm_equals_definition_across_steps(batches, center, scale):
    est = get_estimator("running_norm", center=center, scale=scale)
    state: dict = {}
    for rewards in batches:
        _close(est(_t(rewards)), reference.running_norm(rewards, state, center, scale))


@settings(max_examples=60, deadline=None)
@given(st.lists(reward_batches(), min_size=1, max_size=4), st.sampled_from(["global_std", "batch_std", "none"]))
def test_ebpo_equals_definition_across_steps(batches, normalize):
    est = get_estimator("ebpo", normalize=normalize)
    state: dict = {}
    for rewards in batches:
        want = reference.ebpo(rewards, state, normalize)
        got = est(_t(rewards))
        assert torch.allclose(got, _t(want), rtol=1e-6, atol=1e-6 * max(1.0, got.abs().max().item())), (got, want)


@pytest.mark.parametrize("n", [1, 2, 5, 64, 1000, 12289])
@pytest.mark.parametrize("decay", [0.0, 0.5, 0.95, 0.9999])
def test_blocked_ema_equals_the_recursion(n, decay):
    values = torch.rand(n, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    b, want = 0.25, []
    for v in values.tolist():
        want.append(b)
        b = decay * b + (1 - decay) * v
    got, final = ema_before(values, decay, 0.25)
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), rtol=1e-9, atol=1e-12)
    assert final == pytest.approx(b, rel=1e-9, abs=1e-12)


# --- edge cases documented in ESTIMATORS.md ----------------------------------------------------


def test_opo_edge_cases():
    opo = get_estimator("opo")
    lengths = _t([[3, 9, 1, 4]])
    assert torch.equal(opo(_t([[0.7, NAN, NAN, NAN]]), lengths=lengths), _t([[0.7, 0, 0, 0]])), "size 1: A = r"
    assert torch.equal(opo(_t([[0.5] * 4]), lengths=lengths), torch.zeros(1, 4, dtype=torch.float64))
    rewards = _t([[1, 0, 0, 1], [0.5, 0.2, 0.9, 0.1]])
    assert torch.allclose(opo(rewards, lengths=torch.full((2, 4), 7.0)), get_estimator("dr_grpo")(rewards))
    weighted = opo(_t([[1.0, 0.0]]), lengths=_t([[3, 1]]))
    assert torch.allclose(weighted, _t([[0.25, -0.75]])), "baseline 3/4: the long completion weighs three times"
    with pytest.raises(ValueError, match="opo needs completion lengths"):
        opo(rewards)


def test_gpg_edge_cases():
    rewards = _t([[1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1], [-1, 0, 0, 1]])
    paper = get_estimator("gpg").estimate(rewards)
    assert paper.extras["gpg_alpha"] == pytest.approx(16 / 8), "B = 16 rollouts, M = 8 in the two flat groups"
    verl = get_estimator("gpg", alpha="verl").estimate(rewards)
    assert verl.extras["gpg_alpha"] == pytest.approx(16 / 7), "verl counts r != 0, the -1 included"
    assert (paper.advantages[1:3] == 0).all() and (verl.advantages[1:3] == 0).all()
    single = get_estimator("gpg")(_t([[0.5, NAN], [1.0, 0.0]]))
    assert single[0, 0] == pytest.approx(0.5 * 3 / 3), "size-1 group: baseline 0, A = alpha r"


def test_grpo_passk_edge_cases():
    passk = get_estimator("grpo_passk")
    with pytest.raises(ValueError, match="group_size >= 2"):
        passk(_t([[1.0], [0.0]]))
    assert torch.equal(passk(_t([[1, 0, 1, 0.5]])), torch.zeros(1, 4, dtype=torch.float64)), "tie at the top"
    got = passk(_t([[0.2, 1.0, 0.5, 0.5]]))
    std = torch.tensor([0.2, 1.0, 0.5, 0.5]).double().std().item()
    assert torch.allclose(got, _t([[0, 0.5 / (std + 1e-6), 0, 0]]))
    rewards = torch.rand(64, 8, generator=torch.Generator().manual_seed(0)).double()
    assert (passk(rewards) >= 0).all() and ((passk(rewards) > 0).sum(dim=1) == 1).all()


def test_remax_works_with_one_rollout_per_prompt():
    got = get_estimator("remax")(_t([[1.0], [0.0], [1.0]]), baseline_rewards=_t([0.0, 1.0, NAN]))
    assert torch.equal(got, _t([[1.0], [-1.0], [0.0]])), "a NaN greedy reward leaves its group without baseline"


def test_maxrl_edge_cases():
    got = get_estimator("maxrl")(_t([[0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]]))
    assert torch.equal(got[0], torch.zeros(4, dtype=torch.float64)), "mean 0: A = 0"
    assert torch.allclose(got[1], _t([3, -1, -1, -1])), "p = 1/4: the correct answer gets (1 - p) / p"
    assert torch.equal(got[2], torch.zeros(4, dtype=torch.float64))


def test_js_shrinkage_pulls_a_flat_group_toward_the_other_prompts():
    rewards = _t([[0, 0, 0, 0], [1, 0, 1, 1], [1, 1, 0, 1], [0, 1, 1, 1]])
    got = get_estimator("js_shrinkage").estimate(rewards)
    assert (got.advantages[0] < 0).all(), "an all-fail group is pulled toward the others' mean 0.75"
    assert 0 < got.extras["shrinkage_mean"] < 1
    alone = get_estimator("js_shrinkage")(_t([[1, 0, 1, 1]]))
    assert torch.allclose(alone, get_estimator("rloo")(_t([[1, 0, 1, 1]]))), "one prompt: lambda = 0, RLOO"


def test_rae_is_sequential_and_starts_at_zero():
    rae = get_estimator("rae", decay=0.5)
    assert torch.equal(rae(_t([[1.0, 1.0, 0.0]])), _t([[1.0, 0.5, -0.75]])), "b: 0, 0.5, 0.75"
    assert rae.baseline == pytest.approx(0.375)
    assert rae(_t([[1.0]])).item() == pytest.approx(0.625), "the EMA carries over to the next step"
    per_prompt = get_estimator("rae", decay=0.5, per_prompt=True)
    per_prompt(_t([[1.0, 1.0], [0.0, 0.0]]), ["a", "b"])
    assert per_prompt.baselines == {"a": 0.75, "b": 0.0}
    with pytest.raises(ValueError, match="prompt id"):
        per_prompt(_t([[1.0]]))


def test_running_norm_includes_the_current_batch():
    est = get_estimator("running_norm").estimate(_t([[1, 0, 0, 0], [1, 1, 0, 0]]))
    assert est.extras["running_mean"] == pytest.approx(3 / 8), "the first batch replaces the prior (0, 1)"
    assert est.extras["running_std"] == pytest.approx(_t([1, 0, 0, 0, 1, 1, 0, 0]).std().item())


def test_ebpo_gives_an_all_fail_group_a_negative_signal():
    ebpo = get_estimator("ebpo")
    ebpo(_t([[1, 1, 0, 1], [1, 0, 1, 1]]))
    got = ebpo.estimate(_t([[0, 0, 0, 0], [1, 0, 1, 0]]))
    assert (got.advantages[0] < 0).all() and got.extras["prior_mean"] > 0


# --- the quirks we chose not to copy ------------------------------------------------------------


def test_quirks_not_copied():
    # verl's gpg alpha counts rollouts with a non-zero reward; by default we use the paper's B / (B - M).
    rewards = _t([[1, 0, 0, 0], [0, 0, 0, 0]])
    assert get_estimator("gpg").estimate(rewards).extras["gpg_alpha"] == pytest.approx(8 / 4)
    assert get_estimator("gpg", alpha="verl").estimate(rewards).extras["gpg_alpha"] == pytest.approx(8 / 1)
    # ROLL looks its running state up with the literal key "domain" (a KeyError for a real domain):
    # we keep one state for the task, whatever the prompts are called.
    est = get_estimator("running_norm")
    est(_t([[1, 0]]), ["math/1"])
    assert set(est.state_dict()) == {"mean", "var", "count"}
    # The official MaxRL code multiplies every advantage by 1/G; we do not (prime-rl's form).
    for g in (4, 8):
        rewards = torch.zeros(1, g, dtype=torch.float64)
        rewards[0, 0] = 1.0
        assert get_estimator("maxrl")(rewards)[0, 0].item() == pytest.approx(g - 1.0)


# --- NaN and order handling of the estimators that take extra inputs ----------------------------


@pytest.mark.parametrize("name", [n for n, e in CATALOG.items() if e.needs & {Need.LENGTHS, Need.BASELINE_REWARDS}])
def test_nan_and_order_with_extra_inputs(name):
    clean = _t([[1.0, 0.0, 1.0, 0.0], [0.5, 0.5, 1.0, 0.0]])
    with_nan = _t([[1.0, NAN, 0.0, 1.0, 0.0], [0.5, 0.5, 1.0, 0.0, NAN]])
    lengths = _t([[3, 5, 2, 8, 1], [4, 4, 6, 2, 9]])
    greedy = _t([1.0, 0.0])
    got = get_estimator(name)(with_nan, lengths=lengths, baseline_rewards=greedy)
    want = get_estimator(name)(clean, lengths=_t([[3, 2, 8, 1], [4, 4, 6, 2]]), baseline_rewards=greedy)
    assert got[0, 1] == 0 and got[1, 4] == 0
    assert torch.allclose(got[0, [0, 2, 3, 4]], want[0]) and torch.allclose(got[1, :4], want[1])
    shuffled = get_estimator(name, shuffle_order=True).estimate(with_nan, lengths=lengths, baseline_rewards=greedy)
    assert torch.allclose(shuffled.advantages, got), "lengths travel with their rollouts"


def test_shuffle_makes_rae_order_dependent_but_keeps_each_advantage_with_its_rollout():
    rewards = torch.tensor([[0.0] * 7 + [1.0]] * 64, dtype=torch.float64)
    est = get_estimator("rae", shuffle_order=True).estimate(rewards)
    assert est.advantages[rewards == 1.0].unique().numel() > 1
    assert torch.allclose(est.advantages * est.scale + est.baseline, rewards)


# --- advantage noise ----------------------------------------------------------------------------


def test_advantage_noise_is_seeded_by_trial_seed_and_step():
    rewards = torch.randint(0, 2, (256, 8), generator=torch.Generator().manual_seed(0)).double()
    rewards[0, 3] = NAN
    clean = get_estimator("grpo")(rewards)
    noisy = get_estimator("grpo", advantage_noise=2.0, seed=7).estimate(rewards, step=3)
    again = get_estimator("grpo", advantage_noise=2.0, seed=7)(rewards, step=3)
    assert torch.equal(noisy.advantages, again), "same seed and step, same noise"
    noise = noisy.advantages - clean
    assert noise[0, 3] == 0, "an unscorable rollout keeps advantage 0"
    assert noisy.extras["noise_std"] == pytest.approx(noise[~rewards.isnan()].std().item())
    assert noisy.extras["noise_std"] == pytest.approx(2.0, rel=0.05)
    assert abs(noise[~rewards.isnan()].mean().item()) < 0.1
    for other in (
        get_estimator("grpo", advantage_noise=2.0, seed=8)(rewards, step=3),
        get_estimator("grpo", advantage_noise=2.0, seed=7)(rewards, step=4),
    ):
        assert not torch.allclose(other, noisy.advantages)
    assert get_estimator("grpo").estimate(rewards).extras["noise_std"] == 0.0


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_every_estimator_takes_advantage_noise(name):
    rewards = torch.randint(0, 2, (16, 4), generator=torch.Generator().manual_seed(1)).double()
    inputs = _inputs(rewards.tolist())
    ids = list(range(16))
    clean = get_estimator(name)(rewards, ids, **inputs, step=2)
    noisy = get_estimator(name, advantage_noise=0.5, seed=3).estimate(rewards, ids, **inputs, step=2)
    assert 0.3 < noisy.extras["noise_std"] < 0.7
    assert not torch.allclose(noisy.advantages, clean)


def test_negative_advantage_noise_is_refused_naming_the_field():
    with pytest.raises(SpecError, match=r"estimator\.grpo\.advantage_noise.*greater than or equal to 0"):
        validate(TrialSpec, tiny_trial(estimator={"name": "grpo", "advantage_noise": -1.0}))


# --- cross-step state survives a checkpoint ---------------------------------------------------


@pytest.mark.parametrize(
    "name,params", [("rae", {}), ("rae", {"per_prompt": True}), ("running_norm", {}), ("ebpo", {})]
)
def test_resumed_estimator_equals_one_that_never_stopped(name, params):
    gen = torch.Generator().manual_seed(5)
    batches = [torch.randint(0, 2, (8, 4), generator=gen).double() for _ in range(4)]
    ids = [[(s * 3 + i) % 10 for i in range(8)] for s in range(4)]
    steady = get_estimator(name, **params)
    want = [steady(b, i) for b, i in zip(batches, ids)]
    first = get_estimator(name, **params)
    for b, i in zip(batches[:2], ids[:2]):
        first(b, i)
    resumed = get_estimator(name, **params)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert resumed.state_dict() == first.state_dict()
    for b, i, w in zip(batches[2:], ids[2:], want[2:]):
        assert torch.equal(resumed(b, i), w)


def test_stateless_estimators_have_no_state_and_stateful_ones_do():
    rewards = _t([[1, 0, 1, 0]])
    for name in CATALOG:
        est = get_estimator(name)
        est.estimate(rewards, ["p"], **_inputs(rewards.tolist()))
        assert bool(est.state_dict()) == (name in (*STATEFUL, "krpo_persistent")), name


# --- the trainer feeds lengths and greedy baselines ---------------------------------------------


def test_trainer_passes_completion_lengths_to_opo(tmp_path):
    from tests.training.test_trainer import G, make_trainer

    trainer, inputs = make_trainer(tmp_path, "opo")
    torch.manual_seed(3)
    out = trainer._generate_and_score_completions(inputs)
    rewards = trainer._aggregate_rewards(trainer._last_rewards_per_func).view(-1, G)
    lengths = out["completion_mask"].sum(dim=1).view(-1, G)
    want = get_estimator("opo")(rewards, lengths=lengths).reshape(-1)
    assert torch.allclose(out["advantages"], want)
    assert lengths.min() >= 1


def test_trainer_generates_scores_and_counts_the_greedy_baseline_of_remax(tmp_path):
    from krpo_bench.tasks import build_task
    from krpo_bench.training.evaluation import generate_completions
    from tests.training.test_trainer import PROMPTS, G, make_trainer

    trainer, inputs = make_trainer(tmp_path, "remax")
    torch.manual_seed(4)
    out = trainer._generate_and_score_completions(inputs)
    rewards = trainer._aggregate_rewards(trainer._last_rewards_per_func).view(-1, G)
    baseline = (rewards - out["advantages"].view(-1, G))[:, 0]
    prompts = [inputs[i * G]["prompt"] for i in range(PROMPTS)]
    greedy = generate_completions(trainer.model, trainer.processing_class, prompts, max_new_tokens=5)
    task = build_task(TrialSpec.model_validate(tiny_trial()).task)
    answers = [inputs[i * G]["answer"] for i in range(PROMPTS)]
    want = task.reward_funcs[0](prompts=prompts, completions=greedy, answer=answers)
    assert torch.allclose(baseline, torch.tensor(want, dtype=baseline.dtype)), "an independent greedy decode"
    assert trainer._metrics["train"]["adv/greedy_reward"] == [pytest.approx(sum(want) / PROMPTS)]
    sampled = (out["prompt_mask"].sum() + out["completion_mask"].sum()).item()
    assert trainer.state.num_input_tokens_seen > sampled, "the greedy tokens are counted"
    assert trainer._metrics["train"]["num_tokens"] == [trainer.state.num_input_tokens_seen]


def test_trainer_adds_seeded_advantage_noise_and_logs_it(tmp_path):
    from tests.training.test_trainer import G, make_trainer

    trainer, inputs = make_trainer(tmp_path, "grpo", advantage_noise=1.0)
    trainer.state.global_step = 5
    torch.manual_seed(5)
    out = trainer._generate_and_score_completions(inputs)
    rewards = trainer._aggregate_rewards(trainer._last_rewards_per_func).view(-1, G)
    want = get_estimator("grpo", advantage_noise=1.0, seed=0)(rewards, step=5).reshape(-1)
    assert torch.allclose(out["advantages"], want)
    assert not torch.allclose(out["advantages"], get_estimator("grpo")(rewards).reshape(-1))
    assert trainer._metrics["train"]["adv/noise_std"][0] > 0.5


# --- the report shows each estimator's advantage scale and baseline -----------------------------


def test_report_diagnostics_show_each_estimators_advantage_scale_and_baseline():
    import pandas as pd
    from krpo_bench.dashboards.report import render_html
    from krpo_bench.dashboards.source import RunData, StudyData

    def run(variant: str, seed: int, scale: float, baseline: float) -> RunData:
        steps = [1, 2, 3]
        return RunData(
            run_id=f"{variant}-{seed}",
            variant=variant,
            seed=seed,
            status="FINISHED",
            params={"estimator.name": variant},
            tags={},
            final={"final/accuracy": 0.5 + 0.01 * seed},
            histories={
                "adv/std": pd.Series([scale] * 3, index=steps),
                "adv/scale_mean": pd.Series([scale / 2] * 3, index=steps),
                "adv/baseline_mean": pd.Series([baseline - 0.1, baseline, baseline + 0.1], index=steps),
            },
        )

    runs = [run("grpo", s, 0.9, 0.5) for s in (0, 1)] + [run("rae", s, 0.42, 0.31) for s in (0, 1)]
    study = StudyData("zoo", "estimator-zoo", ["1"], runs, {"FINISHED": 4})
    page = render_html(study)
    section = page[page.index("advantage scale and baseline (means over steps and seeds)") :]
    assert "<td>rae</td>" in section and "0.42" in section and "0.31" in section and "0.21" in section
