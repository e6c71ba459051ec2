"""The package's shape: no module of model/ imports another that imports it back, directly or through
others, not even under TYPE_CHECKING (a reader follows imports one way only)."""

import ast
from pathlib import Path

MODEL = Path(__file__).resolve().parent.parent / "model"


def imports_of(path: Path) -> set[str]:
    """The model modules a file imports anywhere in it (TYPE_CHECKING blocks and functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "model":
                found |= {alias.name for alias in node.names}
            elif node.module.startswith("model."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("model.")}
    return found


def test_no_import_cycle_among_the_model_modules():
    graph = {path.stem: imports_of(path) & {p.stem for p in MODEL.glob("*.py")} for path in MODEL.glob("*.py")}

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        while stack:
            node, trail = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return [*trail, nxt]
                if nxt not in trail:
                    stack.append((nxt, [*trail, nxt]))
        return None

    cycles = [c for c in map(cycle_from, sorted(graph)) if c]
    assert not cycles, " ; ".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_a_cycle_hidden_under_type_checking(tmp_path):
    (tmp_path / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from model.b import B\n")
    assert imports_of(tmp_path / "a.py") == {"b"}
