"""The two data types every part of odam exchanges: :class:`Detections` and :class:`Explanation`."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

#: Attribute names a detector adapter can explain, in the order adapters compute them.
#: Edges are signed so that a positive change means a larger box: ``left = -x1``, ``top = -y1``,
#: ``right = x2``, ``bottom = y2`` (image pixels).
TARGETS: tuple[str, ...] = ("score", "left", "top", "right", "bottom")


@dataclass(frozen=True)
class Detections:
    """Detections of one image, in pixels of the image the user passed in.

    Attributes:
        boxes: ``Tensor[N, 4]`` float, ``(x1, y1, x2, y2)``.
        scores: ``Tensor[N]`` float, the confidence the model reports.
        labels: ``Tensor[N]`` int64, class indices as the model numbers them.
        levels: ``Tensor[N]`` int64, the feature level (FPN level index) that produced each detection.
        indices: ``Tensor[N]`` int64, where on that level it came from: the flat anchor/location
            index for one-stage detectors, or the RoI (proposal) index for two-stage detectors.
        source: ``(height, width, checksum)`` of the image they were detected in (the checksum is the sum of its
            pixel values as :func:`odam.load_image` returns them), set by the adapters; explainers refuse
            detections whose source is another image. ``None`` for detections made by hand.

    Example:
        >>> import torch
        >>> d = Detections(torch.tensor([[0.0, 0.0, 4.0, 4.0]]), torch.tensor([0.9]), torch.tensor([1]))
        >>> len(d), d.levels.tolist()
        (1, [-1])
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    levels: Tensor = field(default=None)  # type: ignore[assignment]
    indices: Tensor = field(default=None)  # type: ignore[assignment]
    source: tuple[int, int, float] | None = None

    def __post_init__(self) -> None:
        if self.boxes.ndim != 2 or self.boxes.shape[-1] != 4:
            raise ValueError(f"expected boxes of shape [N, 4], got {tuple(self.boxes.shape)}")
        n = self.boxes.shape[0]
        unknown = torch.full((n,), -1, dtype=torch.int64, device=self.boxes.device)
        if self.levels is None:
            object.__setattr__(self, "levels", unknown)
        if self.indices is None:
            object.__setattr__(self, "indices", unknown.clone())
        for name in ("scores", "labels", "levels", "indices"):
            value = getattr(self, name)
            if value.shape != (n,):
                raise ValueError(f"expected {name} of shape [{n}], got {tuple(value.shape)}")

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def __repr__(self) -> str:
        """One line of counts and ranges, never the tensors.

        Example:
            >>> Detections(torch.tensor([[0.0, 0, 4, 4], [1, 1, 5, 5]]), torch.tensor([0.9, 0.4]),
            ...            torch.tensor([1, 1]))
            Detections(2 boxes, scores 0.400-0.900, labels {1: 2}, cpu)
        """
        n = len(self)
        if n == 0:
            return f"Detections(0 boxes, {self.boxes.device})"
        lo, hi = (float(v) for v in torch.aminmax(self.scores.detach().float()))
        labels, counts = torch.unique(self.labels.detach().cpu(), return_counts=True)
        shown = dict(zip(labels.tolist()[:8], counts.tolist()[:8], strict=True))
        more = ", ..." if len(labels) > 8 else ""
        histogram = "{" + ", ".join(f"{k}: {v}" for k, v in shown.items()) + more + "}"
        return f"Detections({n} boxes, scores {lo:.3f}-{hi:.3f}, labels {histogram}, {self.boxes.device})"

    def __getitem__(self, item: int | slice | Tensor | list[int]) -> Detections:
        if isinstance(item, int):
            n = len(self)
            if not -n <= item < n:
                raise IndexError(f"index {item} out of range for {n} detections")
            item = slice(item % n, item % n + 1)
        return Detections(
            self.boxes[item], self.scores[item], self.labels[item], self.levels[item], self.indices[item], self.source
        )

    @property
    def has_provenance(self) -> bool:
        """Whether every detection records the level and index it came from."""
        return bool((self.levels >= 0).all() and (self.indices >= 0).all())

    def to(self, device: torch.device | str) -> Detections:
        return Detections(*(t.to(device) for t in self._tensors()), self.source)

    def detach(self) -> Detections:
        return Detections(*(t.detach() for t in self._tensors()), self.source)

    def same_image(self, source: tuple[int, int, float]) -> bool:
        """Whether these detections were made on the image whose :attr:`source` is ``source`` (always true for
        detections without a source)."""
        if self.source is None:
            return True
        (h, w, total), (h2, w2, total2) = self.source, source
        return (h, w) == (h2, w2) and abs(total - total2) <= 1e-6 * max(abs(total), abs(total2), 1.0)

    def _tensors(self) -> tuple[Tensor, ...]:
        return (self.boxes, self.scores, self.labels, self.levels, self.indices)


