"""What every ``odam`` command shares: exit statuses, the default model, ``--device`` and one-line errors.

Nothing here imports torch: the parsers are built from this module alone, so that ``odam --help`` and argument
errors answer at once. The names the parsers list are copies of the library's own (``tests/test_cli_startup.py``
checks that each copy equals its source); torch comes in when a command runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    import torch

EXIT_ERROR = 2
#: The shell's status for a command stopped by Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED = 130
DEFAULT_MODEL = "synthcrowd-fcos"
#: The score threshold of ``odam demo``, and of ``odam explain`` with odam's own detectors (bundled or trained by
#: ``odam train``): they keep candidates down to 0.05 for AP, which floods a photo with boxes.
OWN_SCORE_THRESHOLD = 0.5
#: D-RISE's masks per image from the command line (the paper's 5000 take minutes per image on a CPU).
DRISE_MASKS = 1000
#: ``IMAGE`` arguments of this form name a photo that ships in an installed package (:mod:`odam.data.photos`), or
#: ``photo:crowd``, the SynthCrowd scene that ships in odam.
PHOTO_PREFIX = "photo:"

# The library's names that the parsers list (copies; see the module's docstring).
#: :data:`odam.models.BUNDLED`
BUNDLED: tuple[str, ...] = ("synthcrowd-fcos", "synthcrowd-fasterrcnn", "synthcrowd-fcos-odamtrain",
                            "synthcrowd-fasterrcnn-odamtrain", "synthcrowd-fcos-featurenms",
                            "synthcrowd-fasterrcnn-featurenms")
#: the keys of :data:`odam.explainers.EXPLAINERS`
EXPLAINERS: tuple[str, ...] = ("odam", "gradcam", "gradcam++", "drise")
#: :data:`odam.structures.TARGETS`
TARGETS: tuple[str, ...] = ("score", "left", "top", "right", "bottom")
#: :data:`odam.data.photos.PHOTOS`
PHOTOS: tuple[str, ...] = ("astronaut", "camera", "grace_hopper", "t1", "collage")
#: :data:`odam._image.MAX_PIXELS`
MAX_PIXELS = 40_000_000
#: :data:`odam.data.photos.SCENE`
SCENE = Path(__file__).parents[1] / "assets" / "synthcrowd-scene.png"
#: :data:`odam.architectures.ARCHITECTURES`
ARCHITECTURES: tuple[str, ...] = ("fcos", "retinanet", "fasterrcnn")
#: :data:`odam.architectures.BACKBONES`
BACKBONES: tuple[str, ...] = ("tiny", "resnet18", "resnet34", "resnet50", "mobilenet_v3_large")
#: :data:`odam.data.synthcrowd.STYLES`
STYLES: tuple[str, ...] = ("crowd", "mixed")
#: What ``photo:NAME`` may name.
NAMED_IMAGES: tuple[str, ...] = ("crowd", *PHOTOS)


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--out``, ``--device`` and ``--debug``, which the commands that write explanations or checkpoints share."""
    parser.add_argument("--out", required=True, type=Path, help="output directory (created if missing)")
    parser.add_argument("--device", default=None,
                        help="torch device, e.g. cpu or cuda:0 (default: cuda if available, else cpu)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")


class Progress:
    """Progress of ``total`` steps on stderr: a tqdm bar on a terminal; elsewhere (a log file, a pipe) a plain
    line at most every ``every`` seconds, and one at the end of a run that printed any, so that a long run is never
    silent and a short one adds nothing to a log.

    Example:
        >>> import io
        >>> out = io.StringIO()
        >>> with Progress(3, "photo.jpg", "detections", stream=out, every=0) as p:
        ...     p.update(2)
        ...     p.update(1)
        >>> [line.split(" in ")[0] for line in out.getvalue().splitlines()]
        ['odam: photo.jpg: 2/3 detections', 'odam: photo.jpg: 3/3 detections']
    """

    def __init__(self, total: int, desc: str, unit: str, *, stream: TextIO | None = None,
                 every: float = 5.0) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.done = 0
        self.start = self.last = time.monotonic()
        tty = bool(getattr(self.stream, "isatty", lambda: False)())
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=desc, unit=unit[:-1] if unit.endswith("s") else unit, file=self.stream,
                        leave=False) if tty else None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if now - self.last >= self.every and self.done < self.total:
            self.last = now
            self._line(now)

    def close(self) -> None:
        """End the bar; without one, print the last line, unless the whole run took less than ``every``."""
        if self.bar is not None:
            self.bar.close()
            return
        now = time.monotonic()
        if self.last > self.start or now - self.start >= self.every:
            self._line(now)

    def _line(self, now: float) -> None:
        print(f"odam: {self.desc}: {self.done}/{self.total} {self.unit} in {now - self.start:.1f} s",
              file=self.stream, flush=True)


def device(name: str | None) -> torch.device:
    """The torch device of ``--device name``; by default cuda if available, else cpu.

    Example:
        >>> device("cpu")
        device(type='cpu')
    """
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        result = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"invalid --device {name!r}: {one_line(err)}") from err
    if result.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} requested but CUDA is not available")
    return result


def numbers(flag: str, text: str | None) -> list[float]:
    """The comma-separated numbers given to ``flag``; none for ``None``.

    Example:
        >>> numbers("--nms", "0.5,0.6")
        [0.5, 0.6]
    """
    try:
        return [] if text is None else [float(t) for t in text.split(",")]
    except ValueError:
        raise ValueError(f"{flag} expects comma-separated numbers, got {text!r}") from None


def report_error(err: BaseException, write: Callable[..., object] | None = None) -> None:
    """Print ``err`` as one line ``odam: error: ...`` on stderr, through ``write`` (e.g. ``tqdm.write``) if given.

    Example:
        >>> report_error(ValueError("bad\\n value"), write=lambda line, file: print(line))
        odam: error: bad value
    """
    message = one_line(err)
    if not isinstance(err, (ValueError, TypeError, OSError)):
        message = f"{type(err).__name__}: {message}"
    line = f"odam: error: {message}"
    if write is None:
        print(line, file=sys.stderr)
    else:
        write(line, file=sys.stderr)


def one_line(err: BaseException) -> str:
    """``err``'s message on one line (its type's name if it has none).

    Example:
        >>> one_line(KeyError())
        'KeyError'
    """
    return " ".join(str(err).split()) or type(err).__name__
