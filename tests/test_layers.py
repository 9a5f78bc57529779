"""The package's layers (docs/architecture.md): imports run one way only, lazy ones included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "ckpt_analyzer"

# Higher imports lower; equal ranks only inside one package, or between the listed foundations.
RANK: dict[str, float] = {
    "cli": 9,
    "integrations": 8.5,  # users' loops: the trainer's contract writing behind a small API
    "runner": 8, "train": 8,
    "study": 7.5,  # studies: several cubes through report and plot (below runner/train/cli)
    "report": 7, "plot": 7, "executors": 7, "export": 7,  # export: cubes to TensorBoard, W&B, tables
    "testing": 7.2,  # the probe contract checker builds its Context with executors.work.Plan
    "probes": 5,
    "functional": 3, "events": 3,
    "cube": 2, "checkpoints": 2, "data": 2, "models": 2,
    "registry": 1, "schema": 1, "config": 1, "util": 1, "_atomic": 1,
    "errors": 0,
}
SHARED_RANKS = {2, 1}  # cube/checkpoints/data/models, and the small helpers, may use each other


def _top(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "ckpt_analyzer" and len(parts) > 1 else None


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, top-level package module)`` of every ckpt_analyzer import in ``path``."""
    rel = path.relative_to(PKG.parent).with_suffix("")
    pkg_parts = list(rel.parts[:-1])  # the package a relative import starts from
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg_parts[: len(pkg_parts) - (node.level - 1)]
                names = [node.module] if node.module else [a.name for a in node.names]
                for n in names:
                    top = _top(".".join([*base, *n.split(".")]))
                    if top:
                        out.append((node.lineno, top))
            elif node.module and _top(node.module):
                out.append((node.lineno, _top(node.module)))  # type: ignore[arg-type]
        elif isinstance(node, ast.Import):
            for a in node.names:
                top = _top(a.name)
                if top:
                    out.append((node.lineno, top))
    return out


def _module_of(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0].removesuffix(".py")


def wrong_way_imports() -> list[str]:
    bad = []
    for f in sorted(PKG.rglob("*.py")):
        src = _module_of(f)
        if src == "__init__":  # the public facade (lazy re-exports)
            continue
        if src not in RANK:
            bad.append(f"{f.relative_to(PKG.parent)}: module '{src}' has no layer in RANK")
            continue
        for line, dst in _imports(f):
            if dst == src or dst == "__version__":
                continue
            if dst not in RANK:
                bad.append(f"{f.relative_to(PKG.parent)}:{line}: imports '{dst}', which has no layer")
            elif RANK[dst] > RANK[src] or (RANK[dst] == RANK[src] and RANK[src] not in SHARED_RANKS):
                bad.append(f"{f.relative_to(PKG.parent)}:{line}: {src} -> {dst}")
    return bad


def test_imports_run_one_way() -> None:
    assert wrong_way_imports() == []


def test_the_check_catches_a_wrong_way_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "ckpt_analyzer"
    (fake / "cube").mkdir(parents=True)
    (fake / "cube" / "x.py").write_text("def f():\n    from ..probes import base\n")
    (fake / "probes").mkdir()
    (fake / "probes" / "y.py").write_text("from ..cube import x\nfrom . import z\n")
    (fake / "plot").mkdir()
    (fake / "plot" / "z.py").write_text("from ckpt_analyzer.report import build\n")
    monkeypatch.setattr(__import__(__name__), "PKG", fake)
    assert wrong_way_imports() == ["ckpt_analyzer/cube/x.py:2: cube -> probes",
                                   "ckpt_analyzer/plot/z.py:1: plot -> report"]


if __name__ == "__main__":  # the layer check on its own (.ci/run)
    import sys

    problems = wrong_way_imports()
    print("\n".join(problems) or "layers: every import runs one way")
    sys.exit(1 if problems else 0)
