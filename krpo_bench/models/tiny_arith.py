"""The tiny-arith testbed: a character-level Qwen2 warm-started on "a+b=" sums, built once and cached.

The warm-up is a supervised pass of a fixed number of steps (not a time budget) in a fixed data order,
on the pairs whose question is *not* in the held-out split, so the result depends only on the options
and the task's test questions stay unseen. The held-out greedy accuracy is measured and stored with
the model (``warmup.json``).

The demonstrations are imperfect on purpose: a sum that needs a carry is shown with its carries
dropped (``47+55=92``, digit-wise sums mod 10) in a fraction ``carry_drop_rate`` of its occurrences.
The model learns that habit, so it is a stable starting point whose greedy answer is wrong on most
carrying sums while its samples are sometimes right: exact-match RL has a signal and a systematic
error to unlearn, as when RL corrects what imperfect supervised data taught a language model. An
undertrained model on clean data is no substitute: it sits mid-way through a sharp learning
transition, and any fresh optimizer (RL's or even more supervised steps) first knocks it down.

The default build ships with the package (``artefacts/<cache key>.safetensors``, its warm-up report
beside it): a fresh data home installs it in about a second instead of running the warm-up. It is
used only after its SHA-256 and build version check out; other options are built. The builder
makes the same bytes twice on one host, not across CPUs (an AVX512 host rounds differently): a slow
test holds a rebuild to the shipped held-out accuracy within two binomial standard errors.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import torch
from transformers import GenerationConfig, PreTrainedTokenizerBase, Qwen2Config, Qwen2ForCausalLM

from krpo_bench.models.char_tokenizer import build_char_tokenizer
from krpo_bench.models.config import TinyArithOptions
from krpo_bench.models.hf import cached_model_folder
from krpo_bench.tasks.split import in_test_split

log = logging.getLogger(__name__)

MAX_OPERAND = 99
MAX_NEW_TOKENS = 5
BUILD_VERSION = 2  # bump when the recipe below changes, so old caches are not reused
WARMUP_FILE = "warmup.json"

BATCH_SIZE = 64
LEARNING_RATE = 3e-4
WEIGHT_DECAY = 0.01
LR_WARMUP_STEPS = 20
EVAL_BATCH_SIZE = 512

ARTEFACTS = Path(__file__).parent / "artefacts"
WEIGHTS_FILE = "model.safetensors"
# Builds shipped in the package: cache key -> SHA-256 of the builder's model.safetensors.
SHIPPED_BUILDS = {"tiny-arith-4b89e355976c59e0": "2168dc3e3e7ea6b599a5a83645c247ad6f02165bce4790e5469bb528ac8fd9ec"}


def arith_prompt(a: int, b: int) -> str:
    """The question text of one pair, e.g. ``"47+5="``."""
    return f"{a}+{b}="


def arith_answer(a: int, b: int) -> str:
    """The expected completion of one pair (without the end-of-sequence token), e.g. ``"52"``."""
    return str(a + b)


def dropped_carry_answer(a: int, b: int) -> str:
    """The sum with every carry dropped (digit-wise sums mod 10), e.g. ``"92"`` for ``47+55``."""
    digits = max(len(str(a)), len(str(b)))
    ones = [(a // 10**i % 10 + b // 10**i % 10) % 10 for i in range(digits)]
    return str(int("".join(str(d) for d in reversed(ones))))


def has_carry(a: int, b: int) -> bool:
    """Whether adding ``a`` and ``b`` column by column carries at least once."""
    return dropped_carry_answer(a, b) != arith_answer(a, b)


def arith_pairs(heldout: bool) -> list[tuple[int, int]]:
    """All ``(a, b)`` pairs with operands in 0..99 on one side of the train/test split."""
    return [
        (a, b)
        for a in range(MAX_OPERAND + 1)
        for b in range(MAX_OPERAND + 1)
        if in_test_split(arith_prompt(a, b)) == heldout
    ]


def _training_batch(
    tokenizer: PreTrainedTokenizerBase, pairs: list[tuple[int, int]], dropped: list[bool]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``prompt + answer + <eos>`` ids, attention mask and completion-only labels; the
    answer of pair i has its carries dropped where ``dropped[i]``."""
    prompts = tokenizer([arith_prompt(a, b) for a, b in pairs], add_special_tokens=False)["input_ids"]
    texts = [dropped_carry_answer(a, b) if drop else arith_answer(a, b) for (a, b), drop in zip(pairs, dropped)]
    answers = tokenizer(texts, add_special_tokens=False)["input_ids"]
    length = max(len(p) + len(c) + 1 for p, c in zip(prompts, answers))
    ids = torch.full((len(pairs), length), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(pairs), length), -100, dtype=torch.long)
    mask = torch.zeros((len(pairs), length), dtype=torch.long)
    for row, (prompt, answer) in enumerate(zip(prompts, answers)):
        completion = answer + [tokenizer.eos_token_id]
        sequence = prompt + completion
        ids[row, : len(sequence)] = torch.tensor(sequence)
        labels[row, len(prompt) : len(sequence)] = torch.tensor(completion)
        mask[row, : len(sequence)] = 1
    return ids, mask, labels


