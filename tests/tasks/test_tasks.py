"""Task specs and datasets: generated arithmetic / gsm_symbolic, JSONL files, HF datasets."""

from __future__ import annotations

import json
import re
from pathlib import Path

import datasets
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from krpo_bench.tasks import (
    TINY_ARITH_TASK,
    ArithmeticTask,
    GSMSymbolicTask,
    HFTask,
    JsonlTask,
    Task,
    TaskSpec,
    build_task,
)
from krpo_bench.tasks.arithmetic import evaluate
from krpo_bench.tasks.prompts import R1_ZERO_SYSTEM_PROMPT
from krpo_bench.tasks.split import in_test_split

COLUMNS = ["prompt", "question", "answer", "prompt_id"]
UNARY_MINUS = re.compile(r"(^|[(+*-]\s*)-")


def assert_well_formed(task: Task, train_size: int | None = None, test_size: int | None = None) -> None:
    for split, size in ((task.train, train_size), (task.test, test_size)):
        assert split.column_names == COLUMNS
        if size is not None:
            assert len(split) == size
        assert len(set(split["prompt_id"])) == len(split)
        assert all(isinstance(a, str) for a in split["answer"])
    assert not set(task.train["question"]) & set(task.test["question"])


def test_tiny_preset() -> None:
    task = build_task(TINY_ARITH_TASK)
    assert_well_formed(task, 2000, 200)
    assert task.prompt_style == "plain"
    assert [f.__name__ for f in task.reward_funcs] == ["exact"]
    assert task.reward_weights == [1.0]
    for split in (task.train, task.test):
        assert list(split["prompt_id"]) == list(range(len(split)))
        assert list(split["prompt"]) == list(split["question"])
        for question, answer in zip(split["question"], split["answer"]):
            a, b = re.fullmatch(r"(\d{1,2})\+(\d{1,2})=", question).groups()
            assert answer == str(int(a) + int(b))
    assert all(not in_test_split(q) for q in task.train["question"])
    assert all(in_test_split(q) for q in task.test["question"])
    sample = task.train[0]
    assert task.is_correct(sample["answer"], sample["answer"])
    assert not task.is_correct(str(int(sample["answer"]) + 1), sample["answer"])


def test_tiny_preset_covers_one_and_two_digit_numbers() -> None:
    numbers = [int(n) for q in build_task(TINY_ARITH_TASK).train["question"] for n in re.findall(r"\d+", q)]
    assert min(numbers) < 10 <= max(numbers) <= 99
    assert 0 in numbers


def test_same_spec_same_datasets_and_seed_changes_them() -> None:
    spec = ArithmeticTask(kind="arithmetic", train_size=50, test_size=20, seed=3)
    first, again = build_task(spec), build_task(spec.model_copy())
    assert first.train.to_dict() == again.train.to_dict()
    assert first.test.to_dict() == again.test.to_dict()
    other = build_task(spec.model_copy(update={"seed": 4}))
    assert list(other.train["question"]) != list(first.train["question"])


def test_default_spec_uses_every_feature() -> None:
    spec = ArithmeticTask(kind="arithmetic", train_size=400, test_size=50)
    task = build_task(spec)
    assert_well_formed(task, 400, 50)
    questions = list(task.train["question"])
    expressions = [_strip_template(q) for q in questions]
    assert {_template_of(q) for q in questions} == set(spec.templates)
    assert any("(" in e for e in expressions)
    assert any("-(" in e for e in expressions)
    assert any(UNARY_MINUS.search(e) for e in expressions)
    assert {op for e in expressions for op in ("+", " - ", "*") if op in e} == {"+", " - ", "*"}
    assert {len(re.findall(r"\d+", e)) for e in expressions} == {2, 3, 4, 5}
    assert {len(n) for e in expressions for n in re.findall(r"\d+", e)} == {1, 2, 3, 4, 5}
    for expression, answer in zip(expressions, task.train["answer"]):
        assert int(answer) == eval(expression)  # noqa: S307 - independent check of our own expressions


def _template_of(question: str) -> str:
    for template, pattern in (
        ("Solve {expr}", r"Solve .+"),
        ("What is {expr}?", r"What is .+\?"),
        ("{expr} = ?", r".+ = \?"),
        ("{expr} =", r".+ ="),
    ):
        if re.fullmatch(pattern, question):
            return template
    return "{expr}"


