"""The layer contract: each layer imports only the layers below it (and, in an independent group
written ``a | b``, not its siblings). Checked on the source, every import counted (function-local
ones included; only ``if TYPE_CHECKING:`` blocks are left out, they run nothing).

An AST check rather than import-linter: ``api/`` and ``dashboards/`` are folders of the repository
that install as ``krpo_bench.api`` / ``krpo_bench.dashboards`` (setuptools package-dir), which
import-linter's graph builder (grimp) cannot see under ``krpo_bench``.

Run it alone for the report: ``python tests/test_layers.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {
    "krpo_bench": ROOT / "krpo_bench",
    "krpo_bench.api": ROOT / "api",
    "krpo_bench.dashboards": ROOT / "dashboards",
}

LAYERS: list[list[str]] = [  # top first; a layer of several modules is an independent group
    ["krpo_bench.cli"],
    ["krpo_bench.api", "krpo_bench.client", "krpo_bench.slurm"],
    ["krpo_bench.dashboards"],
    ["krpo_bench.service"],
    ["krpo_bench.analysis"],
    ["krpo_bench.probe"],
    ["krpo_bench.training"],
    ["krpo_bench.spec"],
    ["krpo_bench.models"],
    ["krpo_bench.tasks", "krpo_bench.tracking"],
    ["krpo_bench.data_roots"],
    ["krpo_bench.advantages", "krpo_bench.stats", "krpo_bench.sequential", "krpo_bench.settings", "krpo_bench.tags"],
]
UNLAYERED = {"krpo_bench"}  # the package's own __init__ (its version)
SERVICE_INTERNALS = (
    "krpo_bench.service.queue",
    "krpo_bench.service.study_rows",
    "krpo_bench.service.worker_registry",
    "krpo_bench.service.transactions",
)
"""Modules of the service layer the API may not use: it calls `StudyService` (routers only translate HTTP)."""


def modules() -> dict[str, Path]:
    """Every module of the package, by dotted name."""
    found = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join([package, *parts])
            if not (package == "krpo_bench" and parts and parts[0] in ("api", "dashboards")):
                found[name] = path
    return found


def layer_of(module: str) -> tuple[int, str] | None:
    """(layer index, group member) of a module, or None when no layer holds it."""
    for index, members in enumerate(LAYERS):
        for member in members:
            if module == member or module.startswith(member + "."):
                return index, member
    return None


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports(module: str, path: Path) -> list[tuple[str, int]]:
    """(imported module, line) for every import in the file outside ``if TYPE_CHECKING:``."""
    is_package = path.name == "__init__.py"
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if _type_checking(child):
                for orelse in child.orelse:
                    visit(orelse)
                continue
            if isinstance(child, ast.Import):
                found.extend((alias.name, child.lineno) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = module.split(".")
                    anchor = anchor[: len(anchor) - child.level + (1 if is_package else 0)]
                    base = ".".join(anchor + ([base] if base else []))
                found.extend((f"{base}.{alias.name}", child.lineno) for alias in child.names)
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return found


def violations() -> list[str]:
    """Every import that breaks the contract, as ``importer -> imported (file:line)``."""
    known = modules()
    out = []
    for module, path in sorted(known.items()):
        source = layer_of(module)
        if source is None:
            continue
        for target, line in imports(module, path):
            if not target.startswith("krpo_bench"):
                continue
            where = f"{path.relative_to(ROOT)}:{line}"
            if module.startswith("krpo_bench.api") and target.startswith(SERVICE_INTERNALS):
                out.append(f"{module} -> {target} ({where}): the API goes through the service facade (StudyService)")
                continue
            if module.startswith("krpo_bench.advantages") and not target.startswith("krpo_bench.advantages"):
                out.append(f"{module} -> {target} ({where}): the estimators import nothing of the project")
                continue
            dest = layer_of(target)
            if dest is None:
                continue
            if dest[0] < source[0]:
                out.append(f"{module} -> {target} ({where}): imports a higher layer")
            elif dest[0] == source[0] and dest[1] != source[1]:
                out.append(f"{module} -> {target} ({where}): {source[1]} and {dest[1]} are independent")
    return out


def test_every_module_is_in_a_layer() -> None:
    loose = sorted(m for m in modules() if layer_of(m) is None and m not in UNLAYERED)
    assert not loose, f"modules in no layer (add them to LAYERS in tests/test_layers.py): {loose}"


def test_layers_import_downwards_only() -> None:
    found = violations()
    assert not found, "layer contract broken:\n  " + "\n  ".join(found)


def test_the_api_reaches_the_queue_only_through_the_service_facade() -> None:
    """No router or schema reads ``service.queue``: the study service owns every use of the job queue."""
    found = []
    for module, path in modules().items():
        if module.startswith("krpo_bench.api"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Attribute) and node.attr == "queue":
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not found, f"the API uses the job queue directly: {found}"


TABLE_OWNERS = {
    "studies": ("krpo_bench.service.study_rows", "Study"),
    "workers": ("krpo_bench.service.worker_registry", "Worker"),
}
"""Each table, the one module that issues statements on it, and its ORM model in ``krpo_bench.service.db``."""
_STATEMENTS = {"select", "insert", "update", "delete"}


def table_statements(path: Path, table: str, model: str) -> list[int]:
    """Lines of ``path`` that issue a statement on ``table`` (the Table object ``table`` or the ORM
    model ``model`` imported from ``krpo_bench.service.db``): ``select/insert/update/delete`` of it
    or its columns, its ``insert()``/``update()``/``delete()``, ``select_from`` it, its ``__table__``.
    A statement on another table may join it (the claim's fairness reads the studies of queued jobs)."""
    tree = ast.parse(path.read_text(), str(path))
    names = {table}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "krpo_bench.service.db":
            names |= {alias.asname or alias.name for alias in node.names if alias.name == model}

    def of_table(node: ast.AST) -> bool:
        while isinstance(node, ast.Attribute):
            node = node.value
        return isinstance(node, ast.Name) and node.id in names

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "__table__" and of_table(node.value):
            found.append(node.lineno)
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        if called in _STATEMENTS | {"select_from"} and node.args and of_table(node.args[0]):
            found.append(node.lineno)
        elif isinstance(func, ast.Attribute) and func.attr in _STATEMENTS and of_table(func.value):
            found.append(node.lineno)
    return sorted(set(found))


def test_one_module_issues_the_statements_on_studies_and_on_workers() -> None:
    """Only ``service/study_rows.py`` reads or writes study rows and only ``service/worker_registry.py``
    worker rows (the queue owns jobs only); migrations aside."""
    found = []
    for table, (owner, model) in TABLE_OWNERS.items():
        for module, path in modules().items():
            if module == owner or ".migrations." in module:
                continue
            found += [f"{path.relative_to(ROOT)}:{line} ({table})" for line in table_statements(path, table, model)]
    assert not found, "statements on a table outside its module:\n  " + "\n  ".join(found)


def test_the_table_check_sees_writes_reads_and_the_model(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "from krpo_bench.service.db import Study as S\n"
        "a = update(studies).values(x=1)\n"
        "b = studies.insert()\n"
        "c = select(S.id)\n"
        "d = S.__table__\n"
        "e = select(jobs.c.id).join(studies, studies.c.id == jobs.c.study_id)\n"
        "f = select(func.count()).select_from(studies)\n"
    )
    assert table_statements(source, "studies", "Study") == [2, 3, 4, 5, 7]


def test_the_check_sees_function_local_and_relative_imports(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import krpo_bench.cli\n"
        "def f():\n    from krpo_bench.service import studies\n    from ..spec import trial\n"
    )
    found = {name for name, _ in imports("krpo_bench.models.m", source)}
    assert {"krpo_bench.service.studies", "krpo_bench.spec.trial"} <= found and "krpo_bench.cli" not in found


if __name__ == "__main__":
    broken = violations()
    print("\n".join(broken) or "layer contract kept")
    raise SystemExit(1 if broken else 0)
