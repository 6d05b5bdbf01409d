"""Real photographs with faces that ship inside installed packages, for trying face detectors offline.

odam does not redistribute them: each is read from the package that ships it, and a missing package raises an
``ImportError`` naming it.

=================  ============================================  ==========================================
name               file                                          package
=================  ============================================  ==========================================
``astronaut``      ``skimage/data/astronaut.png``                scikit-image
``camera``         ``skimage/data/camera.png`` (grey, as RGB)    scikit-image
``grace_hopper``   ``matplotlib/mpl-data/sample_data/...jpg``    matplotlib
``t1``             ``insightface/data/images/t1.jpg`` (6 people) insightface (``pip install --no-deps``)
``collage``        astronaut, camera and grace_hopper side by side, each scaled to 256 pixels high
=================  ============================================  ==========================================

Beside them, :data:`SCENE` is a SynthCrowd crowd scene that ships inside odam itself (``odam demo`` explains it;
``odam explain photo:crowd`` names it).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from odam._image import load_image

_FILES = {
    "astronaut": ("skimage", "scikit-image", "data/astronaut.png"),
    "camera": ("skimage", "scikit-image", "data/camera.png"),
    "grace_hopper": ("matplotlib", "matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
    "t1": ("insightface", "insightface", "data/images/t1.jpg"),
}
PHOTOS: tuple[str, ...] = (*_FILES, "collage")
#: A SynthCrowd scene (seed 3, image 0, never used for training), 320 x 320, shipped with odam.
SCENE = Path(__file__).parents[1] / "assets" / "synthcrowd-scene.png"
COLLAGE = ("astronaut", "camera", "grace_hopper")
COLLAGE_HEIGHT = 256


def photo_path(name: str) -> Path:
    """Where the installed package keeps photo ``name`` (found without importing the package).

    Raises:
        ValueError: for an unknown name (or ``"collage"``, which is made, not stored).
        ImportError: naming the package to install when it is missing.
    """
    if name not in _FILES:
        raise ValueError(f"unknown photo {name!r}; choose from {', '.join(_FILES)}")
    module, package, relative = _FILES[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"photo {name!r} ships with {package}: pip install {package}")
    path = Path(spec.submodule_search_locations[0]) / relative
    if not path.is_file():
        raise ImportError(f"photo {name!r} is missing from the installed {package} ({path})")
    return path


def load_photo(name: str) -> Tensor:
    """Photo ``name`` (see :data:`PHOTOS`) as an RGB ``Tensor[3, H, W]`` in [0, 1].

    Example:
        >>> load_photo("astronaut").shape
        torch.Size([3, 512, 512])
        >>> load_photo("collage").shape
        torch.Size([3, 256, 730])
    """
    if name != "collage":
        return load_image(photo_path(name))
    parts = []
    for part in COLLAGE:
        x = load_photo(part)
        width = round(x.shape[-1] * COLLAGE_HEIGHT / x.shape[-2])
        parts.append(F.interpolate(x[None], size=(COLLAGE_HEIGHT, width), mode="bilinear", align_corners=False,
                                   antialias=True)[0].clamp(0, 1))
    return torch.cat(parts, -1)
