"""``odam --help`` and argument errors answer without importing torch: ``import odam`` is lazy, the parsers are
built from :mod:`odam.cli.common`'s copies of the library's names, and a subcommand's options are added only when
it is parsed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import odam
from odam.cli import common


def _fresh(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; it prints a JSON object as its last line."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def test_the_parsers_copies_equal_the_library_names() -> None:
    from odam._image import MAX_PIXELS
    from odam.architectures import ARCHITECTURES, BACKBONES
    from odam.data.photos import PHOTOS, SCENE
    from odam.data.synthcrowd import STYLES
    from odam.evaluation.config import SUPPRESSIONS
    from odam.explainers import EXPLAINERS
    from odam.models import BUNDLED
    from odam.nms import METHODS as NMS_METHODS
    from odam.structures import TARGETS

    assert common.BUNDLED == BUNDLED
    assert tuple(EXPLAINERS) == common.EXPLAINERS
    assert common.TARGETS == TARGETS
    assert common.PHOTOS == PHOTOS
    assert common.MAX_PIXELS == MAX_PIXELS
    assert common.SCENE == SCENE and common.SCENE.is_file()
    assert common.STYLES == STYLES
    assert (common.ARCHITECTURES, common.BACKBONES) == (ARCHITECTURES, BACKBONES)
    assert SUPPRESSIONS == NMS_METHODS


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["bogus"], ["explain", "--help"], ["explain"],
                                  ["explain", "x.png", "--out", "o", "--no-such-flag"], ["demo", "--help"],
                                  ["data", "--help"], ["data", "synthcrowd", "--out", "o"], ["train", "--help"],
                                  ["train", "--model", "fcos"], ["evaluate", "nms", "--help"],
                                  ["evaluate", "explanations", "--data", "d"], ["evaluate", "correlation", "--help"]])
def test_help_and_argument_errors_import_no_torch(argv: list[str]) -> None:
    """What ``odam --help`` and argument errors run loads no torch (torch alone takes seconds to import)."""
    result = _fresh(
        "import contextlib, io, json, sys\n"
        "from odam.cli import main\n"
        "out, err = io.StringIO(), io.StringIO()\n"
        "with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):\n"
        f"    code = main({argv!r})\n"
        "print(json.dumps({'code': code, 'torch': 'torch' in sys.modules, 'out': out.getvalue(),"
        " 'err': err.getvalue()}))")
    assert result["torch"] is False
    if "--help" in argv or "--version" in argv:
        assert result["code"] == 0 and result["out"] and not result["err"]
    else:
        assert result["code"] == common.EXIT_ERROR
        [line] = result["err"].splitlines()  # one line
        assert line.startswith("odam: error: ")


def test_subcommand_help_shows_its_options(capsys: pytest.CaptureFixture) -> None:
    """The options are added when the subcommand is asked for: its help lists them, the top-level one lists the
    commands."""
    from odam.cli import COMMANDS, main

    assert main(["--help"]) == 0
    top = capsys.readouterr().out
    assert all(name in top for name in COMMANDS)
    assert main(["explain", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--drise-masks" in text and "--out OUT" in text and "--model SPEC" in text
    assert main(["evaluate", "nms", "--help"]) == 0
    assert "--max-candidates" in capsys.readouterr().out


def test_import_odam_is_lazy_and_loads_the_api_on_first_use() -> None:
    result = _fresh(
        "import json, sys\n"
        "import odam\n"
        "before = 'torch' in sys.modules\n"
        "names = sorted(n for n in odam.__all__ if not hasattr(odam, n))\n"
        "from odam.structures import Explanation\n"
        "print(json.dumps({'before': before, 'missing': names, 'viz': 'odam.viz' in sys.modules,"
        " 'view': Explanation._repr_html_.__module__, 'has_view': __import__('odam.structures').structures._html_view"
        " is not None}))")
    assert result == {"before": False, "missing": [], "viz": True, "view": "odam.structures", "has_view": True}


def test_unknown_names_raise_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        odam.no_such_name  # noqa: B018
    assert set(odam.__all__) <= set(dir(odam))
    assert odam.ODAM.__name__ == "ODAM" and Path(odam.__file__).name == "__init__.py"


def test_submodules_are_attributes_and_the_notebook_view_loads_on_demand() -> None:
    """``odam.nms`` works right after ``import odam`` (it imports that submodule alone), and an Explanation made
    without the flat API still draws in a notebook: ``_repr_html_`` imports odam.viz, which installs the view."""
    result = _fresh(
        "import json, sys\n"
        "import odam\n"
        "name = odam.nms.Suppressed.__module__\n"
        "api = 'odam.viz' in sys.modules\n"
        "import torch\n"
        "from odam.structures import Detections, Explanation\n"
        "d = Detections(torch.tensor([[0.0, 0, 4, 4]]), torch.tensor([0.9]), torch.tensor([1]))\n"
        "html = Explanation(d, ('score',), torch.rand(1, 1, 8, 8))._repr_html_()\n"
        "print(json.dumps({'name': name, 'api': api, 'html': html.startswith('<iframe'),"
        " 'viz': 'odam.viz' in sys.modules}))")
    assert result == {"name": "odam.nms.suppressed", "api": False, "html": True, "viz": True}
