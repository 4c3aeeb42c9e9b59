"""The shape of the code: no import cycles among the project's modules (function-level imports count),
and the layers point one way (service -> router_core; kernels import no model or service code)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("router_core", "service")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def import_graph() -> dict[str, set[str]]:
    """``{module: project modules it imports}``, from every import statement, at any depth."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                # "from pkg import sub" imports the submodule; "from pkg import name" the package itself
                targets = [base + "." + a.name if base + "." + a.name in modules else base for a in node.names]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or ``None``."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles_among_the_projects_modules():
    graph = import_graph()
    assert "service.pipeline.transcriber" in graph["service.api.speech"]  # the graph sees the imports it should
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_layers_point_one_way():
    graph = import_graph()
    for name, imported in graph.items():
        if name.startswith("router_core"):
            assert not any(m.startswith("service") for m in imported), f"{name} imports the service layer"
        if name.startswith("router_core.kernels"):
            assert all(m.startswith("router_core.kernels") or m == "router_core.errors" for m in imported), (
                f"kernel module {name} imports model code: {sorted(imported)}"
            )


def test_the_service_rooms_point_one_way():
    """Adapters (``service.api``) use the request pipeline (``service.pipeline``), never the reverse; neither
    uses the command line. Inside the pipeline a request goes admission -> transcriber -> batcher -> engine:
    no room imports one the request already left (the transcriber is handed the admission, a record; the
    batcher and the engine know neither), so the answer comes back the way it went."""
    graph = import_graph()
    order = ["service.pipeline.admission", "service.pipeline.transcriber", "service.pipeline.batching",
             "service.pipeline.engine"]
    for name, imported in graph.items():
        if name.startswith("service.pipeline"):
            assert not any(m.startswith(("service.api", "service.cli", "service.app")) for m in imported), name
        if name.startswith("service.api"):
            assert not any(m.startswith(("service.cli", "service.app")) for m in imported), name
        if name in order:  # the rooms before it: only the admission it serves (a record it is handed)
            earlier = set(order[: order.index(name)]) - {"service.pipeline.admission"}
            assert not imported & earlier, f"{name} imports a room the request already left"
        if name in order[2:]:
            assert "service.pipeline.admission" not in imported, f"{name} reaches back to admission"
    assert "service.pipeline.admission" in graph["service.pipeline.transcriber"]
    assert "service.pipeline.batching" in graph["service.pipeline.transcriber"]


def _calls_of(attribute: str) -> set[str]:
    """Project modules that call ``<anything>.<attribute>(...)``."""
    found = set()
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attribute:
                found.add(name)
    return found


def test_one_training_loop_steps_every_optimizer():
    """Mask learning, backbone pretraining and weight finetuning share one loop: only it runs a backward
    pass and an optimizer step over training batches (a second hand-written loop would show up here). The
    one other optimisation is the linear probe's full-batch softmax regression on features already pooled
    (``training.probe.fit_probe``), which draws no batches."""
    allowed = {"router_core.training.loop", "router_core.training.probe"}
    assert _calls_of("backward") == allowed
    assert _calls_of("step") == allowed


def test_no_function_outside_tests_is_longer_than_sixty_lines():
    long = []
    for root in (*PACKAGES, "bench", "scripts"):
        for path in (ROOT / root).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > 60:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert long == []
