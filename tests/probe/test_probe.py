"""The gradient-quality probe: its gradient is TRL's, its statistics, its spec and its CLI."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from scipy import stats
from transformers import TrainerCallback

from krpo_bench.models import load_model
from krpo_bench.probe.gradients import loss_gradient, loss_gradients, rollout_weights, sequence_logprobs
from krpo_bench.probe.rollouts import RolloutBatch, draw_rollouts
from krpo_bench.probe.spec import ProbeSpec
from krpo_bench.probe.stats import (
    GradientTally,
    ReferenceGradient,
    batch_and_reference_estimate,
    paired_difference,
    with_holm,
)
from krpo_bench.spec.estimator import build_estimator
from krpo_bench.spec.loading import SpecError, validate
from krpo_bench.spec.trial import TrialSpec
from krpo_bench.tasks import build_task
from krpo_bench.training.trainer import BaselineGRPOTrainer
from krpo_bench.training.trial import grpo_config
from tests.trial_specs import TINY_TASK, tiny_trial

G = 4
PROMPTS = 4


class GradientGrab(TrainerCallback):
    """Keeps the accumulated gradient the optimizer is about to apply (after any clipping)."""

    def __init__(self) -> None:
        self.gradient: torch.Tensor | None = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.gradient = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.requires_grad]).clone()


@pytest.mark.parametrize(
    ("loss_type", "accumulation", "estimator"),
    [("grpo", 1, {"name": "krpo"}), ("dr_grpo", 2, {"name": "grpo"}), ("dapo", 2, {"name": "rloo"})],
)
def test_probe_gradient_is_trls_first_step_gradient(tmp_path, loss_type, accumulation, estimator) -> None:
    config = tiny_trial(
        estimator=estimator,
        steps=1,
        group_size=G,
        prompts_per_step=PROMPTS,
        loss_type=loss_type,
        gradient_accumulation_steps=accumulation,
        temperature=0.7,
        max_completion_length=4,
    )
    spec = TrialSpec.model_validate(config)
    task = build_task(spec.task)
    loaded = load_model(spec.model)
    before = copy.deepcopy(loaded.model)
    args = grpo_config(spec, tmp_path, use_cuda=False, bf16=False, reward_weights=list(task.reward_weights))
    args.max_grad_norm = 0.0  # no clipping, so the captured gradient is the loss's own
    trainer = BaselineGRPOTrainer(
        model=loaded.model,
        reward_funcs=task.reward_funcs,
        args=args,
        train_dataset=task.train,
        processing_class=loaded.tokenizer,
        estimator=build_estimator(spec.estimator),
    )
    seen: dict = {}
    generate = trainer._generate_and_score_completions

    def capture(inputs):
        out = generate(inputs)
        seen.update(out=out, rewards=trainer._aggregate_rewards(trainer._last_rewards_per_func).clone())
        seen["keys"] = [x["prompt_id"] for x in inputs][::G]
        return out

    trainer._generate_and_score_completions = capture
    grab = GradientGrab()
    trainer.add_callback(grab)
    torch.manual_seed(11)
    trainer.train()

    out = seen["out"]
    batch = RolloutBatch(
        out["prompt_ids"],
        out["prompt_mask"],
        out["completion_ids"],
        out["completion_mask"],
        seen["rewards"],
        seen["keys"],
        G,
    )
    assert len(batch.rewards) == G * PROMPTS and (seen["rewards"].view(-1, G).std(dim=1) > 0).any()
    advantages = build_estimator(spec.estimator).estimate(batch.rewards.view(-1, G), batch.prompt_keys).advantages
    assert torch.allclose(advantages.reshape(-1), out["advantages"], atol=1e-6)
    rows = torch.arange(G * PROMPTS)
    logprobs = sequence_logprobs(before, batch, rows, temperature=0.7)
    weights = rollout_weights(batch.completion_mask, loss_type, max_completion_length=4)
    theirs = grab.gradient
    assert theirs.norm() > 0
    single = loss_gradient(logprobs, advantages.reshape(-1), weights, before)
    coefficients = -(advantages.reshape(-1).double() * weights)
    batched = list(loss_gradients(before, logprobs, torch.stack([coefficients, 2 * coefficients]), max_floats=1))
    for ours in (single, batched[0], batched[1] / 2):
        assert torch.nn.functional.cosine_similarity(ours, theirs, dim=0) > 1 - 1e-6
        assert (ours.norm() / theirs.norm()).item() == pytest.approx(1.0, rel=1e-4)


def _reference(blocks: torch.Tensor, normalisers: list[float] | None = None) -> ReferenceGradient:
    return ReferenceGradient.from_blocks(blocks, normalisers or [1.0] * len(blocks))


def test_tally_matches_a_plain_numpy_computation() -> None:
    generator = torch.Generator().manual_seed(0)
    reference = torch.randn(50, generator=generator, dtype=torch.float64)
    signal = 0.5 * reference + 0.3 * torch.randn(50, generator=generator, dtype=torch.float64)
    gradients = [signal + torch.randn(50, generator=generator, dtype=torch.float64) for _ in range(40)]
    gradients[3] = torch.zeros(50, dtype=torch.float64)
    blocks = torch.stack(
        [reference / 4 + 0.2 * torch.randn(50, generator=generator, dtype=torch.float64) for _ in range(4)]
    )
    blocks[3] = 4 * reference - blocks[:3].sum(dim=0)  # the blocks sum to 4 x reference: the reference is their mean
    tally = GradientTally(_reference(blocks))
    for g in gradients:
        tally.add(g.float(), torch.tensor([1.0, -2.0]))
    summary = tally.summary()
    G = np.stack([g.float().double().numpy() for g in gradients])
    ref = reference.numpy()
    cosines = [0.0 if not g.any() else g @ ref / np.linalg.norm(g) / np.linalg.norm(ref) for g in G]
    mean = G.mean(axis=0)
    trace = np.trace(np.cov(G, rowvar=False))
    assert summary["cos_mean"] == pytest.approx(np.mean(cosines), rel=1e-5)
    # the batches-only interval: the hand-written t-interval the probe had before stats.mean_ci, to float noise
    half = stats.t.ppf(0.975, len(G) - 1) * np.std(cosines, ddof=1) / np.sqrt(len(G))
    batches = (summary["cos_batch_ci_low"], summary["cos_batch_ci_high"])
    assert batches == pytest.approx((np.mean(cosines) - half, np.mean(cosines) + half), rel=1e-12)
    # the interval over batches and reference: the jackknife over the 4 leave-one-out references, by hand
    left_out = [(4 * ref - b) / 3 for b in blocks.numpy()]
    jack = np.array(
        [np.mean([0.0 if not g.any() else g @ r / np.linalg.norm(g) / np.linalg.norm(r) for g in G]) for r in left_out]
    )
    var_batches, var_reference = np.var(cosines, ddof=1) / len(G), 3 / 4 * np.sum((jack - jack.mean()) ** 2)
    df = min((var_batches + var_reference) ** 2 / (var_batches**2 / (len(G) - 1) + var_reference**2 / 3), len(G) - 1)
    low, high = stats.t.interval(0.95, df, loc=np.mean(cosines), scale=np.sqrt(var_batches + var_reference))
    assert (summary["cos_ci_low"], summary["cos_ci_high"]) == pytest.approx((low, high), rel=1e-9)
    assert summary["cos_se_reference"] == pytest.approx(np.sqrt(var_reference), rel=1e-9) and var_reference > 0
    assert summary["cos_ci_low"] < summary["cos_batch_ci_low"] and summary["cos_ci_high"] > summary["cos_batch_ci_high"]
    assert summary["cos_of_mean"] == pytest.approx(mean @ ref / np.linalg.norm(mean) / np.linalg.norm(ref), rel=1e-5)
    assert summary["var_trace"] == pytest.approx(trace, rel=1e-5)
    signal = mean @ mean - trace / len(G)
    assert summary["cos_expected"] == pytest.approx(mean @ ref / np.sqrt(signal) / np.linalg.norm(ref), rel=1e-4)
    assert summary["snr"] == pytest.approx((mean @ mean - trace / len(G)) / trace, rel=1e-4)
    assert summary["adv_rms"] == pytest.approx(np.sqrt(2.5))
    assert summary["zero_grad_frac"] == pytest.approx(1 / 40)


def test_leave_one_out_references_weigh_blocks_by_their_normalisers() -> None:
    sums = torch.tensor([[1.0, 0.0], [0.0, 3.0], [2.0, 2.0]], dtype=torch.float64)
    reference = _reference(sums, [1.0, 2.0, 3.0])
    assert torch.allclose(reference.gradient, torch.tensor([3.0, 5.0], dtype=torch.float64) / 6)
    assert torch.allclose(reference.left_out[1], torch.tensor([3.0, 2.0], dtype=torch.float64) / 4)
    with pytest.raises(ValueError, match="at least two blocks"):
        _reference(sums[:1])


def test_with_a_noiseless_reference_the_interval_is_stats_mean_ci() -> None:
    """Blocks that all point the same way add no variance: the interval is the batches' t-interval."""
    from krpo_bench.stats import mean_ci

    per_batch = [0.3, 0.5, 0.2, 0.6, 0.4]
    same = np.tile(np.asarray(per_batch)[:, None], (1, 4))
    estimate = batch_and_reference_estimate(per_batch, same)
    assert (estimate.se_reference, estimate.df) == (0.0, 4.0)
    interval = mean_ci(per_batch)
    assert (estimate.interval.low, estimate.interval.high) == pytest.approx((interval.low, interval.high), rel=1e-12)
    assert estimate.p_value == pytest.approx(stats.ttest_1samp(per_batch, 0.0).pvalue, rel=1e-12)
    flat = batch_and_reference_estimate([0.0, 0.0, 0.0], np.zeros((3, 4)))
    assert (flat.interval.low, flat.interval.high, flat.p_value) == (0.0, 0.0, 1.0)


