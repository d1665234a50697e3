"""What one request can cost a server (issue 19, items 4 and 5): bytes stored, peak memory and CPU.

Each body goes to a fresh ``krpo-bench serve`` process (default settings, SQLite, no workers) on
loopback; the server's CPU-seconds (``/proc/<pid>/stat``) and the database's growth (file + WAL) are
measured around the one POST, its peak RSS (``VmHWM``) after it, and for an accepted study the time
of ``GET /studies/{id}`` and ``GET /studies/{id}/results``. The bodies: the issue's 900 KB JSON with
100,000 templates and 100 seeds; a 980 KB YAML whose comment holds ``&`` and ``*``; a YAML syntax
error after ``name: "R&D *draft*"``; a YAML of just under 50,000 nodes; a study refused only after
its whole matrix is planned (duplicate trials); and the largest accepted study this benchmark knows how to build
under the default limits: 1,000 trials whose configs together sit just under the stored-bytes cap,
as 10 variants x 100 seeds and as 1,000 variants with 180-character names (labels are stored 4 times).
``python -m benchmarks.amplification [--only LABEL ...]``; the machine's other load shows in the CPU
figures, so run it on a quiet machine and read them as upper bounds.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from krpo_bench.api.policy import Policy, check_planned

from benchmarks.api import start_server, stop
from krpo_bench.spec.study import StudySpec

BASE = {
    "model": {"name": "tiny-arith"},
    "task": {
        "kind": "arithmetic",
        "num_terms": [2, 2],
        "num_digits": [1, 2],
        "operators": ["+"],
        "parentheses": False,
        "unary_minus": False,
        "templates": ["{expr}="],
        "compact": True,
        "rewards": [{"name": "exact"}],
    },
    "training": {"max_steps": 1},
}
TICKS = os.sysconf("SC_CLK_TCK")


def templates_body(count: int, seeds: int) -> bytes:
    """The issue's body: ``count`` templates in the base, ``seeds`` seeds (JSON)."""
    task = {**BASE["task"], "templates": ["{expr}"] * count}
    body = {"name": "amplify", "kind": "ablation", "seeds": seeds, "base": {**BASE, "task": task}}
    return json.dumps(body, separators=(",", ":")).encode()


def yaml_comment_body() -> bytes:
    """980 KB of YAML whose comment holds ``&`` and ``*`` (a reason to look for aliases)."""
    lines = [
        "# R&D *draft*",
        "name: comment",
        "kind: ablation",
        "seeds: 2",
        "base:",
        "  model: {name: tiny-arith}",
        "  task:",
        "    kind: arithmetic",
        "    templates:",
    ]
    size = sum(len(line) + 1 for line in lines)
    i = 0
    while size < 980_000:
        line = f"      - '{{expr}} {i:07d}'"
        lines.append(line)
        size += len(line) + 1
        i += 1
    return ("\n".join(lines) + "\n").encode()


def yaml_syntax_error_body() -> bytes:
    return b'name: "R&D *draft*"\nkind: ablation\nbase: {model: {name: tiny-arith}\n  task: [\n'


def yaml_nodes_body(nodes: int = 49_990) -> bytes:
    """Just under the YAML node cap: a seeds list of ``nodes`` numbers (refused after parsing)."""
    return b"name: nodes\nkind: ablation\nseeds: [" + ",".join(str(i % 10) for i in range(nodes)).encode() + b"]\n"


def late_refusal_body() -> bytes:
    """The largest accepted study with every trial twice (a grid axis of two equal values):
    refused only after the whole matrix is planned."""
    return largest_accepted_body(50, 10, grid={"training.temperature": [1.0, 1.0]})