def _new_model(options: TinyArithOptions, tokenizer: PreTrainedTokenizerBase) -> Qwen2ForCausalLM:
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=options.hidden_size,
        intermediate_size=3 * options.hidden_size,
        num_hidden_layers=options.num_layers,
        num_attention_heads=options.num_heads,
        num_key_value_heads=options.num_heads,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_new_tokens=MAX_NEW_TOKENS,
        do_sample=False,
    )
    return model


def _warm_up(model: Qwen2ForCausalLM, tokenizer: PreTrainedTokenizerBase, options: TinyArithOptions) -> None:
    """Supervised steps on the training pairs, in an order and with dropped carries fixed by the seed.

    AdamW with a short linear ramp-up and a linear decay to zero at the last step: the decay settles
    the weights, so the accuracy reached is a smooth function of the step count.
    """
    pairs = arith_pairs(heldout=False)
    generator = torch.Generator().manual_seed(options.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    total = options.warmup_steps
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / LR_WARMUP_STEPS) * max(0.0, 1 - step / total)
    )
    order: list[int] = []
    model.train()
    for _ in range(options.warmup_steps):
        if len(order) < BATCH_SIZE:
            order += torch.randperm(len(pairs), generator=generator).tolist()
        batch, order = order[:BATCH_SIZE], order[BATCH_SIZE:]
        drops = (torch.rand(len(batch), generator=generator) < options.carry_drop_rate).tolist()
        ids, mask, labels = _training_batch(tokenizer, [pairs[i] for i in batch], drops)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()


@torch.no_grad()
def greedy_accuracy(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    pairs: list[tuple[int, int]],
) -> float:
    """Fraction of pairs whose greedy completion (up to ``<eos>``) is exactly the sum."""
    correct = 0
    device = next(model.parameters()).device
    for start in range(0, len(pairs), EVAL_BATCH_SIZE):
        chunk = pairs[start : start + EVAL_BATCH_SIZE]
        inputs = tokenizer([arith_prompt(a, b) for a, b in chunk], return_tensors="pt", padding=True).to(device)
        output = model.generate(
            **inputs,
            do_sample=False,
            max_new_tokens=MAX_NEW_TOKENS,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        texts = tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :])
        for (a, b), text in zip(chunk, texts):
            correct += text.split(tokenizer.eos_token)[0] == arith_answer(a, b)
    return correct / len(pairs)


def tiny_arith_cache_key(options: TinyArithOptions) -> str:
    """Folder name of the cached build of these options (a hash of the options and recipe)."""
    payload = json.dumps({"version": BUILD_VERSION, **options.recipe()}, sort_keys=True)
    return f"tiny-arith-{hashlib.sha256(payload.encode()).hexdigest()[:16]}"