def test_paired_difference_is_a_t_interval_over_batches_when_the_reference_is_exact() -> None:
    a, b = [0.3, 0.5, 0.2, 0.6, 0.4], [0.1, 0.45, 0.25, 0.3, 0.2]
    tallies = []
    for values in (a, b):
        tally = GradientTally(_reference(torch.eye(2, dtype=torch.float64)))
        tally.cosines, tally.left_out_cosines = list(values), [np.full(2, v) for v in values]
        tallies.append(tally)
    diff = np.subtract(a, b)
    low, high = stats.t.interval(0.95, 4, loc=diff.mean(), scale=stats.sem(diff))
    paired = paired_difference(*tallies)
    assert (paired["cos_diff"], paired["cos_diff_ci_low"], paired["cos_diff_ci_high"]) == pytest.approx(
        (diff.mean(), low, high)
    )
    assert (paired["cos_diff_batch_ci_low"], paired["cos_diff_batch_ci_high"]) == pytest.approx((low, high))
    assert paired["cos_diff_p"] == pytest.approx(stats.ttest_rel(a, b).pvalue)


def test_holm_adjusts_the_delta_cos_p_values_over_the_table() -> None:
    from statsmodels.stats.multitest import multipletests

    rows = [{"cos_diff_p": p} for p in (math.nan, 0.01, 0.04, 0.03, math.nan, 0.2)]
    adjusted = [row["cos_diff_p_holm"] for row in with_holm(rows)]
    expected = multipletests([0.01, 0.04, 0.03, 0.2], method="holm")[1]
    assert math.isnan(adjusted[0]) and math.isnan(adjusted[4])
    assert [adjusted[i] for i in (1, 2, 3, 5)] == pytest.approx(expected)
    assert adjusted[1] == pytest.approx(0.04) and adjusted[2] == pytest.approx(0.09)