def _strip_template(question: str) -> str:
    return re.sub(r"^(Solve |What is )|( = \?| =|\?)$", "", question)


@given(
    seed=st.integers(0, 10_000),
    terms=st.tuples(st.integers(2, 6), st.integers(2, 6)).map(sorted),
    digits=st.tuples(st.integers(1, 6), st.integers(1, 6)).map(sorted),
    operators=st.lists(st.sampled_from(["+", "-", "*"]), min_size=1, max_size=3, unique=True),
    parentheses=st.booleans(),
    unary_minus=st.booleans(),
    compact=st.booleans(),
)
@settings(max_examples=25, deadline=None)
def test_arithmetic_respects_its_spec(
    seed: int,
    terms: list[int],
    digits: list[int],
    operators: list[str],
    parentheses: bool,
    unary_minus: bool,
    compact: bool,
) -> None:
    spec = ArithmeticTask(
        kind="arithmetic",
        seed=seed,
        num_terms=tuple(terms),
        num_digits=tuple(digits),
        operators=operators,
        parentheses=parentheses,
        unary_minus=unary_minus,
        compact=compact,
        templates=["Q[{expr}]"],
        train_size=20,
        test_size=5,
    )
    task = build_task(spec)
    assert_well_formed(task, 20, 5)
    rows = list(task.train) + list(task.test)
    for question, answer in ((row["question"], row["answer"]) for row in rows):
        expression = re.fullmatch(r"Q\[(.+)\]", question).group(1)
        assert int(answer) == eval(expression) == evaluate(expression)  # noqa: S307
        numbers = re.findall(r"\d+", expression)
        assert terms[0] <= len(numbers) <= terms[1]
        assert all(digits[0] <= len(n) <= digits[1] for n in numbers)
        assert all(len(n) == 1 or n[0] != "0" for n in numbers)
        binary = re.sub(r"(^|[(+*-]\s*)-", r"\1", expression.replace(" ", ""))
        assert set(re.findall(r"[+*-]", binary)) <= set(operators)
        assert parentheses or "(" not in expression
        assert unary_minus or not UNARY_MINUS.search(expression)
        assert (" " in expression) is (not compact)


def test_evaluate_rejects_other_syntax() -> None:
    with pytest.raises(ValueError, match="not an integer arithmetic expression"):
        evaluate("2 ** 3")
    with pytest.raises(ValueError):
        evaluate("__import__('os')")


def test_too_small_space_raises() -> None:
    spec = TINY_ARITH_TASK.model_copy(update={"num_digits": (1, 1), "train_size": 100, "test_size": 10})
    with pytest.raises(ValueError, match="too small"):
        build_task(spec)


def test_chat_prompt_structure() -> None:
    task = build_task(ArithmeticTask(kind="arithmetic", prompt_style="chat_r1", train_size=5, test_size=2))
    for row in task.train:
        system, user = row["prompt"]
        assert system == {"role": "system", "content": R1_ZERO_SYSTEM_PROMPT}
        assert user == {"role": "user", "content": row["question"]}
    assert "<think>" in R1_ZERO_SYSTEM_PROMPT and "<answer>" in R1_ZERO_SYSTEM_PROMPT
    assert [f.__name__ for f in task.reward_funcs] == ["paper"]
    answer = task.test[0]["answer"]
    completion = [{"role": "assistant", "content": f"<answer>{answer}</answer>"}]
    assert task.reward_funcs[0](prompts=[None], completions=[completion], answer=[answer]) == [1.0]


def test_gsm_symbolic_offline() -> None:
    spec = GSMSymbolicTask(kind="gsm_symbolic", train_size=30, test_size=10, seed=1)
    task = build_task(spec)
    assert_well_formed(task, 30, 10)
    assert task.prompt_style == "chat_r1"
    assert isinstance(task.train[0]["prompt"], list)
    assert all(re.fullmatch(r"-?\d+(\.\d+)?", a) for a in task.train["answer"])
    assert build_task(spec).train.to_dict() == task.train.to_dict()
    reseeded = build_task(spec.model_copy(update={"seed": 2}))
    assert list(reseeded.train["question"]) != list(task.train["question"])
    assert task.is_correct("<answer>" + task.test[0]["answer"] + "</answer>", task.test[0]["answer"])


def _write_jsonl(path: Path, records: list[dict]) -> str:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n", encoding="utf-8")
    return str(path)