@dataclass(frozen=True)
class Explanation:
    """Heat maps for a set of detections of one image.

    Attributes:
        detections: the explained detections (``N`` of them).
        targets: names of the explained attributes, e.g. ``("score", "left")``.
        maps: ``Tensor[N, T, H, W]`` float32 at the resolution of the input image, unnormalised.
        image: the explained image, ``Tensor[3, H, W]`` in [0, 1], as the explainers loaded it (``None`` for an
            explanation made by hand); what a notebook shows the maps over (:meth:`_repr_html_`).

    Example:
        >>> import torch
        >>> d = Detections(torch.tensor([[0.0, 0.0, 2.0, 2.0]]), torch.tensor([0.9]), torch.tensor([1]))
        >>> e = Explanation(d, ("score", "left"), torch.stack([torch.eye(2), 2 * torch.eye(2)])[None])
        >>> e.combined().shape
        torch.Size([1, 2, 2])
    """

    detections: Detections
    targets: tuple[str, ...]
    maps: Tensor
    image: Tensor | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        n, t = len(self.detections), len(self.targets)
        if self.maps.ndim != 4 or self.maps.shape[:2] != (n, t):
            raise ValueError(f"expected maps of shape [{n}, {t}, H, W], got {tuple(self.maps.shape)}")
        if self.image is not None and (self.image.ndim != 3 or self.image.shape != (3, *self.maps.shape[-2:])):
            raise ValueError(f"expected image of shape [3, {self.maps.shape[-2]}, {self.maps.shape[-1]}] (the maps' "
                             f"size), got {tuple(self.image.shape)}")

    def __len__(self) -> int:
        return len(self.detections)

    def __repr__(self) -> str:
        """One line of shapes and counts, never the tensors.

        Example:
            >>> d = Detections(torch.tensor([[0.0, 0.0, 2.0, 2.0]]), torch.tensor([0.9]), torch.tensor([1]))
            >>> Explanation(d, ("score", "left"), torch.zeros(1, 2, 48, 64))
            Explanation(1 detections x 2 targets (score, left), maps 48x64 float32 on cpu, no image)
        """
        h, w = self.maps.shape[-2:]
        image = "no image" if self.image is None else "with image"
        return (f"Explanation({len(self)} detections x {len(self.targets)} targets ({', '.join(self.targets)}), "
                f"maps {h}x{w} {str(self.maps.dtype).removeprefix('torch.')} on {self.maps.device}, {image})")

    def _repr_html_(self) -> str | None:
        """The explorer page (docs/EXPLORER.md) for this one image, inline in a notebook: an ``<iframe>`` whose
        boxes, tables and maps can be clicked through, as ``odam explain`` writes them. Drawn by the view that
        :func:`set_html_view` installed: :mod:`odam.viz` installs it when imported, which the first use of
        ``odam``'s API does; if nothing has imported it yet, it is imported here, by name, since this module may
        not depend on what lies above it."""
        if _html_view is None:
            importlib.import_module("odam.viz")
        return None if _html_view is None else _html_view(self)

    def map(self, target: str) -> Tensor:
        """``Tensor[N, H, W]``: the maps of one target."""
        if target not in self.targets:
            raise ValueError(f"unknown target {target!r}; this explanation has {self.targets}")
        return self.maps[:, self.targets.index(target)]

    def combined(self) -> Tensor:
        """``Tensor[N, H, W]``: element-wise max over the per-target maps, each min-max normalised to [0, 1]."""
        return normalize_maps(self.maps).amax(dim=1)


_html_view: Callable[[Explanation], str] | None = None


def set_html_view(view: Callable[[Explanation], str] | None) -> None:
    """Install ``view`` as what :meth:`Explanation._repr_html_` shows (``None``: plain text only).

    The drawing lives above this module (:mod:`odam.viz.explorer`, which calls this when it is imported), so this
    module imports nothing of odam.
    """
    global _html_view
    _html_view = view


def check_targets(targets: str | Sequence[str], supported: Sequence[str] = TARGETS) -> tuple[str, ...]:
    """``targets`` as a tuple of attribute names, after checking each is in ``supported``, none repeats and
    there is at least one.

    Example:
        >>> check_targets("score"), check_targets(["left", "top"])
        (('score',), ('left', 'top'))
        >>> check_targets(["width"])
        Traceback (most recent call last):
        ...
        ValueError: unknown target 'width'; choose from score, left, top, right, bottom
    """
    if isinstance(targets, str):
        targets = (targets,)
    names = tuple(targets)
    if not names:
        raise ValueError("targets must name at least one attribute")
    bad = [n for n in names if n not in supported]
    if bad:
        raise ValueError(f"unknown target {bad[0]!r}; choose from {', '.join(supported)}")
    repeated = [n for i, n in enumerate(names) if n in names[:i]]
    if repeated:
        raise ValueError(f"repeated target {repeated[0]!r} in {','.join(names)}")
    return names


def normalize_maps(maps: Tensor) -> Tensor:
    """Min-max normalise each ``[H, W]`` map of ``maps`` (``Tensor[..., H, W]``) to [0, 1]; constant maps become 0.

    Example:
        >>> normalize_maps(torch.tensor([[1.0, 3.0]])).tolist()
        [[0.0, 1.0]]
    """
    flat = maps.flatten(-2)
    lo = flat.amin(-1, keepdim=True)
    span = flat.amax(-1, keepdim=True) - lo
    out = torch.where(span > 0, (flat - lo) / span.clamp_min(torch.finfo(maps.dtype).tiny), torch.zeros_like(flat))
    return out.view_as(maps)
