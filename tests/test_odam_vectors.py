"""``ODAM.vectors``: the direct placement on the averaged cells equals resampling to the image then averaging."""

from __future__ import annotations

import pytest
import torch
from tests.conftest import build

import odam
from odam.explainers.odam import ODAM
from odam.heatmaps import vector_grid


def _both(detector: odam.DetectorAdapter, image: torch.Tensor, short_edge: int, layer: str | None = None,
          frozen_norm: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    trace = detector.trace(image, layer, candidates=True, max_candidates=30)
    explainer = ODAM(detector, frozen_norm=frozen_norm, layer=layer)
    direct = explainer.vectors(trace, trace.detections, short_edge)
    resampled = explainer.vectors(trace, trace.detections, short_edge, direct=False)
    return direct, resampled


def _assert_same(direct: torch.Tensor, resampled: torch.Tensor) -> None:
    assert direct.shape == resampled.shape and len(direct) == 30
    peak = resampled.abs().amax(1, keepdim=True)
    assert bool((peak > 0).all())
    assert float(((direct - resampled).abs() / peak).max()) < 1e-5


@pytest.mark.parametrize("name", ["fcos_resnet50_fpn", "retinanet_resnet50_fpn", "fasterrcnn_resnet50_fpn"])
@pytest.mark.parametrize(("shape", "short_edge"), [((90, 130), 50), ((130, 90), 7), ((40, 60), 50)])
def test_direct_vectors_equal_map_then_average(name: str, shape: tuple[int, int], short_edge: int) -> None:
    detector = odam.wrap_detector(build(name))
    image = torch.rand(3, *shape, generator=torch.Generator().manual_seed(1))
    direct, resampled = _both(detector, image, short_edge)
    assert direct.shape[1] == vector_grid(*shape, short_edge)[0] * vector_grid(*shape, short_edge)[1]
    _assert_same(direct, resampled)


def test_direct_vectors_of_whole_maps_and_roi_features() -> None:
    image = torch.rand(3, 90, 130, generator=torch.Generator().manual_seed(2))
    # FCOS with exact GroupNorm: whole-level maps (MapGroup) rather than crops
    _assert_same(*_both(odam.wrap_detector(build("fcos_resnet50_fpn")), image, 50, frozen_norm=False))
    # Faster R-CNN on its RoI-pooled features: placed per box, so it keeps the image-size path
    _assert_same(*_both(odam.wrap_detector(build("fasterrcnn_resnet50_fpn")), image, 50, layer="roi"))


def test_bundled_detector_vectors() -> None:
    detector = odam.load_detector("synthcrowd-fcos-odamtrain")
    image = torch.rand(3, 64, 96, generator=torch.Generator().manual_seed(3))
    direct, resampled = _both(detector, image, 50)
    _assert_same(direct, resampled)
