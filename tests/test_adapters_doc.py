"""docs/ADAPTERS.md's custom-detector example runs and passes the conformance suite."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "ADAPTERS.md"


def test_custom_adapter_example_runs() -> None:
    text = DOC.read_text(encoding="utf-8")
    (code,) = re.findall(r"<!-- example:start -->\n```python\n(.*?)```\n<!-- example:end -->", text, flags=re.S)
    namespace: dict = {"__name__": "adapters_example"}
    exec(compile(code, str(DOC), "exec"), namespace)  # check_adapter(case) raises if the adapter fails
    assert namespace["maps"].shape[1:] == (5, 24, 40)
    assert len(namespace["maps"]) >= 2
