"""docs/ADAPTERS.md's custom-detector example runs as written, passes the conformance suite, uses no private name,
and is as long as the page says."""

from __future__ import annotations

import ast
import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "ADAPTERS.md"


def _example() -> str:
    text = DOC.read_text(encoding="utf-8")
    (code,) = re.findall(r"<!-- example:start -->\n```python\n(.*?)```\n<!-- example:end -->", text, flags=re.S)
    return code


def test_custom_adapter_example_runs() -> None:
    namespace: dict = {"__name__": "adapters_example"}
    exec(compile(_example(), str(DOC), "exec"), namespace)  # check_adapter(case) raises if the adapter fails
    assert namespace["maps"].shape[1:] == (5, 64, 96)
    assert len(namespace["maps"]) >= 2
    decisions = namespace["kept"]
    assert len(decisions.keep) >= 1 and set(decisions.rules) <= {"kept", "capped", "iou>=T_iou and corr>T_l",
                                                                 "iou<T_iou and corr>T_h"}


def test_the_example_uses_no_private_name() -> None:
    """An adapter author needs nothing private: no ``_name`` attribute, import or call from odam."""
    tree = ast.parse(_example())
    private = sorted({node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
                      and node.attr.startswith("_") and not node.attr.startswith("__")}
                     | {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                        for alias in node.names if alias.name.startswith("_")}
                     | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                        and any(part.startswith("_") for part in (node.module or "").split("."))})
    assert private == []


def test_the_stated_length_is_the_adapters_length() -> None:
    text = DOC.read_text(encoding="utf-8")
    model, adapter = (int(n) for n in re.search(r"The model is (\d+) lines; its adapter.*?\*\*(\d+) lines\*\*",
                                                text, flags=re.S).groups())
    lines = _example().splitlines()

    def length(first: str, last: str) -> int:  # non-blank lines from the class line to before the next definition
        start = next(i for i, line in enumerate(lines) if line.startswith(first))
        end = next(i for i, line in enumerate(lines) if i > start and line.startswith(last))
        return sum(1 for line in lines[start:end] if line.strip())

    assert (length("class TinyDetector", "class TinyAdapter"), length("class TinyAdapter", "def native")) == (
        model, adapter)