def _coverage(blocks: int, replications: int, seed: int) -> dict[str, float]:
    """Share of replications whose intervals hold the true expected cosine and Δcos, in a synthetic
    probe: one-batch gradients g = mu + noise, a second estimator h = g + a bias orthogonal to mu
    (on the same batches), a reference of 16 noisy unit samples of mu in ``blocks`` blocks."""
    rng = np.random.default_rng(seed)
    d, m, samples, bias = 10, 16, 16, 0.5
    mu, offset = np.eye(d)[0], bias * np.eye(d)[1]

    def cosines(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return (x * y).sum(-1) / np.linalg.norm(x, axis=-1) / np.linalg.norm(y, axis=-1)

    # the truth over both sources of noise, from 400,000 independent (batch, reference) draws
    n = 400_000
    references = mu + 0.7 * rng.normal(size=(n, d)) / np.sqrt(samples)
    g = mu + 1.5 * rng.normal(size=(n, d))
    h = g + offset + 0.1 * rng.normal(size=(n, d))
    truth, truth_diff = cosines(g, references).mean(), (cosines(h, references) - cosines(g, references)).mean()
    held = {"cos": 0, "cos_batches": 0, "diff": 0, "diff_batches": 0}
    per_block = samples // blocks
    for _ in range(replications):
        sums = per_block * mu + 0.7 * np.sqrt(per_block) * rng.normal(size=(blocks, d))
        reference = _reference(torch.tensor(sums), [float(per_block)] * blocks)
        one, two = GradientTally(reference), GradientTally(reference)
        for _ in range(m):
            batch = mu + 1.5 * rng.normal(size=d)
            one.add(torch.tensor(batch), torch.ones(1))
            two.add(torch.tensor(batch + offset + 0.1 * rng.normal(size=d)), torch.ones(1))
        summary, paired = one.summary(), paired_difference(two, one)
        held["cos"] += summary["cos_ci_low"] <= truth <= summary["cos_ci_high"]
        held["cos_batches"] += summary["cos_batch_ci_low"] <= truth <= summary["cos_batch_ci_high"]
        held["diff"] += paired["cos_diff_ci_low"] <= truth_diff <= paired["cos_diff_ci_high"]
        held["diff_batches"] += paired["cos_diff_batch_ci_low"] <= truth_diff <= paired["cos_diff_batch_ci_high"]
    return {key: count / replications for key, count in held.items()}


def test_the_interval_covers_the_truth_when_the_reference_is_noisy() -> None:
    """Calibration: with a reference as noisy as the probe's (split-half cosine about 0.6), the
    intervals over batches and reference hold the true expected cosine and Δcos about 95 % of the
    time (2,000 replications, seed 1: 96.7 % and 94.6 % with 8 blocks, 96.7 % and 93.7 % with 4, but
    Δcos 87 % with 2), where the batches-only Δcos interval, the reference held fixed, holds it 55 %
    of the time."""
    coverage = _coverage(blocks=8, replications=400, seed=0)
    assert coverage["cos"] >= 0.925 and coverage["diff"] >= 0.915, coverage
    assert coverage["diff_batches"] < 0.7, coverage


def test_rollouts_are_masked_after_eos_and_scored_by_the_task() -> None:
    spec = TrialSpec.model_validate(tiny_trial())
    task = build_task(spec.task)
    loaded = load_model(spec.model)
    torch.manual_seed(0)
    batch = draw_rollouts(loaded.model, loaded.tokenizer, task, [0, 1, 2], 4, temperature=1.0, max_completion_length=5)
    assert batch.completion_ids.shape[0] == 12 and batch.prompt_keys == task.train.select([0, 1, 2])["prompt_id"]
    eos = loaded.tokenizer.eos_token_id
    for ids, mask in zip(batch.completion_ids.tolist(), batch.completion_mask.tolist()):
        kept = [t for t, m in zip(ids, mask) if m]
        assert eos not in kept[:-1] and mask == sorted(mask, reverse=True)
    texts = loaded.tokenizer.batch_decode(batch.completion_ids, skip_special_tokens=True)
    answers = [a for a in task.train.select([0, 1, 2])["answer"] for _ in range(4)]
    assert batch.rewards.tolist() == [float(task.is_correct(t, a)) for t, a in zip(texts, answers)]
    assert batch.rows(2).tolist() == [0, 1, 4, 5, 8, 9]


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"estimators": [{"name": "grpo"}, {"name": "krpo_fancy"}]}, "estimators[1]"),
        ({"estimators": [{"name": "krpo", "Q": -1.0}]}, "estimators[0].krpo.Q"),
        ({"estimators": [{"name": "grpo"}, {"name": "grpo"}]}, "estimators"),
        ({"estimators": []}, "estimators"),
        ({"group_sizes": [1, 4]}, "group_sizes[0]"),
        ({"group_sizes": [4, 4]}, "group_sizes"),
        ({"batches": 1}, "batches"),
        ({"loss_type": "sapo"}, "loss_type"),
        ({"reference": {"prompts": 1}}, "reference.prompts"),
        ({"batchez": 4}, "batchez"),
        ({"model": {"name": "tiny-arith", "tiny": {"warm_starts": 2}}}, "model"),
    ],
)
def test_bad_probe_specs_name_the_field(change: dict, path: str) -> None:
    data = {**PROBE, **change}
    with pytest.raises(SpecError) as caught:
        validate(ProbeSpec, data)
    assert path in {e["path"] for e in caught.value.errors}, caught.value.errors


