"""Store the bundled detectors' floating tensors as float16, to halve the wheel.

Each ``src/odam/weights/<name>/model.safetensors`` is rewritten with every floating tensor rounded to float16
(round to nearest even, ``Tensor.half()``); integer buffers (batch norm's ``num_batches_tracked``) are kept as
they are. ``odam.load_checkpoint`` builds the model in float32 and ``load_state_dict`` copies the float16
values into it, so the loaded parameters are float32 again, equal to the stored float16 values. Running the
script on files that are already float16 leaves them byte for byte unchanged.

    python benchmarks/half_weights.py                          # every bundled model, in place
    python benchmarks/half_weights.py DIR [DIR ...]             # these checkpoint directories

It prints each file's size before and after and the largest absolute and relative change of any tensor
(relative among entries of magnitude at least 1e-3; smaller entries fall in float16's subnormal range).
``odam evaluate detector`` before and after measures what the rounding does to AP (docs/MODELS.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import safetensors.torch
import torch

from odam._atomic import atomic_path
from odam.models import BUNDLED, bundled_path

TENSORS = "model.safetensors"


def half_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with every floating tensor as float16 (contiguous copies) and every other tensor unchanged.

    Raises:
        ValueError: a floating value outside float16's finite range (it would become inf).
    """
    out = {}
    for key, value in state.items():
        if value.is_floating_point():
            half = value.detach().to(torch.float16).contiguous()
            if not torch.isfinite(half).all() and torch.isfinite(value).all():
                raise ValueError(f"{key} has values beyond float16's range (max |x| {value.abs().max().item():g})")
            out[key] = half
        else:
            out[key] = value.contiguous()
    return out


def convert(directory: Path) -> tuple[int, int, float, float]:
    """Rewrite ``directory/model.safetensors`` in float16; returns (bytes before, bytes after, max abs, max rel)."""
    path = directory / TENSORS
    before = path.stat().st_size
    state = safetensors.torch.load_file(path, device="cpu")
    half = half_state(state)
    worst_abs = worst_rel = 0.0
    for key, value in state.items():
        if value.is_floating_point():
            diff = (half[key].to(value.dtype) - value).abs()
            worst_abs = max(worst_abs, diff.max().item() if diff.numel() else 0.0)
            big = value.abs() >= 1e-3
            if big.any():
                worst_rel = max(worst_rel, (diff[big] / value.abs()[big]).max().item())
    if any(half[k].dtype != state[k].dtype for k in state):
        with atomic_path(path) as tmp:
            safetensors.torch.save_file(half, tmp)
    return before, path.stat().st_size, worst_abs, worst_rel


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directories", nargs="*", type=Path,
                        help="checkpoint directories (default: every bundled model inside the package)")
    args = parser.parse_args(argv)
    directories = args.directories or [bundled_path(name) for name in BUNDLED]
    for directory in directories:
        before, after, worst_abs, worst_rel = convert(directory)
        print(f"{directory.name}: {before / 1e6:.2f} MB -> {after / 1e6:.2f} MB, "
              f"largest change {worst_abs:.2e} absolute, {worst_rel:.2e} relative (|x| >= 1e-3)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