def test_jsonl_with_test_file_and_field_mapping(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KRPO_BENCH_DATA_ROOTS", str(tmp_path))  # workers read files only under their data roots
    train = _write_jsonl(
        tmp_path / "train.jsonl",
        [{"q": f"{i} + {i}?", "a": 2 * i, "uid": f"item-{i}"} for i in range(12)]
        + [{"q": "leaked?", "a": "x", "uid": "7"}],
    )
    test = _write_jsonl(
        tmp_path / "test.jsonl", [{"q": "leaked?", "a": "x", "uid": 3}, {"q": "new?", "a": "y", "uid": 4}]
    )
    spec = JsonlTask(
        kind="jsonl",
        path=train,
        test_path=test,
        question_field="q",
        answer_field="a",
        id_field="uid",
        train_size=10,
    )
    task = build_task(spec)
    assert_well_formed(task, 10, 2)
    assert "leaked?" not in task.train["question"]
    assert list(task.test["prompt_id"]) == [3, 4]
    row = task.train[0]
    assert row["answer"] == str(2 * int(row["question"].split()[0]))
    assert row["prompt"] == row["question"]
    assert build_task(spec).train.to_dict() == task.train.to_dict()


def test_jsonl_hash_split_of_one_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KRPO_BENCH_DATA_ROOTS", str(tmp_path))  # workers read files only under their data roots
    records = [{"question": f"What is {i} squared?", "answer": str(i * i)} for i in range(200)]
    path = _write_jsonl(tmp_path / "all.jsonl", records)
    task = build_task(JsonlTask(kind="jsonl", path=path, prompt_style="chat_r1"))
    assert_well_formed(task)
    assert len(task.train) + len(task.test) == 200
    assert all(in_test_split(q) for q in task.test["question"])
    assert all(not in_test_split(q) for q in task.train["question"])
    assert set(task.train["prompt_id"]) | set(task.test["prompt_id"]) == set(range(1, 201))


def test_jsonl_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KRPO_BENCH_DATA_ROOTS", str(tmp_path))  # workers read files only under their data roots
    missing = _write_jsonl(tmp_path / "missing.jsonl", [{"question": "a", "answer": "1"}, {"question": "b"}])
    with pytest.raises(ValueError, match=r"missing.jsonl:2: missing field 'answer'"):
        build_task(JsonlTask(kind="jsonl", path=missing))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "a", "answer": "1"}\n{oops\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken.jsonl:2: not valid JSON"):
        build_task(JsonlTask(kind="jsonl", path=str(broken)))
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        build_task(JsonlTask(kind="jsonl", path=str(tmp_path / "nowhere.jsonl")))
    records = [{"question": f"q{i}", "answer": "1", "id": 5} for i in range(50)]
    duplicate_ids = _write_jsonl(tmp_path / "dup.jsonl", records)
    with pytest.raises(ValueError, match="duplicate prompt ids"):
        build_task(JsonlTask(kind="jsonl", path=duplicate_ids, id_field="id"))


def test_hf_local_dataset_dict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KRPO_BENCH_DATA_ROOTS", str(tmp_path))
    folder = tmp_path / "gsm8k_like"
    train = {
        "problem": [f"Tom has {i} apples and buys 2. How many?" for i in range(30)],
        "solution": [f"{i} + 2 = {i + 2}\n#### {i + 2}" for i in range(30)],
    }
    test = {"problem": ["Ann has 1,000 pens. How many?"], "solution": ["####  1,000 "]}
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict(train), "test": datasets.Dataset.from_dict(test)}
    ).save_to_disk(str(folder))
    spec = HFTask(
        kind="hf",
        dataset=str(folder),
        question_field="problem",
        answer_field="solution",
        answer_extract="gsm8k",
        train_size=25,
        prompt_style="chat_r1",
    )
    task = build_task(spec)
    assert_well_formed(task, 25, 1)
    assert task.test[0]["answer"] == "1,000"
    assert task.is_correct("<answer>1000</answer>", task.test[0]["answer"])
    for question, answer in zip(task.train["question"], task.train["answer"]):
        assert answer == str(int(question.split()[2]) + 2)
    with pytest.raises(ValueError, match="split 'validation' not in"):
        build_task(spec.model_copy(update={"test_split": "validation"}))
    with pytest.raises(ValueError, match="no column 'question'"):
        build_task(spec.model_copy(update={"question_field": "question"}))


