"""The one-way structure of the package: import-linter's contracts (pyproject.toml, ``[tool.importlinter]``) hold,
a contract the code breaks fails the run, and no module uses another module's underscore names."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "odam"
#: Cross-module uses of underscore names that are allowed: none. A module that needs another's private name
#: needs API; make it public (and documented), or move the caller.
ALLOWED: set[tuple[str, str]] = set()


def _lint_imports(*config: str) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(script), "--no-cache", *config], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)


def test_import_contracts_are_kept() -> None:
    result = _lint_imports()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_a_broken_contract_fails_the_run(tmp_path: Path) -> None:
    """The check can fail: explainers do import detectors, so a contract forbidding it is reported broken."""
    config = tmp_path / "contracts.toml"
    config.write_text('[tool.importlinter]\nroot_package = "odam"\n\n[[tool.importlinter.contracts]]\n'
                      'name = "explainers without detectors"\ntype = "forbidden"\n'
                      'source_modules = ["odam.explainers"]\nforbidden_modules = ["odam.detectors"]\n')
    result = _lint_imports(str(config))
    assert result.returncode != 0 and "BROKEN" in result.stdout


def _underscore_names(tree: ast.AST) -> set[str]:
    """The ``_name`` identifiers a module defines: functions, classes, variables, attributes, arguments, imports."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.alias):
            names.add(node.asname or node.name.split(".")[0])
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def cross_module_private_uses(files: list[Path], package: Path = PACKAGE) -> set[tuple[str, str]]:
    """``(file, name)`` for each underscore name a file imports from odam, or reads as an attribute, that another
    module of ``package`` defines and the file does not. Names from odam's private modules (``odam._atomic``...)
    that are themselves public are fine; third-party private names (torch's ``_forward_hooks``) are not odam's."""
    trees = {p: ast.parse(p.read_text(encoding="utf-8")) for p in package.rglob("*.py")}
    defined = {p: _underscore_names(t) for p, t in trees.items()}
    found = set()
    for path in files:
        tree = trees.get(path) or ast.parse(path.read_text(encoding="utf-8"))
        own = _underscore_names(tree)
        used = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "odam":
                used |= {a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")}
            elif (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                  and node.attr not in own):
                used.add(node.attr)
        for name in used:
            if any(name in names for p, names in defined.items() if p != path):
                found.add((path.name if package != PACKAGE else str(path.relative_to(ROOT)), name))
    return found


def test_no_module_uses_another_modules_private_names() -> None:
    files = sorted(PACKAGE.rglob("*.py")) + sorted((ROOT / "benchmarks").glob("*.py"))
    new = cross_module_private_uses(files) - ALLOWED
    assert not new, f"underscore names used across modules (make them API or move the caller): {sorted(new)}"


def test_the_private_name_check_can_fail(tmp_path: Path) -> None:
    (tmp_path / "base.py").write_text("_DEFAULT = 1\n\n\nclass Trace:\n    def __init__(self):\n"
                                      "        self._state = {}\n")
    (tmp_path / "user.py").write_text("from odam.base import _DEFAULT\n\n\ndef f(trace):\n    return trace._state\n")
    (tmp_path / "fine.py").write_text("def g(model):\n    return model._forward_hooks, model._own\n\n\n_own = 2\n")
    files = [tmp_path / "user.py", tmp_path / "fine.py"]
    assert cross_module_private_uses(files, tmp_path) == {("user.py", "_DEFAULT"), ("user.py", "_state")}
