"""Prompt rendering (plain text, R1-Zero chat, or the model's own chat) and answer extraction."""

from __future__ import annotations

import re
from typing import Any

# The released KRPO script's system prompt, character for character: three lines, the last one
# ending with a line break after "</answer>" (no full stop).
R1_ZERO_SYSTEM_PROMPT = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it.\n"
    "The assistant first thinks about the reasoning process in the mind and then provides the user with "
    "the answer. The reasoning process and answer are enclosed within <think> </think> and "
    "<answer> </answer> tags, respectively, i.e., <think> reasoning process here </think>\n"
    "<answer> answer here </answer>\n"
)

PROMPT_STYLES = ("plain", "chat_r1", "chat")
# How the final answer is read from a completion; "auto" picks the style's natural one.
EXTRACTIONS = ("auto", "answer_tag", "first_line", "last_number")
AUTO_EXTRACTION = {"plain": "first_line", "chat_r1": "answer_tag", "chat": "last_number"}

ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
# A signed integer or decimal, digits optionally grouped in thousands ("1,234.5"); "42." reads as 42.
NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?")

Prompt = str | list[dict[str, str]]
Completion = str | list[dict[str, Any]]


def _check_style(style: str) -> None:
    if style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt style {style!r}; allowed: {', '.join(PROMPT_STYLES)}")


def render_prompt(question: str, style: str) -> Prompt:
    """The prompt for ``question``: the text itself (plain), the R1-Zero system prompt + user turn
    (chat_r1), or the user turn alone for the model's own chat template (chat)."""
    _check_style(style)
    if style == "plain":
        return question
    user = {"role": "user", "content": question}
    return [{"role": "system", "content": R1_ZERO_SYSTEM_PROMPT}, user] if style == "chat_r1" else [user]


def completion_text(completion: Completion) -> str:
    """The generated text of a TRL completion: a string, or the contents of conversational messages."""
    if isinstance(completion, str):
        return completion
    return "".join(str(message.get("content") or "") for message in completion)


def answer_tag_contents(text: str) -> list[str]:
    """Contents of every ``<answer>...</answer>`` pair in ``text`` (non-greedy, in order)."""
    return ANSWER_TAG.findall(text)


def resolve_extraction(style: str, extraction: str = "auto") -> str:
    """The concrete extraction: ``extraction`` itself, or for ``auto`` the style's own (answer_tag for
    chat_r1, first_line for plain, last_number for chat)."""
    _check_style(style)
    if extraction not in EXTRACTIONS:
        raise ValueError(f"unknown answer extraction {extraction!r}; allowed: {', '.join(EXTRACTIONS)}")
    return AUTO_EXTRACTION[style] if extraction == "auto" else extraction


def extract_answer(text: Completion, style: str, extraction: str = "auto") -> str | None:
    """The model's final answer, stripped, or None when there is none: the last ``<answer>`` content
    (answer_tag), the first line (first_line) or the last number in the text (last_number)."""
    method = resolve_extraction(style, extraction)
    text = completion_text(text)
    if method == "answer_tag":
        tags = answer_tag_contents(text)
        return tags[-1].strip() if tags else None
    if method == "first_line":
        return text.strip().split("\n", 1)[0].strip() or None
    numbers = NUMBER.findall(text)
    return numbers[-1] if numbers else None
