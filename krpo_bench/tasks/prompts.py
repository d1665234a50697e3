"""Prompt rendering (plain text or R1-Zero chat) and answer extraction from completions."""

from __future__ import annotations

import re
from typing import Any

R1_ZERO_SYSTEM_PROMPT = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with "
    "the answer. The reasoning process and answer are enclosed within <think> </think> and "
    "<answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> "
    "<answer> answer here </answer>."
)

ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)

Prompt = str | list[dict[str, str]]
Completion = str | list[dict[str, Any]]


def render_prompt(question: str, style: str) -> Prompt:
    """The prompt for ``question``: the text itself (plain) or system + user messages (chat_r1)."""
    if style == "plain":
        return question
    if style == "chat_r1":
        return [{"role": "system", "content": R1_ZERO_SYSTEM_PROMPT}, {"role": "user", "content": question}]
    raise ValueError(f"unknown prompt style {style!r}; allowed: plain, chat_r1")


def completion_text(completion: Completion) -> str:
    """The generated text of a TRL completion: a string, or the contents of conversational messages."""
    if isinstance(completion, str):
        return completion
    return "".join(str(message.get("content") or "") for message in completion)


def answer_tag_contents(text: str) -> list[str]:
    """Contents of every ``<answer>...</answer>`` pair in ``text`` (non-greedy, in order)."""
    return ANSWER_TAG.findall(text)


def extract_answer(text: Completion, style: str) -> str | None:
    """The model's final answer: the last ``<answer>`` content (chat_r1) or the first line (plain),
    stripped; None when there is none."""
    text = completion_text(text)
    if style == "chat_r1":
        tags = answer_tag_contents(text)
        return tags[-1].strip() if tags else None
    if style == "plain":
        return text.strip().split("\n", 1)[0].strip() or None
    raise ValueError(f"unknown prompt style {style!r}; allowed: plain, chat_r1")
