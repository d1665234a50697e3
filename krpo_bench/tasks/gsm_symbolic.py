"""GSM8K-style word problems from reasoning-gym's procedural ``gsm_symbolic`` generator (offline)."""

from __future__ import annotations

from collections.abc import Iterator

from krpo_bench.tasks.config import GSMSymbolicTask

CHUNK_SIZE = 1000
# reasoning-gym seeds item i of chunk c with (seed + c + i): space the seeds of different specs apart so
# that seed 1 is not seed 0 shifted by one chunk.
SEED_STRIDE = 1_000_003


def generate(spec: GSMSymbolicTask) -> Iterator[tuple[str, str]]:
    """Endless deterministic stream of (question, answer) pairs for ``spec`` (seeded by ``spec.seed``)."""
    import reasoning_gym  # 1.3 s of imports (matplotlib among them) that only this task needs
    from reasoning_gym.dataset import ReseedingDataset

    dataset = reasoning_gym.create_dataset(
        "gsm_symbolic", seed=(spec.seed * SEED_STRIDE) % 2**32, size=CHUNK_SIZE, difficulty=spec.difficulty
    )
    for item in ReseedingDataset(dataset, chunk_size=CHUNK_SIZE):
        yield item["question"], str(item["answer"])
