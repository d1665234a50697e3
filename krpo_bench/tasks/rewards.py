"""Reward functions (pure, one per reward name), their TRL adapters, correctness and weighted combination."""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

from krpo_bench.tasks.prompts import (
    ANSWER_TAG,
    Completion,
    answer_tag_contents,
    completion_text,
    extract_answer,
    resolve_extraction,
)

RewardFunc = Callable[..., list[float | None]]

FORMAT = re.compile(
    r"\s*<think>(?:(?!</?think>|</?answer>).)*</think>\s*<answer>(?:(?!</?think>|</?answer>).)*</answer>\s*",
    re.DOTALL,
)
THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
MATH_VERIFY_TIMEOUT_S = 5


def _normalise(text: str) -> str:
    return " ".join(text.split())


def _as_number(text: str) -> Decimal | None:
    if THOUSANDS.fullmatch(text):
        text = text.replace(",", "")
    try:
        number = Decimal(text)
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def answers_match(predicted: str | None, gold: str) -> bool:
    """Equal after whitespace normalisation, or both numbers of the same value ("52.0" == "52")."""
    if predicted is None:
        return False
    predicted, gold = _normalise(predicted), _normalise(gold)
    if predicted == gold:
        return True
    predicted_number, gold_number = _as_number(predicted), _as_number(gold)
    return predicted_number is not None and predicted_number == gold_number


def _timeout() -> int | None:
    # math-verify times out with SIGALRM, which only the main thread may install.
    return MATH_VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def _parse(text: str, latex_first: bool) -> list[Any]:
    """math-verify's reading of ``text`` as LaTeX math (``$text$``) and as it stands, in the given
    order of preference; [] when neither is math."""
    import math_verify  # with sympy, a second to import: only where answers are graded

    readings = (f"${text}$", text) if latex_first else (text, f"${text}$")
    timeout = _timeout()
    for reading in readings:
        parsed = math_verify.parse(reading, fallback_mode="no_fallback", parsing_timeout=timeout)
        if parsed:
            return parsed
    return []


@lru_cache(maxsize=4096)
def _parse_gold(gold: str) -> tuple[Any, ...]:
    # Gold answers are bare math ("1+x", "(1, 2)"), best read as LaTeX.
    return tuple(_parse(gold, latex_first=True))


def math_equivalent(predicted: str | None, gold: str) -> bool | None:
    """math-verify equivalence of ``predicted`` to ``gold``; None when ``gold`` cannot be parsed."""
    parsed_gold = _parse_gold(gold)
    if not parsed_gold:
        return None
    if predicted is None:
        return False
    # Model text ("52 dollars", "x = 52") is best read by math-verify's own extraction first.
    import math_verify

    parsed = _parse(predicted, latex_first=False)
    return bool(parsed) and math_verify.verify(list(parsed_gold), parsed, timeout_seconds=_timeout())


def _paper_grade(content: str, gold: str) -> float:
    if content == gold:
        return 1.0
    return 0.5 if gold in content else 0.01


def paper_reward(completion: Completion, answer: str) -> float:
    """The released KRPO script's reward, exactly: only the first ``<answer>(.*?)</answer>`` match
    counts and nothing is stripped; content equal to the answer 1.0, containing it 0.5, any other
    content (even empty) 0.01, no complete tag pair 0."""
    match = ANSWER_TAG.search(completion_text(completion))
    return 0.0 if match is None else _paper_grade(match.group(1), answer)


def paper_lenient_reward(completion: Completion, answer: str) -> float:
    """The paper's grading made lenient: the last ``<answer>`` content and the answer, both stripped;
    equal 1.0, containing it 0.5, other 0.01, no tag 0."""
    tags = answer_tag_contents(completion_text(completion))
    return _paper_grade(tags[-1].strip(), answer.strip()) if tags else 0.0


def exact_reward(completion: Completion, answer: str, style: str, extraction: str = "auto") -> float:
    """1.0 when the extracted answer matches the gold answer exactly or numerically, else 0.0."""
    return 1.0 if answers_match(extract_answer(completion, style, extraction), answer) else 0.0


def math_verify_reward(completion: Completion, answer: str, style: str, extraction: str = "auto") -> float | None:
    """1.0 when math-verify finds the extracted answer equivalent to the gold, 0.0 if not, None if the
    gold answer cannot be parsed."""
    equivalent = math_equivalent(extract_answer(completion, style, extraction), answer)
    return None if equivalent is None else float(equivalent)


def format_reward(completion: Completion) -> float:
    """1.0 for exactly ``<think>...</think><answer>...</answer>`` (whitespace around allowed), else 0.0."""
    return 1.0 if FORMAT.fullmatch(completion_text(completion)) else 0.0


def is_correct(
    completion: Completion, answer: str, style: str, math_verify_fallback: bool = False, extraction: str = "auto"
) -> bool:
    """Held-out correctness: exact-or-numeric match, then (optionally) math-verify equivalence."""
    predicted = extract_answer(completion, style, extraction)
    if answers_match(predicted, answer):
        return True
    return math_verify_fallback and bool(math_equivalent(predicted, answer))


# Each scorer takes (completion, answer, style, extraction); paper, paper_lenient and format read
# the tags themselves and ignore the extraction.
SCORERS: dict[str, Callable[[Completion, str, str, str], float | None]] = {
    "paper": lambda completion, answer, style, extraction: paper_reward(completion, answer),
    "paper_lenient": lambda completion, answer, style, extraction: paper_lenient_reward(completion, answer),
    "exact": exact_reward,
    "math_verify": math_verify_reward,
    "format": lambda completion, answer, style, extraction: format_reward(completion),
}


def reward_function(name: str, style: str, extraction: str = "auto") -> RewardFunc:
    """A TRL GRPOTrainer reward function ``f(prompts, completions, answer, **kwargs)`` named ``name``;
    ``extraction`` (see :func:`extract_answer`) reads the answer for exact and math_verify."""
    if name not in SCORERS:
        raise ValueError(f"unknown reward {name!r}; allowed: {', '.join(SCORERS)}")
    score = SCORERS[name]
    resolve_extraction(style, extraction)

    def reward(
        prompts: list[Any], completions: list[Completion], answer: list[str], **kwargs: Any
    ) -> list[float | None]:
        return [score(c, str(a), style, extraction) for c, a in zip(completions, answer, strict=True)]

    reward.__name__ = reward.__qualname__ = name
    return reward


def combine_rewards(per_func: Sequence[Sequence[float | None]], weights: Sequence[float]) -> list[float]:
    """Weighted sum over functions per completion, skipping None; NaN where every function gave None."""
    if len(per_func) != len(weights):
        raise ValueError(f"{len(per_func)} reward lists but {len(weights)} weights")
    totals = []
    for scores in zip(*per_func, strict=True):
        present = [(w, s) for w, s in zip(weights, scores) if s is not None]
        totals.append(math.fsum(w * s for w, s in present) if present else math.nan)
    return totals
