"""Issue 19, item 8: a worker re-checks every local path a job names against its own data roots where
it opens it (JSONL files, ``hf:`` model folders, probe checkpoints, datasets on disk): a link
re-pointed after the server accepted the spec, or swapped in between the check and the open, is
refused, and the error names the field, never the contents or field names of the file outside.
Relative model paths are refused when the spec is validated."""

from __future__ import annotations

import os
from pathlib import Path

import datasets
import pytest
from krpo_bench.api.policy import Policy, admit
from pydantic import ValidationError

from krpo_bench import data_roots
from krpo_bench.data_roots import OutsideDataRoots, data_file, data_folder
from krpo_bench.models import load_model
from krpo_bench.models.config import ModelSpec
from krpo_bench.models.hf import ModelLoadError
from krpo_bench.probe.run import _load
from krpo_bench.probe.spec import ProbeSpec
from krpo_bench.service.worker import short_reason
from krpo_bench.spec.loading import SpecError
from krpo_bench.tasks import build_task, hf
from krpo_bench.tasks.config import HFTask, JsonlTask
from krpo_bench.tasks.jsonl import read_rows
from tests.api.test_api import BASE, SPEC

SECRET = '{"aws_secret_access_key": "AKIA-LEAK", "db_password": "hunter2"}\n'
LEAKS = ("aws_secret_access_key", "AKIA-LEAK", "db_password", "hunter2")


@pytest.fixture
def roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data root (the worker's, from its settings) with one good JSONL file, and a secret file outside it."""
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "q.jsonl").write_text('{"question": "1+1", "answer": "2"}\n')
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "q.jsonl").write_text(SECRET)
    monkeypatch.setenv("KRPO_BENCH_DATA_ROOTS", str(root))
    return root


def assert_no_leak(error: BaseException) -> None:
    text = short_reason(f"{type(error).__name__}: {error}")  # what the job row keeps
    assert not any(leak in text for leak in LEAKS), text


def jsonl(path: Path, **fields: str) -> JsonlTask:
    return JsonlTask(kind="jsonl", path=str(path), rewards=[{"name": "exact"}], **fields)


def test_a_jsonl_link_repointed_after_submission_is_refused_without_a_leak(roots: Path) -> None:
    link = roots / "task.jsonl"
    link.symlink_to(roots / "sub" / "q.jsonl")
    policy = Policy(data_roots=(roots,))
    admit({**SPEC, "base": {**BASE, "task": jsonl(link).model_dump(mode="json")}}, policy)  # accepted at submit
    assert read_rows(str(link), jsonl(link)) == [{"question": "1+1", "answer": "2", "prompt_id": 1}]  # inside: read
    link.unlink()
    link.symlink_to(roots.parent / "outside" / "q.jsonl")
    for task in (jsonl(link), jsonl(roots / "sub" / "q.jsonl", test_path=str(link))):
        with pytest.raises(OutsideDataRoots, match="not under the data roots") as refused:
            build_task(task)
        field = "task.path" if task.test_path is None else "task.test_path"
        assert str(refused.value).startswith(f"{field}: ") and str(roots) in str(refused.value)
        assert_no_leak(refused.value)


