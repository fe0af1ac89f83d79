"""The codebase's shape, checked so it stays true: no import cycles (module-level or inside a
function), no module over the size a newcomer reads in one sitting, and every user-facing
setting's default written in one place only (the config schema)."""

from __future__ import annotations

import ast
from pathlib import Path

import wanda_export

PACKAGE = Path(wanda_export.__file__).parent
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, known: dict[str, Path]) -> set[str]:
    """Every wanda_export module imported anywhere in `tree` (typing-only imports left out)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if full in known:
                    found.add(full)
                elif node.module in known:
                    found.add(node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(ast.parse(path.read_text()), modules) - {name}
            for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return components


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_over_the_limit():
    sizes = {name: len(path.read_text().splitlines()) for name, path in _modules().items()}
    assert {name: size for name, size in sizes.items() if size > MAX_LINES} == {}


def _schema_settings() -> set[tuple[str, object]]:
    """(name, default) of every setting of the pipeline file that has a literal default."""
    from pydantic import BaseModel

    from wanda_export.config import gates, inputs, stages

    settings = set()
    for module in (inputs, stages, gates):
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, BaseModel):
                for name, field in value.model_fields.items():
                    if isinstance(field.default, (int, float, str)) and not isinstance(
                            field.default, bool):
                        settings.add((name, field.default))
    return settings


def _literal_defaults(tree: ast.AST) -> list[tuple[str, object, int]]:
    """(name, default, line) of every parameter or class field given a literal number or
    string default."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            positional = args.posonlyargs + args.args
            pairs = list(zip(positional[len(positional) - len(args.defaults):], args.defaults))
            pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
            found += [(arg.arg, default.value, node.lineno) for arg, default in pairs
                      if isinstance(default, ast.Constant)
                      and isinstance(default.value, (int, float, str))
                      and not isinstance(default.value, bool)]
        elif isinstance(node, ast.ClassDef):
            found += [(item.target.id, item.value.value, item.lineno) for item in node.body
                      if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
                      and isinstance(item.value, ast.Constant)
                      and isinstance(item.value.value, (int, float, str))
                      and not isinstance(item.value.value, bool)]
    return found


def test_every_setting_default_is_written_once_in_the_schema():
    settings = _schema_settings()
    assert {("batch_size", 8), ("epsilon", 0.3), ("owl_m", 5.0), ("dampening", 0.01),
            ("block_size", 128), ("iterations", 20)} <= settings
    schema = {PACKAGE / "config" / f"{name}.py" for name in ("inputs", "stages", "gates")}
    repeated = [f"{path.relative_to(PACKAGE)}:{line} {name}={default!r}"
                for path in sorted(PACKAGE.rglob("*.py")) if path not in schema
                for name, default, line in _literal_defaults(ast.parse(path.read_text()))
                if (name, default) in settings]
    assert repeated == []


def test_the_default_scan_sees_a_repeated_default():
    tree = ast.parse("def collect(x, batch_size=8):\n    pass\n"
                     "class Spec:\n    epsilon: float = 0.3\n")
    assert _literal_defaults(tree) == [("batch_size", 8, 1), ("epsilon", 0.3, 4)]


def test_the_stage_list_is_written_once():
    from wanda_export.cli import app
    from wanda_export.config.stages import STAGE_MODELS, STAGE_ORDER, StageEntry
    from wanda_export.pipeline.stages import STAGES

    assert tuple(STAGES) == STAGE_ORDER == tuple(STAGE_MODELS)
    assert set(StageEntry.model_fields) == set(STAGE_ORDER)
    commands = {command.name for command in app.registered_commands}
    assert set(STAGE_ORDER) <= commands
