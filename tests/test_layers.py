"""Layering of ism/: no import cycle (function-level imports included), one Ray adapter (run ids: test_run_identity)."""
import ast
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
    assert sorted(m for m, mods in users.items() if "ray" in mods) == ["ism.ray_adapter"]
    assert sorted(m for m, mods in users.items() if "mlflow" in mods) == ["ism.tracking"]
    graph = import_graph()
    library = [m for m in graph if not m.startswith("ism.commands") and m not in ("ism.cli",)]
    assert not [m for m in library if any(d.startswith("ism.commands") for d in graph[m])]
    assert not [m for m in library if "argparse" in users[m]], "argument parsing belongs to ism.commands"


# The layers of docs/architecture.md, top (0) to bottom: a module may import its own layer or the ones above it.
LAYERS = [
    ["ism.errors"],
    ["ism.model_registry", "ism.schema", "ism.presets", "ism.config", "ism.metric_keys", "ism.store",
     "ism.dburl", "ism.machine", "ism.procs"],
    ["ism.rng", "ism.toys", "ism.sources", "ism.data", "ism.models", "ism.diagnostics", "ism.objective"],
    ["ism.checkpoint", "ism.run_state", "ism.sample", "ism.extractors", "ism.reflow", "ism.premetric", "ism.train"],
    ["ism.ruler", "ism.evaluate"],
    ["ism.tracking"],
    ["ism.profiles", "ism.specs", "ism.tuning", "ism.ablate", "ism.accounting", "ism.trial_objective", "ism.progress",
     "ism.trials", "ism.ray_adapter", "ism.sweep", "ism.study", "ism.sequential", "ism.budget"],
    ["ism.report"],
    ["ism.commands", "ism.cli"],
]


def _layer(module: str) -> int:
    for i, names in enumerate(LAYERS):
        if any(module == n or module.startswith(n + ".") for n in names):
            return i
    raise AssertionError(f"{module} is in no layer of docs/architecture.md")


def test_no_module_imports_a_layer_below_its_own():
    graph = import_graph()
    wrong = sorted(f"{m} -> {d}" for m, deps in graph.items() if m != "ism" for d in deps
                   if d != "ism" and _layer(d) > _layer(m))
    assert not wrong, "imports against the layering: " + ", ".join(wrong)
