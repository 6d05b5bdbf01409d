"""What every ``odam`` command shares: exit statuses, the default model, ``--device`` and one-line errors."""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch

EXIT_ERROR = 2
#: The shell's status for a command stopped by Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED = 130
DEFAULT_MODEL = "synthcrowd-fcos"


def device(name: str | None) -> torch.device:
    """The torch device of ``--device name``; by default cuda if available, else cpu.

    Example:
        >>> device("cpu")
        device(type='cpu')
    """
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