def largest_accepted_body(
    trials_per_variant: int = 100, variants: int = 10, key_chars: int = 3, grid: dict | None = None
) -> bytes:
    """``variants`` (keys of ``key_chars`` characters) x ``trials_per_variant`` seeds (1,000 trials,
    the default trial cap) whose templates fill each config as far as the default stored-bytes cap
    lets the server accept it (the policy's own check decides, so this follows the policy)."""
    policy = Policy(data_roots=())
    body: dict | None = None
    for count in range(100, 0, -1):  # at most 100 templates of at most 1,000 characters (FREE_LISTS)
        task = {**BASE["task"], "templates": [f"{{expr}} {i:03d} " + "x" * 980 for i in range(count)]}
        body = {
            "name": "largest",
            "kind": "ablation",
            "seeds": trials_per_variant,
            "base": {**BASE, "task": task},
            "variants": {
                f"v{i:0{key_chars - 1}d}": {"training": {"learning_rate": 10.0 ** -(1 + i % 5)}}
                for i in range(variants)
            },
            **({"grid": grid} if grid else {}),
        }
        if not check_planned(StudySpec.model_validate(body), policy)[0]:
            break
    return json.dumps(body).encode()


BODIES: dict[str, Callable[[], tuple[bytes, str]]] = {
    "issue-templates-seeds100": lambda: (templates_body(100_000, 100), "application/json"),
    "yaml-comment-aliases": lambda: (yaml_comment_body(), "application/yaml"),
    "yaml-syntax-error-ampersand": lambda: (yaml_syntax_error_body(), "application/yaml"),
    "yaml-50k-nodes": lambda: (yaml_nodes_body(), "application/yaml"),
    "late-refusal-duplicates": lambda: (late_refusal_body(), "application/json"),
    "largest-accepted": lambda: (largest_accepted_body(), "application/json"),
    "largest-accepted-long-labels": lambda: (largest_accepted_body(1, 1000, 180), "application/json"),
}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def db_bytes(folder: Path, pattern: str = "*.db") -> int:
    """Bytes of the databases (jobs with Optuna's tables, MLflow's) or, with ``pattern="*.db-wal"``,
    of their write-ahead logs (SQLite reuses those pages after a checkpoint)."""
    return sum(p.stat().st_size for p in folder.glob(pattern))


def measure(label: str, body: bytes, content_type: str) -> dict[str, object]:
    """One body against a fresh server: status, CPU-s, DB growth, peak RSS, read times."""
    with tempfile.TemporaryDirectory(prefix="krpo-amplify-") as tmp:
        folder = Path(tmp)
        proc, url = start_server(folder, f"sqlite:///{folder / 'jobs.db'}")
        try:
            time.sleep(1)  # let start-up work settle before the CPU baseline
            db_before, wal_before = db_bytes(folder), db_bytes(folder, "*.db-wal")
            cpu_before, started = cpu_seconds(proc.pid), time.monotonic()
            response = httpx.post(
                f"{url}/api/v1/studies", content=body, headers={"Content-Type": content_type}, timeout=600
            )
            out: dict[str, object] = {
                "body": label,
                "body_kb": round(len(body) / 1024),
                "status": response.status_code,
                "wall_s": round(time.monotonic() - started, 2),
                "cpu_s": round(cpu_seconds(proc.pid) - cpu_before, 2),
                "peak_rss_mb": round(peak_rss_mb(proc.pid)),
                "response_kb": round(len(response.content) / 1024, 1),
            }
            if response.status_code == 201:
                study = response.json()["id"]
                for path in (f"/api/v1/studies/{study}", f"/api/v1/studies/{study}/results"):
                    t = time.monotonic()
                    httpx.get(url + path, timeout=600).raise_for_status()
                    out[f"get_{path.rsplit('/', 1)[-1] if path.endswith('results') else 'study'}_s"] = round(
                        time.monotonic() - t, 2
                    )
            else:
                out["error"] = response.text[:160]
            time.sleep(2)  # the study's MLflow records follow in the background
            out["db_growth_mb"] = round((db_bytes(folder) - db_before) / 1e6, 2)
            out["wal_growth_mb"] = round((db_bytes(folder, "*.db-wal") - wal_before) / 1e6, 2)
            return out
        finally:
            stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", choices=sorted(BODIES), help="bodies to send (default: all)")
    args = parser.parse_args()
    for label in args.only or BODIES:
        body, content_type = BODIES[label]()
        print(json.dumps(measure(label, body, content_type)), flush=True)


if __name__ == "__main__":
    main()
