"""Reward functions, answer extraction, correctness and weighted combination."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from krpo_bench.tasks import ArithmeticTask, build_task, combine_rewards, extract_answer, is_correct
from krpo_bench.tasks.prompts import R1_ZERO_SYSTEM_PROMPT, render_prompt
from krpo_bench.tasks.rewards import (
    answers_match,
    exact_reward,
    format_reward,
    math_verify_reward,
    paper_lenient_reward,
    paper_reward,
    reward_function,
)


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


# The released script's reward (KRPO.md): only the FIRST <answer>(.*?)</answer> match (dot matches
# newlines), nothing stripped; equal 1.0, gold a substring 0.5, other content (even empty) 0.01,
# no complete tag pair 0; <think> plays no part.
@pytest.mark.parametrize(
    ("completion", "gold", "expected"),
    [
        ("<answer> 12 </answer>", "12", 0.5),
        ("<answer>12</answer><answer>13</answer>", "12", 1.0),
        ("<answer>13</answer><answer>12</answer>", "12", 0.01),
        ("<answer>12</answer>", "12", 1.0),
        ("<think>7+5</think><answer>12</answer>", "12", 1.0),
        ("<think><answer>13</answer></think><answer>12</answer>", "12", 0.01),
        ("<answer>12\n</answer>", "12", 0.5),
        ("<answer>1\n2</answer>", "12", 0.01),
        ("<answer>\n12\n</answer>", "12", 0.5),
        ("<answer>The answer is 12.</answer>", "12", 0.5),
        ("<answer>120</answer>", "12", 0.5),
        ("<answer>11</answer>", "12", 0.01),
        ("<answer></answer>", "12", 0.01),
        ("<answer> </answer>", "12", 0.01),
        ("<answer>12</answer>", " 12", 0.01),
        ("<answer> 12</answer>", " 12", 1.0),
        ("<answer><answer>12</answer></answer>", "12", 0.5),
        ("12", "12", 0.0),
        ("<answer>12", "12", 0.0),
        ("12</answer>", "12", 0.0),
        ("<think>12</think>", "12", 0.0),
        ("<ANSWER>12</ANSWER>", "12", 0.0),
        ("", "12", 0.0),
    ],
)
def test_paper_reward_is_the_released_script(completion: str, gold: str, expected: float) -> None:
    assert paper_reward(completion, gold) == expected
    assert paper_reward(chat(completion), gold) == expected
    assert reward_function("paper", "chat_r1")(prompts=[None], completions=[completion], answer=[gold]) == [expected]


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("<think>7*6</think><answer>42</answer>", 1.0),
        ("<answer> 42 \n</answer>", 1.0),
        ("<answer>The answer is 42.</answer>", 0.5),
        ("<answer>420</answer>", 0.5),
        ("<answer>41</answer>", 0.01),
        ("<answer></answer>", 0.01),
        ("42", 0.0),
        ("<answer>42", 0.0),
        ("42</answer>", 0.0),
        ("<think>42</think>", 0.0),
        ("<answer>41</answer> then <answer>42</answer>", 1.0),
        ("<answer>42</answer> then <answer>41</answer>", 0.01),
        ("<answer><answer>42</answer></answer>", 0.5),
        ("", 0.0),
    ],
)
def test_paper_lenient_reward_table(completion: str, expected: float) -> None:
    assert paper_lenient_reward(completion, "42") == expected
    assert paper_lenient_reward(chat(completion), " 42 ") == expected
    assert reward_function("paper_lenient", "chat_r1")(prompts=[None], completions=[completion], answer=["42"]) == [
        expected
    ]


@pytest.mark.parametrize(
    ("completion", "style", "expected"),
    [
        ("52", "plain", 1.0),
        (" 52 \nextra words", "plain", 1.0),
        ("52.0", "plain", 1.0),
        ("+52", "plain", 1.0),
        ("5 2", "plain", 0.0),
        ("53", "plain", 0.0),
        ("", "plain", 0.0),
        ("\n\n", "plain", 0.0),
        ("<answer>52</answer>", "plain", 0.0),
        ("<think>x</think><answer> 52 </answer>", "chat_r1", 1.0),
        ("<answer>51</answer><answer>52</answer>", "chat_r1", 1.0),
        ("<answer>52</answer><answer>51</answer>", "chat_r1", 0.0),
        ("52", "chat_r1", 0.0),
        ("<answer>52 apples</answer>", "chat_r1", 0.0),
    ],
)
def test_exact_reward_table(completion: str, style: str, expected: float) -> None:
    assert exact_reward(completion, "52", style) == expected
    assert exact_reward(chat(completion), "52", style) == expected


@pytest.mark.parametrize(
    ("predicted", "gold", "expected"),
    [
        ("1,000", "1000", True),
        ("-0", "0", True),
        ("1e2", "100", True),
        ("a  b", " a b ", True),
        ("123456789012345678901", "123456789012345678902", False),
        ("nan", "nan", True),
        ("inf", "Infinity", False),
        (None, "1", False),
    ],
)
def test_answers_match_edge_cases(predicted: str | None, gold: str, expected: bool) -> None:
    assert answers_match(predicted, gold) is expected


@given(st.integers(min_value=-(10**40), max_value=10**40))
@settings(max_examples=50, deadline=None)
def test_exact_reward_numeric_forms(value: int) -> None:
    assert exact_reward(f"{value}.0\n", str(value), "plain") == 1.0
    assert exact_reward(f"<answer>{value}</answer>", str(value), "chat_r1") == 1.0
    assert exact_reward(str(value + 1), str(value), "plain") == 0.0


@pytest.mark.parametrize(
    ("completion", "gold", "style", "expected"),
    [
        ("<answer>0.5</answer>", "1/2", "chat_r1", 1.0),
        ("<answer>$\\frac{1}{2}$</answer>", "0.5", "chat_r1", 1.0),
        ("<answer>\\frac{1}{2}</answer>", "0.5", "chat_r1", 1.0),
        ("<answer>0.4</answer>", "1/2", "chat_r1", 0.0),
        ("0.5", "1/2", "chat_r1", 0.0),
        ("52", "52", "plain", 1.0),
        ("x+1", "1+x", "plain", 1.0),
        ("banana", "52", "plain", 0.0),
        ("<answer>?!</answer>", "?!", "chat_r1", None),
        ("<answer>1</answer>", "", "chat_r1", None),
    ],
)
def test_math_verify_reward_table(completion: str, gold: str, style: str, expected: float | None) -> None:
    assert math_verify_reward(completion, gold, style) == expected
    assert math_verify_reward(chat(completion), gold, style) == expected


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("<think>reason</think><answer>42</answer>", 1.0),
        ("  <think>\nmulti\nline\n</think>\n\n<answer> 42 </answer>\n", 1.0),
        ("<think></think><answer></answer>", 1.0),
        ("<answer>42</answer>", 0.0),
        ("<think>reason</think>", 0.0),
        ("<think>reason</think><answer>42</answer> trailing", 0.0),
        ("leading <think>reason</think><answer>42</answer>", 0.0),
        ("<think>reason</think> between <answer>42</answer>", 0.0),
        ("<think>reason</think><answer>4</answer><answer>2</answer>", 0.0),
        ("<think><think>nested</think></think><answer>42</answer>", 0.0),
        ("<answer>42</answer><think>reason</think>", 0.0),
        ("<think>a <answer>1</answer></think><answer>42</answer>", 0.0),
    ],
)
def test_format_reward_table(completion: str, expected: float) -> None:
    assert format_reward(completion) == expected
    assert format_reward(chat(completion)) == expected


@pytest.mark.parametrize(
    ("text", "style", "expected"),
    [
        ("52", "plain", "52"),
        ("  52  \n53", "plain", "52"),
        ("", "plain", None),
        ("<think>a</think><answer> 7 </answer>", "chat_r1", "7"),
        ("<answer>1</answer>\n<answer>\n2\n</answer>", "chat_r1", "2"),
        ("<answer>1", "chat_r1", None),
        ("no tags", "chat_r1", None),
    ],
)
def test_extract_answer(text: str, style: str, expected: str | None) -> None:
    assert extract_answer(text, style) == expected
    assert extract_answer(chat(text), style) == expected


def test_extract_answer_rejects_unknown_style() -> None:
    with pytest.raises(ValueError, match="prompt style"):
        extract_answer("52", "markdown")
    with pytest.raises(ValueError, match="answer extraction 'lastnumber'; allowed: auto, answer_tag"):
        extract_answer("52", "chat", "lastnumber")
    with pytest.raises(ValueError, match="answer extraction"):
        reward_function("exact", "chat", "lastnumber")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The sum of 12 and 30 is 42.", "42"),
        ("12 + 30 = 42", "42"),
        ("3 - 5 = -2", "-2"),
        ("5-3=2", "2"),
        ("It costs $1,234.50 in total", "1,234.50"),
        ("Numbers 1,2,3", "3"),
        ("x = 0.5", "0.5"),
        ("**Answer:** 42\n\nHope this helps!", "42"),
        ("no digits at all", None),
        ("", None),
    ],
)
def test_last_number_extraction(text: str, expected: str | None) -> None:
    assert extract_answer(text, "chat") == expected  # auto is last_number for the chat style
    assert extract_answer(chat(text), "plain", "last_number") == expected
    assert extract_answer(text, "chat_r1", "last_number") == expected


@pytest.mark.parametrize(
    ("completion", "gold", "expected"),
    [
        ("Sure! 12 + 30 = 42.", "42", 1.0),
        ("The answer is 1,000.", "1000", 1.0),
        ("The answer is 42.0", "42", 1.0),
        ("42 is close, but it is 41", "42", 0.0),
        ("I cannot tell.", "42", 0.0),
    ],
)
def test_rewards_and_correctness_with_last_number(completion: str, gold: str, expected: float) -> None:
    for name in ("exact", "math_verify"):
        func = reward_function(name, "chat", "last_number")
        assert func(prompts=[None], completions=[chat(completion)], answer=[gold]) == [expected]
    assert is_correct(completion, gold, "chat") is bool(expected)
    assert is_correct(completion, gold, "plain", extraction="last_number") is bool(expected)
    assert exact_reward(completion, gold, "plain") == float(completion.strip() == gold)


def test_multi_message_completion_is_joined() -> None:
    completion = chat("<think>x</think>") + chat("<answer>3</answer>")
    assert format_reward(completion) == 1.0
    assert paper_reward(completion, "3") == 1.0


def test_trl_reward_functions() -> None:
    completions = ["<think>t</think><answer>4</answer>", "<answer>5</answer>", "4"]
    # Extra columns and keywords as GRPOTrainer passes them.
    kwargs = {
        "completion_ids": [[1], [2], [3]],
        "question": ["2+2"] * 3,
        "prompt_id": [0] * 3,
        "trainer_state": None,
        "log_metric": print,
    }
    expected = {
        "paper": [1.0, 0.01, 0.0],
        "paper_lenient": [1.0, 0.01, 0.0],
        "exact": [1.0, 0.0, 0.0],
        "math_verify": [1.0, 0.0, 0.0],
        "format": [1.0, 0.0, 0.0],
    }
    for name, scores in expected.items():
        func = reward_function(name, "chat_r1")
        assert func.__name__ == name
        assert func(prompts=["2+2"] * 3, completions=completions, answer=["4"] * 3, **kwargs) == scores
        conversational = [chat(c) for c in completions]
        assert func(prompts=[[]] * 3, completions=conversational, answer=["4"] * 3, **kwargs) == scores


def test_trl_math_verify_returns_none_for_unparsable_gold() -> None:
    func = reward_function("math_verify", "plain")
    assert func(prompts=["q", "q"], completions=["?!", "7"], answer=["?!", "7"]) == [None, 1.0]


def test_unknown_reward_name() -> None:
    with pytest.raises(ValueError, match="unknown reward"):
        reward_function("length", "plain")


def test_is_correct_fallback() -> None:
    assert is_correct("52.0", "52", "plain")
    assert not is_correct("<answer>0.5</answer>", "1/2", "chat_r1")
    assert is_correct("<answer>0.5</answer>", "1/2", "chat_r1", math_verify_fallback=True)
    assert not is_correct("<answer>0.6</answer>", "1/2", "chat_r1", math_verify_fallback=True)
    assert not is_correct("no tag", "1/2", "chat_r1", math_verify_fallback=True)


def test_combine_rewards_weights_and_none() -> None:
    combined = combine_rewards([[1.0, None, None, 0.5], [0.5, 1.0, None, None]], [2.0, 0.5])
    assert combined[:2] == [2.25, 0.5]
    assert math.isnan(combined[2])
    assert combined[3] == 1.0
    assert combine_rewards([], []) == []


def test_combine_rewards_shape_errors() -> None:
    with pytest.raises(ValueError, match="weights"):
        combine_rewards([[1.0]], [1.0, 2.0])
    with pytest.raises(ValueError):
        combine_rewards([[1.0], [1.0, 2.0]], [1.0, 1.0])


@given(
    st.integers(min_value=1, max_value=4).flatmap(
        lambda funcs: st.tuples(
            st.lists(st.floats(min_value=0.01, max_value=100), min_size=funcs, max_size=funcs),
            st.integers(min_value=0, max_value=6).flatmap(
                lambda n: st.lists(
                    st.lists(st.one_of(st.none(), st.floats(0, 1)), min_size=n, max_size=n),
                    min_size=funcs,
                    max_size=funcs,
                )
            ),
        )
    )
)
@settings(max_examples=60, deadline=None)
def test_combine_rewards_property(case: tuple[list[float], list[list[float | None]]]) -> None:
    weights, per_func = case
    combined = combine_rewards(per_func, weights)
    for j, total in enumerate(combined):
        scores = [(w, f[j]) for w, f in zip(weights, per_func) if f[j] is not None]
        if scores:
            assert total == pytest.approx(sum(w * s for w, s in scores))
        else:
            assert math.isnan(total)


def test_math_verify_reward_off_the_main_thread() -> None:
    with ThreadPoolExecutor(max_workers=1) as pool:
        assert pool.submit(math_verify_reward, "<answer>0.5</answer>", "1/2", "chat_r1").result() == 1.0


def test_r1_system_prompt_is_the_released_one() -> None:
    lines = R1_ZERO_SYSTEM_PROMPT.split("\n")
    assert lines == [
        "A conversation between User and Assistant. The user asks a question, and the Assistant solves it.",
        "The assistant first thinks about the reasoning process in the mind and then provides the user with the "
        "answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> "
        "tags, respectively, i.e., <think> reasoning process here </think>",
        "<answer> answer here </answer>",
        "",
    ]
    assert render_prompt("2+2", "chat_r1") == [
        {"role": "system", "content": R1_ZERO_SYSTEM_PROMPT},
        {"role": "user", "content": "2+2"},
    ]


def test_chat_style_is_the_bare_user_turn() -> None:
    assert render_prompt("What is 2+2?", "chat") == [{"role": "user", "content": "What is 2+2?"}]
    task = build_task(
        ArithmeticTask(kind="arithmetic", prompt_style="chat", rewards=[{"name": "exact"}], train_size=4, test_size=2)
    )
    assert all(row["prompt"] == [{"role": "user", "content": row["question"]}] for row in task.train)
    answer = task.test[0]["answer"]
    assert task.is_correct(f"Let me add them: the result is {answer}.", answer)
    completion = [{"role": "assistant", "content": f"So it is {answer}"}]
    assert task.reward_funcs[0](prompts=[None], completions=[completion], answer=[answer]) == [1.0]
    tagged = build_task(task.spec.model_copy(update={"prompt_style": "chat_r1", "answer_extraction": "last_number"}))
    assert tagged.is_correct(f"<answer>{answer}</answer> done", answer)
