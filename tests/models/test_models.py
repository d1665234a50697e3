"""Model loading: spec validation, the tiny-arith builder and its cache, hf:<path>, LoRA, SmolLM2."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file

from krpo_bench.models import (
    LoraSpec,
    ModelLoadError,
    ModelSpec,
    TinyArithOptions,
    arith_pairs,
    build_tiny_arith,
    greedy_accuracy,
    load_model,
    tiny_arith_report,
)
from krpo_bench.models.char_tokenizer import build_char_tokenizer
from krpo_bench.models.hf import MARKER_FILE, cached_model_folder, resolve_dtype
from krpo_bench.models.tiny_arith import dropped_carry_answer, has_carry
from krpo_bench.tasks.split import in_test_split

QUICK = TinyArithOptions(warmup_steps=3)


@pytest.fixture(scope="module")
def default_build() -> Path:
    """The default tiny-arith build, shared with every other test using the same data home."""
    return build_tiny_arith()


@pytest.fixture(scope="module")
def quick_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A barely warmed-up tiny-arith folder in a private data home (cheap to build)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KRPO_BENCH_HOME", str(tmp_path_factory.mktemp("home")))
        return build_tiny_arith(QUICK)


def error_locations(error: ValidationError) -> list[tuple]:
    return [entry["loc"] for entry in error.errors()]


def test_spec_rejects_unknown_model_name_listing_the_allowed_forms() -> None:
    with pytest.raises(ValidationError) as caught:
        ModelSpec(name="gpt-5")
    assert error_locations(caught.value) == [("name",)]
    assert "tiny-arith" in str(caught.value) and "hf:<hub id or local path>" in str(caught.value)
    with pytest.raises(ValidationError):
        ModelSpec(name="hf:  ")


def test_spec_rejects_bad_dtype_unknown_keys_and_bad_lora() -> None:
    with pytest.raises(ValidationError) as caught:
        ModelSpec(name="tiny-arith", dtype="float64")
    assert error_locations(caught.value) == [("dtype",)]
    with pytest.raises(ValidationError) as caught:
        ModelSpec.model_validate({"name": "tiny-arith", "tiny": {"warmup_step": 5}})
    assert error_locations(caught.value) == [("tiny", "warmup_step")]
    with pytest.raises(ValidationError) as caught:
        ModelSpec.model_validate({"name": "tiny-arith", "lora": {"r": 0}})
    assert error_locations(caught.value) == [("lora", "r")]


def test_spec_accepts_the_three_forms() -> None:
    assert ModelSpec(name="hf:HuggingFaceTB/SmolLM2-135M").hf_source == "HuggingFaceTB/SmolLM2-135M"
    assert ModelSpec(name="smollm2-135m").hf_source is None
    assert ModelSpec(name="tiny-arith", lora={"target_modules": ["q_proj"]}).lora.target_modules == ["q_proj"]


def test_auto_dtype_is_bfloat16_on_cuda_only() -> None:
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("auto", "cuda:0") == torch.bfloat16
    assert resolve_dtype("float16", "cpu") == torch.float16


def test_char_tokenizer_round_trips_and_pads_left() -> None:
    tokenizer = build_char_tokenizer()
    text = "(12 + 3) * 4 - 5 = 55"
    ids = tokenizer(text)["input_ids"]
    assert len(ids) == len(text) and tokenizer.decode(ids) == text
    batch = tokenizer(["1+1=", "47+52="], padding=True)
    assert batch["input_ids"][0][:2] == [tokenizer.pad_token_id] * 2
    assert batch["attention_mask"][0] == [0, 0, 1, 1, 1, 1]
    assert tokenizer.decode([tokenizer.eos_token_id]) == "<eos>"


def test_dropped_carry_demonstrations() -> None:
    assert [dropped_carry_answer(a, b) for a, b in ((47, 55), (7, 5), (99, 1), (23, 45), (0, 0))] == [
        "92",
        "2",
        "90",
        "68",
        "0",
    ]
    assert has_carry(47, 55) and has_carry(7, 5) and not has_carry(23, 45) and not has_carry(30, 9)
    carrying = sum(has_carry(a, b) for a in range(100) for b in range(100))
    assert carrying == 10_000 - 55 * 55, "a pair carries unless neither column reaches 10"


def test_default_tiny_arith_is_partly_trained_on_unseen_pairs(default_build: Path) -> None:
    report = tiny_arith_report(default_build)
    assert 0.15 <= report["heldout_greedy_accuracy"] <= 0.60, report
    loaded = load_model(ModelSpec(name="tiny-arith"))
    assert 700_000 < loaded.num_parameters < 1_000_000
    heldout = arith_pairs(heldout=True)
    assert all(in_test_split(f"{a}+{b}=") for a, b in heldout)
    assert greedy_accuracy(loaded.model, loaded.tokenizer, heldout) == report["heldout_greedy_accuracy"]
    tokenizer = loaded.tokenizer
    assert tokenizer.padding_side == "left" and tokenizer.pad_token == "<pad>" and tokenizer.eos_token == "<eos>"
    inputs = tokenizer("47+5=", return_tensors="pt")
    output = loaded.model.generate(**inputs, do_sample=False, max_new_tokens=5)
    completion = tokenizer.convert_ids_to_tokens(output[0, inputs["input_ids"].shape[1] :].tolist())
    assert completion[-1] == "<eos>" and "".join(completion[:-1]).isdigit()


def test_tiny_arith_is_built_once(default_build: Path) -> None:
    marker = default_build / MARKER_FILE
    stamp = marker.stat().st_mtime_ns
    assert build_tiny_arith(TinyArithOptions()) == default_build
    assert marker.stat().st_mtime_ns == stamp


def test_tiny_arith_is_deterministic_by_seed(
    quick_build: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KRPO_BENCH_HOME", str(tmp_path))
    again = build_tiny_arith(QUICK)
    other_seed = build_tiny_arith(QUICK.model_copy(update={"seed": 1}))
    assert again != quick_build and again.name == quick_build.name != other_seed.name
    first, second = load_file(quick_build / "model.safetensors"), load_file(again / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)
    third = load_file(other_seed / "model.safetensors")
    assert not all(torch.equal(first[key], third[key]) for key in first)


def test_cached_folder_is_published_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KRPO_BENCH_HOME", str(tmp_path))
    models = tmp_path / "cache" / "models"

    def crash(folder: Path) -> None:
        (folder / "half-written").write_text("x")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        cached_model_folder("thing", crash)
    assert [path.name for path in models.iterdir()] == [".thing.lock"], "no half-written model is left"

    target = cached_model_folder("thing", lambda folder: (folder / "who").write_text("built"))
    assert (target / "who").read_text() == "built" and (target / MARKER_FILE).exists()
    assert sorted(path.name for path in models.iterdir()) == [".thing.lock", "thing"]


def _build_counting(folder: Path) -> None:
    with open(folder.parent / "builds.log", "a") as log:
        log.write(f"{os.getpid()}\n")
    time.sleep(0.5)
    (folder / "weights").write_text("w")


def _cached_in_child(home: str, out: multiprocessing.Queue) -> None:
    os.environ["KRPO_BENCH_HOME"] = home
    out.put(str(cached_model_folder("shared", _build_counting)))


def test_concurrent_builders_build_once(tmp_path: Path) -> None:
    out: multiprocessing.Queue = multiprocessing.Queue()
    children = [multiprocessing.Process(target=_cached_in_child, args=(str(tmp_path), out)) for _ in range(3)]
    for child in children:
        child.start()
    targets = {out.get(timeout=30) for _ in children}
    for child in children:
        child.join(timeout=30)
    assert targets == {str(tmp_path / "cache" / "models" / "shared")}
    assert len((tmp_path / "cache" / "models" / "builds.log").read_text().split()) == 1
    assert (tmp_path / "cache" / "models" / "shared" / "weights").read_text() == "w"


def test_hf_local_folder_loads_with_requested_dtype(quick_build: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KRPO_BENCH_DATA_ROOTS", str(quick_build.parent))  # local models load only under the data roots
    loaded = load_model(ModelSpec(name=f"hf:{quick_build}", dtype="bfloat16"))
    assert loaded.name == f"hf:{quick_build}"
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    assert loaded.tokenizer.padding_side == "left" and loaded.tokenizer.pad_token_id is not None
    assert loaded.num_parameters == loaded.num_trainable_parameters


def test_lora_wraps_the_model_and_trains_only_adapters(quick_build: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KRPO_BENCH_DATA_ROOTS", str(quick_build.parent))
    loaded = load_model(ModelSpec(name=f"hf:{quick_build}", lora=LoraSpec(r=4)))
    trainable = [name for name, p in loaded.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    assert 0 < loaded.num_trainable_parameters < loaded.num_parameters // 10
    assert type(loaded.model).__name__.startswith("Peft")


def test_missing_models_raise_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KRPO_BENCH_DATA_ROOTS", str(tmp_path))
    with pytest.raises(ModelLoadError, match="hf:.*empty"):
        load_model(ModelSpec(name=f"hf:{tmp_path / 'empty'}"))
    with pytest.raises(ModelLoadError, match="no-such-org/no-such-model"):
        load_model(ModelSpec(name="hf:no-such-org/no-such-model"))


@pytest.mark.slow
def test_smollm2_loads_from_the_package_with_its_chat_template() -> None:
    loaded = load_model(ModelSpec(name="smollm2-135m"))
    tokenizer = loaded.tokenizer
    assert 130_000_000 < loaded.num_parameters < 140_000_000
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token is not None
    assert tokenizer.padding_side == "left"
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 3?"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt.endswith("<|im_start|>assistant\n")
    inputs = tokenizer(prompt, return_tensors="pt")
    output = loaded.model.generate(**inputs, do_sample=False, max_new_tokens=8)
    assert tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