PROBE = {
    "kind": "probe",
    "name": "test-probe",
    "model": {"name": "tiny-arith"},
    "task": {**TINY_TASK, "train_size": 64, "test_size": 8},
    "estimators": [{"name": "grpo"}, {"name": "dr_grpo"}, {"name": "rloo"}, {"name": "krpo"}],
    "group_sizes": [2, 4],
    "batches": 3,
    "prompts_per_batch": 4,
    "reference": {"prompts": 8, "group_size": 4, "chunk_prompts": 4},
    "max_completion_length": 4,
}


@pytest.mark.parametrize("command", ["probe"])  # `krpo-bench run`: tests/probe/test_probe_studies.py (workers)
def test_probe_command_prints_the_table_tracks_and_reports(tmp_path, command) -> None:
    import yaml
    from mlflow import MlflowClient
    from typer.testing import CliRunner

    from krpo_bench.cli import app

    path = tmp_path / "probe.yaml"
    path.write_text(yaml.safe_dump(PROBE))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = tmp_path / "report"
    result = CliRunner().invoke(app, [command, str(path), "--mlflow", uri, "--out", str(out)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "gradient quality against the reference" in result.output and "SNR" in result.output
    assert "krpo" in result.output and "wall time" in result.output
    data = json.loads((out / "probe.json").read_text())
    assert {(r["estimator"], r["group_size"]) for r in data["rows"]} == {
        (e["name"], g) for e in PROBE["estimators"] for g in (2, 4)
    }
    assert (out / "probe.png").read_bytes()[:4] == b"\x89PNG" and "<table>" in (out / "index.html").read_text()
    rows = {(r["estimator"], r["group_size"]): r for r in data["rows"]}
    # With 0/1 rewards and G = 2, grpo, dr_grpo and rloo advantages are proportional with one constant:
    # on common rollouts their gradients point the same way.
    assert rows[("grpo", 2)]["cos_mean"] == pytest.approx(rows[("rloo", 2)]["cos_mean"], abs=1e-5)
    assert rows[("dr_grpo", 2)]["cos_mean"] == pytest.approx(rows[("rloo", 2)]["cos_mean"], abs=1e-5)
    assert all(-1 <= r["cos_mean"] <= 1 and r["var_trace"] >= 0 for r in data["rows"])
    assert rows[("krpo", 2)]["versus"] == "grpo" and rows[("grpo", 4)]["cos_diff"] == 0.0
    assert rows[("krpo", 4)]["cos_diff"] == pytest.approx(rows[("krpo", 4)]["cos_mean"] - rows[("grpo", 4)]["cos_mean"])
    # intervals over batches and reference hold the batches-only ones; Holm over the 6 rows compared with grpo
    for row in data["rows"]:
        assert row["cos_ci_low"] <= row["cos_batch_ci_low"] and row["cos_batch_ci_high"] <= row["cos_ci_high"]
    compared = [r for r in data["rows"] if r["estimator"] != "grpo"]
    assert all(
        math.isnan(r["cos_diff_p"]) and math.isnan(r["cos_diff_p_holm"])
        for r in data["rows"]
        if r["estimator"] == "grpo"
    )
    assert all(r["cos_diff_p"] <= r["cos_diff_p_holm"] <= 1 for r in compared)
    assert min(r["cos_diff_p_holm"] for r in compared) == pytest.approx(
        min(6 * min(r["cos_diff_p"] for r in compared), 1)
    )
    assert data["reference_blocks"] == 8 and "p Holm" in result.output
    page = (out / "index.html").read_text()
    assert "8 leave-one-block-out references" in page and "Holm over the 6" in page
    run = MlflowClient(uri).get_run(data["mlflow_run_id"])
    assert run.data.tags["krpo.kind"] == "probe" and run.data.tags["krpo.probe_id"] == data["probe_id"]
    assert run.info.status == "FINISHED"
    history = MlflowClient(uri).get_metric_history(run.info.run_id, "probe/krpo/cos_mean")
    assert sorted(m.step for m in history) == [2, 4]


def test_probe_loads_checkpoint_weights_and_reads_noisy_rewards(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("KRPO_BENCH_DATA_ROOTS", str(tmp_path))  # checkpoints load only under the data roots
    from krpo_bench.probe.run import _load, measure

    spec = validate(ProbeSpec, {**PROBE, "estimators": [{"name": "rloo"}], "group_sizes": [4], "batches": 2})
    model, tokenizer = _load(spec, "cpu")
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    model.save_pretrained(tmp_path / "checkpoint-7")
    tokenizer.save_pretrained(tmp_path / "checkpoint-7")
    loaded, _ = _load(spec.model_copy(update={"checkpoint": str(tmp_path / "checkpoint-7")}), "cpu")
    assert torch.equal(next(loaded.parameters()), next(model.parameters()))
    with pytest.raises(ValueError, match="not a checkpoint folder"):
        _load(spec.model_copy(update={"checkpoint": str(tmp_path)}), "cpu")
    # Every training reward flipped: the estimator climbs the wrong way, against the clean reference.
    task = {**PROBE["task"], "reward_noise": {"flip": 1.0}}
    # (opo's length-weighted baseline is linear in the rewards too: its advantages flip sign exactly.)
    estimators = [{"name": "rloo"}, {"name": "opo"}]
    flipped = validate(ProbeSpec, {**PROBE, "task": task, "estimators": estimators, "group_sizes": [4], "batches": 4})
    clean = flipped.model_copy(update={"task": flipped.task.model_copy(update={"reward_noise": None})})
    torch.manual_seed(0)
    rows = measure(flipped, model, tokenizer).rows
    torch.manual_seed(0)
    clean_rows = measure(clean, model, tokenizer).rows
    for noisy, exact in zip(rows, clean_rows):
        assert noisy["cos_of_mean"] == pytest.approx(-exact["cos_of_mean"], abs=1e-5)
        assert noisy["cos_mean"] == pytest.approx(-exact["cos_mean"], abs=1e-5)


def test_validating_a_probe_counts_its_table(tmp_path) -> None:
    import yaml
    from typer.testing import CliRunner

    from krpo_bench.cli import app

    path = tmp_path / "probe.yaml"
    path.write_text(yaml.safe_dump(PROBE))
    checked = CliRunner().invoke(app, ["validate", str(path)])
    assert checked.exit_code == 0 and "probe 'test-probe': 4 estimators x 2 group sizes x 3 batches" in checked.output


def test_a_probe_of_an_estimator_that_needs_a_greedy_completion_is_refused_when_validated() -> None:
    from krpo_bench.spec.loading import SpecError

    with pytest.raises(SpecError) as err:
        validate(ProbeSpec, {**PROBE, "estimators": [{"name": "grpo"}, {"name": "remax"}]})
    assert any(e["path"] == "estimators" and "remax need a greedy completion" in e["message"] for e in err.value.errors)


def test_the_reference_gradient_comes_from_rollouts_of_its_own(monkeypatch) -> None:
    """The reference is drawn independently of the estimators' batches: probes that differ only in
    their batches (how many, how many prompts, which group sizes) get the same reference gradient,
    split-half cosine and reward, to the last bit."""
    from krpo_bench.probe import run

    references = []

    class Spy(GradientTally):
        def __init__(self, reference: ReferenceGradient) -> None:
            references.append(reference)
            super().__init__(reference)

    monkeypatch.setattr(run, "GradientTally", Spy)
    one = {**PROBE, "estimators": [{"name": "rloo"}]}
    few = validate(ProbeSpec, {**one, "group_sizes": [2], "batches": 2, "prompts_per_batch": 2})
    many = validate(ProbeSpec, {**one, "group_sizes": [2, 4], "batches": 3, "prompts_per_batch": 3})
    model, tokenizer = run._load(few, "cpu")
    seen = []
    for spec in (few, many):
        references.clear()
        torch.manual_seed(0)
        measured = run.measure(spec, model, tokenizer)
        seen.append((references[0], measured.reference_split_cosine, measured.reference_reward_mean))
    (reference, split, reward), (again, split_again, reward_again) = seen
    assert torch.equal(reference.gradient, again.gradient) and torch.equal(reference.left_out, again.left_out)
    assert (split, reward) == (split_again, reward_again) and reference.blocks == 8