def test_hf_local_single_dataset_is_hash_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KRPO_BENCH_DATA_ROOTS", str(tmp_path))
    folder = tmp_path / "single"
    rows = {"question": [f"{i}*3" for i in range(100)], "answer": [3 * i for i in range(100)]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(folder))
    task = build_task(HFTask(kind="hf", dataset=str(folder)))
    assert_well_formed(task)
    assert len(task.train) + len(task.test) == 100
    assert task.train[0]["answer"] == str(3 * int(task.train[0]["question"].split("*")[0]))


def test_hf_hub_id_offline_gives_clear_error() -> None:
    with pytest.raises(ValueError, match=r"cannot load 'no-such-org/no-such-dataset' split 'train'"):
        build_task(HFTask(kind="hf", dataset="no-such-org/no-such-dataset"))


def test_build_task_accepts_dict_form() -> None:
    rewards = [{"name": "exact", "weight": 2}, {"name": "format", "weight": 0.5}]
    task = build_task({"kind": "arithmetic", "num_terms": [2, 3], "train_size": 8, "test_size": 3, "rewards": rewards})
    assert_well_formed(task, 8, 3)
    assert [f.__name__ for f in task.reward_funcs] == ["exact", "format"]
    assert task.reward_weights == [2.0, 0.5]


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"kind": "arithmetic", "num_terms": [1, 3]}, "num_terms"),
        ({"kind": "arithmetic", "num_terms": [5, 3]}, "num_terms"),
        ({"kind": "arithmetic", "num_digits": [1, 7]}, "num_digits"),
        ({"kind": "arithmetic", "operatorz": ["+"]}, "operatorz"),
        ({"kind": "arithmetic", "operators": ["/"]}, "operators"),
        ({"kind": "arithmetic", "operators": []}, "operators"),
        ({"kind": "arithmetic", "operators": ["+", "+"]}, "operators"),
        ({"kind": "arithmetic", "templates": ["What is x?"]}, "templates"),
        ({"kind": "arithmetic", "train_size": 0}, "train_size"),
        ({"kind": "arithmetic", "test_size": 100_001}, "test_size"),
        ({"kind": "arithmetic", "prompt_style": "markdown"}, "prompt_style"),
        ({"kind": "arithmetic", "rewards": []}, "rewards"),
        ({"kind": "arithmetic", "rewards": [{"name": "length"}]}, "rewards.0.name"),
        ({"kind": "arithmetic", "rewards": [{"name": "exact", "weight": 0}]}, "rewards.0.weight"),
        ({"kind": "arithmetic", "rewards": [{"name": "exact", "weight": 101}]}, "rewards.0.weight"),
        ({"kind": "arithmetic", "rewards": [{"name": "exact", "wieght": 1}]}, "rewards.0.wieght"),
        ({"kind": "arithmetic", "rewards": [{"name": "exact"}, {"name": "exact"}]}, "rewards"),
        ({"kind": "gsm_symbolic", "difficulty": 2.0}, "difficulty"),
        ({"kind": "jsonl"}, "path"),
        ({"kind": "jsonl", "path": "a.jsonl", "test_path": "a.jsonl"}, "test_path"),
        ({"kind": "hf", "dataset": "org/x", "test_split": "train"}, "test_split"),
        ({"kind": "hf", "dataset": "org/x", "answer_extract": "boxed"}, "answer_extract"),
        ({"kind": "hf", "dataset": "text"}, "dataset"),
        ({"kind": "hf", "dataset": "json/x"}, "dataset"),
        ({"kind": "hf", "dataset": "org/../x"}, "dataset"),
        ({"kind": "hf", "dataset": "data/train.jsonl/x"}, "dataset"),
        ({"kind": "hf", "dataset": "org/x", "split": ""}, "split"),
        ({"kind": "sudoku"}, "kind"),
    ],
)
def test_bad_config_names_the_field(data: dict, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        TypeAdapter(TaskSpec).validate_python(data)
    # The field must be where pydantic located the error (after the kind tag), or named by the
    # message of an error raised for the whole task, never only in pydantic's echo of the input.
    errors = info.value.errors()
    located = [".".join(map(str, e["loc"][1:])) for e in errors]
    whole_task = [e["msg"] for e in errors if len(e["loc"]) <= 1]
    assert any(loc == field or loc.startswith(f"{field}.") for loc in located) or any(field in m for m in whole_task), (
        errors
    )
