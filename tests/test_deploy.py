"""Deployment files: docker-compose.yml, Dockerfile, .env.example and docs/deploy.md, checked
structurally (no Docker engine needed): services, images, commands that exist in our CLI,
environment variables our settings read, volumes, health checks, GPU reservations, no secrets."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from krpo_bench.cli import app
from krpo_bench.settings import ENV_VARS

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text()
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
DEPLOY_DOC = (ROOT / "docs" / "deploy.md").read_text()
SUBST = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")
OUR_VARS = re.compile(r"^(KRPO_BENCH_|MLFLOW_)")


def argv(command: Any) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command or []]


def cli_commands() -> dict[str, Any]:
    """``krpo-bench`` subcommands as click sees them (``token create`` as ``token create``)."""
    group = typer.main.get_command(app)
    out: dict[str, Any] = {}
    for name, command in group.commands.items():
        out[name] = command
        if getattr(command, "commands", None):  # a sub-app (typer vendors its own click)
            out.update({f"{name} {sub}": c for sub, c in command.commands.items()})
    return out


def check_krpo_bench_argv(args: list[str], where: str) -> None:
    """``args`` (after ``krpo-bench``) names an existing command and only its options."""
    commands = cli_commands()
    assert args, f"{where}: bare krpo-bench"
    name = f"{args[0]} {args[1]}" if len(args) > 1 and f"{args[0]} {args[1]}" in commands else args[0]
    assert name in commands, f"{where}: 'krpo-bench {name}' is not a command (have: {sorted(commands)})"
    options = {opt for p in commands[name].params for opt in (*p.opts, *getattr(p, "secondary_opts", []))} | {"--help"}
    for arg in args:
        if arg.startswith("--"):
            assert arg.split("=", 1)[0] in options, f"{where}: krpo-bench {name} has no option {arg}"


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in (str(k), *strings(v))]
    if isinstance(node, list):
        return [s for v in node for s in strings(v)]
    return [str(node)] if node is not None else []


# -- services, images, commands ----------------------------------------------------------------


def test_compose_has_the_stack() -> None:
    assert {"postgres", "mlflow", "api", "worker", "optuna-dashboard"} <= set(SERVICES)
    for name, service in SERVICES.items():
        assert service.get("image") or service.get("build"), f"{name}: neither image nor build"
    assert SERVICES["postgres"]["image"].startswith("postgres:")
    for name in ("mlflow", "api", "worker", "optuna-dashboard"):  # our image, built from the Dockerfile
        build = SERVICES[name]["build"]
        context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
        dockerfile = context / ("Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile"))
        assert dockerfile.is_file(), f"{name}: no {dockerfile}"


def test_services_run_the_right_programs() -> None:
    assert argv(SERVICES["api"]["command"])[:2] == ["krpo-bench", "serve"]
    worker = argv(SERVICES["worker"]["command"])
    assert worker[:2] == ["krpo-bench", "worker"] and "--gpus" in worker
    assert worker[worker.index("--slots-per-gpu") + 1] == "1", "one trial slot per GPU"
    mlflow = argv(SERVICES["mlflow"]["command"])
    assert mlflow[:2] == ["mlflow", "server"]
    joined = " ".join(mlflow)
    assert "--backend-store-uri=postgresql" in joined and "@postgres:5432/" in joined, "MLflow keeps runs in PostgreSQL"
    assert "--serve-artifacts" in mlflow and "--artifacts-destination=/mlartifacts" in mlflow
    dashboard = argv(SERVICES["optuna-dashboard"]["command"])
    assert dashboard[0] == "optuna-dashboard" and "search_path%3Doptuna" in dashboard[1], (
        "Optuna lives in schema optuna"
    )


def test_every_krpo_bench_command_exists_in_the_cli() -> None:
    used = 0
    for name, service in SERVICES.items():
        for key in ("command", "entrypoint"):
            args = argv(service.get(key))
            if args and args[0] == "krpo-bench":
                check_krpo_bench_argv(args[1:], f"docker-compose.yml {name}.{key}")
                used += 1
    readme = (ROOT / "README.md").read_text().split("## Deployment", 1)[1].split("\n## ", 1)[0]
    code = [
        c
        for doc in (DEPLOY_DOC, readme)
        for c in re.findall(r"```[a-z]*\n(.*?)```", doc, re.S) + re.findall(r"`([^`\n]+)`", doc)
    ]
    code += [line for line in (ROOT / "Dockerfile").read_text().splitlines() if not line.startswith("#")]
    for line in re.findall(r"\bkrpo-bench [a-z][^\n`|\"\]#)]*", "\n".join(code)):
        args = [a for a in shlex.split(line.replace("\\", "")) if not a.startswith("$")][1:]
        check_krpo_bench_argv(args, f"docs: {line.strip()}")
        used += 1
    assert used >= 6


def test_check_catches_unknown_commands_and_options() -> None:
    with pytest.raises(AssertionError, match="not a command"):
        check_krpo_bench_argv(["serverless"], "x")
    with pytest.raises(AssertionError, match="no option --gpu"):
        check_krpo_bench_argv(["worker", "--gpu", "0"], "x")
    check_krpo_bench_argv(["token", "create", "admin", "--scope", "admin"], "x")


# -- environment -------------------------------------------------------------------------------


def test_every_krpo_and_mlflow_variable_set_is_one_we_read() -> None:
    """Our variables are read by krpo_bench.settings alone (tests/test_settings.py checks that)."""
    seen = set()
    for name, service in SERVICES.items():
        for var in environment(service):
            if OUR_VARS.match(var):
                seen.add(var)
                assert var in ENV_VARS, f"{name}: {var} is not a krpo-bench setting (krpo_bench.settings.VARS)"
    assert {"KRPO_BENCH_DB", "MLFLOW_TRACKING_URI", "KRPO_BENCH_HOME"} <= seen
    for service in ("api", "worker"):
        env = environment(SERVICES[service])
        assert env["KRPO_BENCH_DB"].startswith("postgresql://") and "@postgres:5432/" in env["KRPO_BENCH_DB"]
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def test_k8s_and_slurm_examples_use_only_our_variables() -> None:
    manifests = [
        d for block in re.findall(r"```yaml\n(.*?)```", DEPLOY_DOC, re.S) for d in yaml.safe_load_all(block) if d
    ]
    kinds = {m["kind"]: m for m in manifests}
    assert {"Deployment", "Job"} <= set(kinds)
    for manifest in manifests:
        for container in manifest["spec"]["template"]["spec"]["containers"]:
            assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1
            args = container["command"]
            assert args[:2] == ["krpo-bench", "worker"]
            check_krpo_bench_argv(args[1:], f"docs/deploy.md {manifest['kind']}")
            for env in container["env"]:
                if OUR_VARS.match(env["name"]):
                    assert env["name"] in ENV_VARS
    sbatch = re.search(r"```bash\n(#!/bin/bash.*?)```", DEPLOY_DOC, re.S)
    assert sbatch and "#SBATCH --gres=gpu" in sbatch[1] and "#SBATCH --requeue" in sbatch[1]
    assert re.search(r"#SBATCH --signal=B:TERM@\d+", sbatch[1])
    assert re.search(r"-m krpo_bench.cli worker .*&$", sbatch[1], re.M) and 'wait "$worker"' in sbatch[1]
    for var in re.findall(r"export ((?:KRPO_BENCH|MLFLOW)_[A-Z_]+)=", sbatch[1]):
        assert var in ENV_VARS


# -- volumes, health checks, GPUs ----------------------------------------------------------------


def test_named_volumes_are_declared_and_used() -> None:
    declared = set(COMPOSE.get("volumes") or {})
    used = set()
    for name, service in SERVICES.items():
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name}: bind mount {source} does not exist"
            elif source:
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
    assert used == declared, f"declared but unused: {declared - used}"
    mounts = {s: {v.split(":")[1] for v in SERVICES[s].get("volumes", [])} for s in SERVICES}
    assert "/var/lib/postgresql/data" in mounts["postgres"] and "/mlartifacts" in mounts["mlflow"]
    for service in ("api", "worker"):  # the data home (checkpoints, tokens, model cache) persists
        assert environment(SERVICES[service])["KRPO_BENCH_HOME"] in mounts[service]


def test_every_service_has_a_healthcheck_and_waits_for_healthy_backends() -> None:
    for name, service in SERVICES.items():
        check = service.get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), f"{name}: no healthcheck"
        test = argv(check["test"])
        if "/app/docker/healthcheck.py" in test:
            assert (ROOT / "docker" / "healthcheck.py").is_file()
        depends = service.get("depends_on") or {}
        for dependency, condition in depends.items() if isinstance(depends, dict) else []:
            assert dependency in SERVICES and condition["condition"] == "service_healthy"
    for name in ("api", "worker"):
        assert set(SERVICES[name]["depends_on"]) == {"postgres", "mlflow"}
    assert (
        "COPY docker ./docker" in (ROOT / "Dockerfile").read_text()
        and "WORKDIR /app" in (ROOT / "Dockerfile").read_text()
    )


def test_worker_reserves_gpus() -> None:
    worker = SERVICES["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices and all("gpu" in d["capabilities"] for d in devices)
    assert all(d.get("driver") == "nvidia" and (d.get("count") == "all" or d.get("device_ids")) for d in devices)
    assert worker.get("stop_grace_period"), "SIGTERM needs time to checkpoint and requeue"


def test_worker_healthcheck_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("krpo_healthcheck", ROOT / "docker" / "healthcheck.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from krpo_bench.service.db import make_engine, upgrade
    from krpo_bench.service.transactions import Transactions
    from krpo_bench.service.worker_registry import WorkerRegistry

    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    monkeypatch.setenv("KRPO_BENCH_DB", url)
    engine = make_engine(url)
    upgrade(engine)
    assert module.main(["worker", "60"]) == 1, "no worker registered yet"
    WorkerRegistry(Transactions(engine)).register("w1")
    assert module.main(["worker", "60"]) == 0
    assert module.main(["http", "http://127.0.0.1:9/"]) == 1
    assert module.main([]) == 2
    engine.dispose()


# -- secrets -----------------------------------------------------------------------------------


def test_no_literal_secrets() -> None:
    for text in strings(COMPOSE):
        for match in re.finditer(r"://[^/\s:@]+:([^@\s]+)@", text):
            assert SUBST.fullmatch(match[1]), f"a password in a URL: {text}"
    for name, service in SERVICES.items():
        for var, value in environment(service).items():
            if re.search(r"PASSWORD|SECRET|TOKEN|KEY", var):
                assert value == "" or SUBST.fullmatch(value), f"{name}: {var} has a literal value"
    for var, op, default in SUBST.findall(COMPOSE_TEXT):
        if "PASSWORD" in var:
            assert op == ":?", f"${{{var}}} must be required (:?), never defaulted"


def test_env_example_declares_every_substitution_without_secrets() -> None:
    example = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            example[key.strip()] = value.strip()
    used = {var for var, _, _ in SUBST.findall(COMPOSE_TEXT)}
    assert used <= set(example), f"not in .env.example: {sorted(used - set(example))}"
    for key, value in example.items():
        if re.search(r"PASSWORD|SECRET|TOKEN", key):
            assert value == "", f".env.example must leave {key} empty"
    assert ".env" in (ROOT / ".dockerignore").read_text().split(), "the image must not pick up .env"


def test_the_docs_name_only_variables_of_the_settings_table() -> None:
    """Every ``KRPO_BENCH_*`` variable README and docs/ mention is a row of ``krpo_bench.settings.VARS``
    (or ``KRPO_BENCH_CONFIG``), so no document keeps a name the settings do not read."""
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    named = {
        (doc.name, var) for doc in docs for var in re.findall(r"\bKRPO_BENCH_[A-Z0-9_]*[A-Z0-9]\b", doc.read_text())
    }
    assert {"KRPO_BENCH_DB", "KRPO_BENCH_HOME"} <= {var for _, var in named}
    unknown = sorted(f"{doc}: {var}" for doc, var in named if var not in ENV_VARS)
    assert not unknown, f"documented but not a setting: {unknown}"
