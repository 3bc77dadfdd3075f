"""The floor plan stays as drawn: no import circle, no private name imported across modules, no oversized function.

These read the source with ``ast`` (nothing is imported), so they fail the moment a change reintroduces what
issue 15 removed: a circle such as checkpoint → models → … → checkpoint, a module reaching into another's
privates, or a function that grew past what one screen shows.
"""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
#: functions allowed to be long: argparse's declarative option lists
LONG_FUNCTIONS_ALLOWED = {("fond/cli.py", "build_parser")}
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    modules = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _imports(path: Path, modules: dict[str, Path]) -> list[tuple[str, list[str]]]:
    """(module imported, names taken from it) for every `import fond…` / `from fond… import …`, lazy ones too."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "fond":
            names = [alias.name for alias in node.names]
            found.append((node.module, names))
            found += [(f"{node.module}.{name}", []) for name in names if f"{node.module}.{name}" in modules]
        elif isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names if alias.name.split(".")[0] == "fond"]
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        targets = {target for target, _ in _imports(path, modules) if target in modules}
        graph[name] = targets - {name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                components.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return components


def test_no_import_circle_between_modules():
    """No module reaches itself through imports, lazy (in-function) imports included."""
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_circle():
    """The check above can fail: a planted circle a → b → c → a is reported."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_private_name_is_imported_across_modules():
    """A leading underscore means "this module only": no other module imports such a name."""
    modules = _modules()
    offenders = [f"{path.relative_to(SRC)} imports {name} from {module}"
                 for path in modules.values() for module, names in _imports(path, modules)
                 for name in names if name.startswith("_") and not name.startswith("__")]
    assert offenders == []


def test_no_function_is_longer_than_a_screen():
    """Functions stay under ~80 lines (the argument parser's option list excepted)."""
    long = []
    for path in SRC.rglob("*.py"):
        relative = str(path.relative_to(SRC))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES and (relative, node.name) not in LONG_FUNCTIONS_ALLOWED:
                    long.append(f"{relative}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []
