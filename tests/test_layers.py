"""Layering of ism/: no import cycle (function-level imports included), one Ray adapter (run ids: test_run_identity)."""
import ast
import re
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "ism"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(name: str, modules: set[str]) -> str | None:
    """The ism module an import names (a name imported from a package may be a submodule)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """{module: ism modules it imports}, from every import statement in the file, at any depth."""
    files = {_module_name(p): p for p in PKG.rglob("*.py")}
    modules = set(files)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    pkg = pkg[:len(pkg) - node.level + 1]
                    base = ".".join(pkg + ([base] if base else []))
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            for t in targets:
                if t.startswith("ism"):
                    dep = _resolve(t, modules)
                    if dep and dep != mod:
                        graph[mod].add(dep)
    # a submodule import runs its package's __init__ first
    for mod in list(graph):
        for dep in list(graph[mod]):
            parent = dep.rpartition(".")[0]
            while parent and parent != "ism" and not mod.startswith(parent + ".") and mod != parent:
                graph[mod].add(parent)
                parent = parent.rpartition(".")[0]
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (c := visit(d)):
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_find_cycle_detects_a_lazy_back_edge():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_ism():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def _imports_of(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_one_ray_adapter_and_no_command_code_in_the_library():
    users = {_module_name(p): _imports_of(p) for p in PKG.rglob("*.py")}
    assert sorted(m for m, mods in users.items() if "ray" in mods) == ["ism.ablation.ray_adapter"]
    assert {m.rpartition(".")[0] for m, mods in users.items() if "mlflow" in mods} == {"ism.tracking"}, \
        "mlflow is imported by the tracking package alone"
    graph = import_graph()
    library = [m for m in graph if not m.startswith("ism.commands") and m not in ("ism.cli",)]
    assert not [m for m in library if any(d.startswith("ism.commands") for d in graph[m])]
    assert not [m for m in library if "argparse" in users[m]], "argument parsing belongs to ism.commands"


ARCHITECTURE = PKG.parent / "docs" / "architecture.md"


def documented_rooms() -> list[tuple[int, str]]:
    """(layer, room) from the house plan in docs/architecture.md: lines ` N  name/` (a package) or ` N  name.py`
    inside its first fenced block, top (0) to bottom."""
    text = ARCHITECTURE.read_text()
    block = text.split("```")[1]
    rooms = []
    for line in block.splitlines():
        m = re.match(r"^\s*(\d+)\s+([a-z_]+)(/|\.py)\s", line + " ")
        if m:
            rooms.append((int(m.group(1)), "ism." + m.group(2)))
    return rooms


def test_the_architecture_doc_draws_every_room_of_ism():
    """`ls ism/` and the doc's house plan list the same packages and top-level modules."""
    on_disk = {"ism." + (p.name if p.is_dir() else p.stem) for p in PKG.iterdir()
               if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py" and p.name != "__init__.py")}
    drawn = {room for _, room in documented_rooms()}
    assert drawn == on_disk, f"only in the doc: {sorted(drawn - on_disk)}; only in ism/: {sorted(on_disk - drawn)}"


def _layer(module: str) -> int:
    for i, room in documented_rooms():
        if module == room or module.startswith(room + "."):
            return i
    raise AssertionError(f"{module} is in no room of docs/architecture.md")


def test_no_module_imports_a_layer_below_its_own():
    """A module imports its own layer or the ones above it in the doc's house plan (lower in the data flow)."""
    graph = import_graph()
    wrong = sorted(f"{m} -> {d}" for m, deps in graph.items() if m != "ism" for d in deps
                   if d != "ism" and _layer(d) > _layer(m))
    assert not wrong, "imports against the layering: " + ", ".join(wrong)


def test_the_layer_check_catches_an_upward_import(monkeypatch):
    """The check above fails on a training module importing the ablation driver (its oracle: a planted edge)."""
    graph = import_graph()
    graph["ism.training.train"] = graph["ism.training.train"] | {"ism.ablation.driver"}
    wrong = [d for d in graph["ism.training.train"] if _layer(d) > _layer("ism.training.train")]
    assert wrong == ["ism.ablation.driver"]


def test_no_module_is_over_400_lines():
    """A module that grows past ~400 lines holds more than one concern: split it by concern (docs/architecture.md)."""
    long = {str(p.relative_to(PKG.parent)): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"modules over 400 lines: {long}"


REASON = "# Over 60 lines on purpose:"


def long_functions_without_reason(src: str, limit: int = 60) -> list[str]:
    """Functions longer than `limit` lines with no REASON comment directly above them (or above their decorators)."""
    lines = src.splitlines()
    out = []
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > limit:
            top = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1  # 0-based index of the first line
            above = [ln for ln in lines[max(0, top - 4):top] if ln.lstrip().startswith("#")]
            if not any(ln.lstrip().startswith(REASON) for ln in above):
                out.append(node.name)
    return out


def test_no_function_is_over_60_lines_without_a_reason():
    """Issue 24: a function past ~60 lines is split, or says above it why its steps belong together."""
    found = {f"{p.relative_to(PKG.parent)}::{name}" for p in PKG.rglob("*.py")
             for name in long_functions_without_reason(p.read_text())}
    assert not found, f"functions over 60 lines without '{REASON}': {sorted(found)}"


def test_the_function_length_check_catches_a_long_function_and_accepts_its_reason():
    body = "".join(f"    x{i} = {i}\n" for i in range(70))
    assert long_functions_without_reason(f"def f():\n{body}") == ["f"]
    assert long_functions_without_reason(f"{REASON} why.\n@dec\ndef f():\n{body}") == []
    assert long_functions_without_reason(f"def f():\n{body[:200]}") == []