def _build_into(folder: Path, options: TinyArithOptions) -> None:
    """Build, evaluate and save into ``folder``.

    Runs on one CPU thread with a private RNG: the same options give the same weights whatever the
    core count, and the caller's random state is left untouched.
    """
    started = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(options.seed)
            tokenizer = build_char_tokenizer()
            model = _new_model(options, tokenizer)
            _warm_up(model, tokenizer, options)
            accuracy = greedy_accuracy(model, tokenizer, arith_pairs(heldout=True))
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    report = {
        "heldout_greedy_accuracy": accuracy,
        "heldout_pairs": len(arith_pairs(heldout=True)),
        "build_seconds": round(time.perf_counter() - started, 2),
        "options": options.recipe(),
        "build_version": BUILD_VERSION,
    }
    (folder / WARMUP_FILE).write_text(json.dumps(report, indent=2))


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, in hex."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def shipped_artefact(options: TinyArithOptions) -> tuple[Path, Path] | None:
    """The weights and warm-up report shipped for these options, if their checks pass: the weights'
    SHA-256 is the pinned one and the report's build version and options are this builder's."""
    key = tiny_arith_cache_key(options)
    weights, report_file = ARTEFACTS / f"{key}.safetensors", ARTEFACTS / f"{key}.json"
    if key not in SHIPPED_BUILDS or not weights.exists() or not report_file.exists():
        return None
    report = json.loads(report_file.read_text())
    if file_sha256(weights) != SHIPPED_BUILDS[key]:
        log.warning("shipped tiny-arith weights %s fail their SHA-256 check; building instead", weights)
        return None
    if report.get("build_version") != BUILD_VERSION or report.get("options") != options.recipe():
        log.warning("shipped tiny-arith report %s is for another build; building instead", report_file)
        return None
    return weights, report_file


def _install_into(folder: Path, options: TinyArithOptions, weights: Path, report_file: Path) -> None:
    """Save the shipped weights into ``folder`` as the builder would (the same files, byte for byte,
    but the report), after checking that they score the report's held-out accuracy and that the
    saved weights have the pinned SHA-256."""
    from safetensors.torch import load_model

    report = json.loads(report_file.read_text())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the builder evaluates: the same greedy answers to the last tie
    try:
        with torch.random.fork_rng(devices=[]):
            tokenizer = build_char_tokenizer()
            model = _new_model(options, tokenizer)
        load_model(model, weights)
        model.eval()
        accuracy = greedy_accuracy(model, tokenizer, arith_pairs(heldout=True))
    finally:
        torch.set_num_threads(threads)
    if accuracy != report["heldout_greedy_accuracy"]:
        raise RuntimeError(
            f"{weights} scores {accuracy} on the held-out pairs, not the {report['heldout_greedy_accuracy']} of its build"
        )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    expected = SHIPPED_BUILDS[tiny_arith_cache_key(options)]
    if file_sha256(folder / WEIGHTS_FILE) != expected:
        raise RuntimeError(f"installing {weights} gave weights that differ from the build (SHA-256 {expected})")
    report["installed_from"] = weights.name
    (folder / WARMUP_FILE).write_text(json.dumps(report, indent=2))


def build_tiny_arith(options: TinyArithOptions | None = None, *, use_shipped: bool = True) -> Path:
    """Build (or reuse from the cache) the tiny-arith model and tokenizer; returns their folder.

    Built once per distinct :meth:`~TinyArithOptions.recipe` under ``cache/models/tiny-arith-<hash>``,
    published atomically; the default options install the build shipped with the package (unless
    ``use_shipped`` is off). ``options.warm_starts`` plays no part: the build is the one of
    ``options.seed`` (a trial's own is :meth:`~TinyArithOptions.warm_start`).
    """
    options = options or TinyArithOptions()
    shipped = shipped_artefact(options) if use_shipped else None
    if shipped:
        return cached_model_folder(
            tiny_arith_cache_key(options), lambda folder: _install_into(folder, options, *shipped)
        )
    return cached_model_folder(tiny_arith_cache_key(options), lambda folder: _build_into(folder, options))


def tiny_arith_report(folder: Path) -> dict:
    """The warm-up report stored with a build (held-out accuracy, build time, options)."""
    return json.loads((Path(folder) / WARMUP_FILE).read_text())