def test_a_link_swapped_in_between_check_and_open_is_not_followed(roots: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checked = data_roots.resolve_under_roots

    def check_then_swap(path: str | Path, where: tuple[Path, ...]) -> Path | None:
        resolved = checked(path, where)
        (roots / "sub").rename(roots / "old")
        (roots / "sub").symlink_to(roots.parent / "outside")  # same file name, outside the roots
        return resolved

    monkeypatch.setattr(data_roots, "resolve_under_roots", check_then_swap)
    with pytest.raises(OutsideDataRoots, match="a link appeared in it while it was opened") as refused:
        build_task(jsonl(roots / "sub" / "q.jsonl"))
    assert_no_leak(refused.value)


def test_files_that_are_no_regular_file_are_refused_without_blocking(roots: Path) -> None:
    os.mkfifo(roots / "pipe.jsonl")
    with pytest.raises(ValueError, match="is no regular file"):
        build_task(jsonl(roots / "pipe.jsonl"))
    with pytest.raises(FileNotFoundError, match="task.path: JSONL file not found"):
        build_task(jsonl(roots / "missing.jsonl"))
    with pytest.raises(OutsideDataRoots):  # outside the roots, a missing file is never looked for
        build_task(jsonl(roots.parent / "missing.jsonl"))
    with pytest.raises(OutsideDataRoots):
        with data_file("sub/q.jsonl", "task.path"):  # relative to the worker's folder
            pass


def test_a_model_folder_link_repointed_after_submission_is_refused(roots: Path) -> None:
    (roots.parent / "outside" / "model").mkdir()
    (roots.parent / "outside" / "model" / "config.json").write_text(SECRET)
    (roots / "model").symlink_to(roots.parent / "outside" / "model")
    with pytest.raises(ModelLoadError, match="not under the data roots") as refused:
        load_model(ModelSpec(name=f"hf:{roots / 'model'}"))
    assert "model.name" in str(refused.value)
    assert_no_leak(refused.value)
    (roots / "model").unlink()
    (roots / "model").mkdir()
    (roots / "model" / "config.json").symlink_to(roots.parent / "outside" / "model" / "config.json")
    with pytest.raises(ModelLoadError, match="its link 'config.json' leads out of them") as inner:
        load_model(ModelSpec(name=f"hf:{roots / 'model'}"))
    assert_no_leak(inner.value)


def test_a_probe_checkpoint_link_repointed_after_submission_is_refused(roots: Path) -> None:
    (roots.parent / "outside" / "checkpoint-7").mkdir()
    (roots.parent / "outside" / "checkpoint-7" / "config.json").write_text(SECRET)
    (roots / "checkpoint-7").symlink_to(roots.parent / "outside" / "checkpoint-7")
    probe = ProbeSpec.model_construct(checkpoint=str(roots / "checkpoint-7"), model=ModelSpec(name="tiny-arith"))
    with pytest.raises(OutsideDataRoots, match="checkpoint: .* not under the data roots") as refused:
        _load(probe, "cpu")
    assert_no_leak(refused.value)
    with pytest.raises(OutsideDataRoots):
        _load(ProbeSpec.model_construct(checkpoint="checkpoint-7", model=ModelSpec(name="tiny-arith")), "cpu")


def test_a_dataset_folder_swapped_between_check_and_open_is_refused(
    roots: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    datasets.Dataset.from_dict({"question": ["1+1"], "answer": ["2"]}).save_to_disk(str(roots / "sub" / "ds"))
    datasets.Dataset.from_dict({"aws_secret_access_key": ["AKIA-LEAK"]}).save_to_disk(
        str(roots.parent / "outside" / "ds")
    )
    task = HFTask.model_construct(
        kind="hf",
        dataset=str(roots / "sub" / "ds"),
        question_field="question",
        answer_field="answer",
        answer_extract="none",
        split="train",
        test_split=None,
    )
    assert hf.load(task)[0] == [{"question": "1+1", "answer": "2", "prompt_id": 0}]
    with pytest.raises(hf.DatasetRefused, match="no folder written by save_to_disk"):
        hf.load(task.model_copy(update={"dataset": str(roots / "sub")}))
    checked = data_roots.resolve_under_roots

    def check_then_swap(path: str | Path, where: tuple[Path, ...]) -> Path | None:
        resolved = checked(path, where)
        if not (roots / "old").exists():
            (roots / "sub").rename(roots / "old")
            (roots / "sub").symlink_to(roots.parent / "outside")
        return resolved

    monkeypatch.setattr(data_roots, "resolve_under_roots", check_then_swap)
    with pytest.raises(hf.DatasetRefused, match="a link appeared") as refused:
        hf.load(task)
    assert str(refused.value).startswith("task.dataset: ")
    assert_no_leak(refused.value)


def test_a_pinned_folder_is_read_through_its_descriptor(roots: Path) -> None:
    with data_folder(str(roots / "sub"), "task.dataset") as folder:
        (roots / "sub").rename(roots / "moved")  # renamed away after the open: the descriptor still reads it
        assert (folder / "q.jsonl").read_text() == '{"question": "1+1", "answer": "2"}\n'


@pytest.mark.parametrize(
    "name",
    [
        "hf:./evil/model",
        "hf:evil/model/checkpoint-1",
        "hf:../evil",
        "hf:evil/../model",
        "hf:.hidden/model",
        "hf:evil\\model",
    ],
)
def test_relative_model_paths_are_refused_at_validation(name: str) -> None:
    with pytest.raises(ValidationError, match="absolute path") as refused:
        ModelSpec(name=name)
    assert refused.value.errors()[0]["loc"] == ("name",)
    with pytest.raises(SpecError) as at_submit:
        admit({**SPEC, "base": {**BASE, "model": {"name": name}}}, Policy(data_roots=(Path("/nowhere"),)))
    assert [e["path"] for e in at_submit.value.errors] == ["base.model.name"]


def test_a_hub_id_that_names_a_folder_of_the_workers_directory_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "evil" / "model").mkdir(parents=True)
    (tmp_path / "evil" / "model" / "config.json").write_text(SECRET)
    monkeypatch.chdir(tmp_path)  # e.g. a worker started in the data home
    with pytest.raises(ModelLoadError, match="names a path in the worker's working directory") as refused:
        load_model(ModelSpec(name="hf:evil/model"))
    assert str(refused.value).startswith("model.name: ")
    assert_no_leak(refused.value)
