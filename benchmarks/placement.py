"""Where each family's network centres the cells of its explained maps, against where odam places them.

For a cell ``(j, j)`` of a stride-``s`` map, the effective receptive field ``|d feature[:, j, j] / d input|``
(``odam.testing.receptive_field_centres``: random +-1 combinations of the channels, two input images) gives a
centroid and a peak on the model input. The table prints their offset from ``j * s`` in pixels (y, x), averaged
over one period of cells (an FPN level of stride ``s`` below a stride-32 top level repeats every ``32 / s``
cells), next to the offset of odam's old convention, ``(s - 1) / 2``, and of the placement the adapters now use.
The last column is the distance of the measured centroid from the placement, in cells.

    OMP_NUM_THREADS=1 python benchmarks/placement.py            # every family, a few minutes on one core
    OMP_NUM_THREADS=1 python benchmarks/placement.py torchvision  # one family (torchvision, tiny, retinaface,
                                                                  # detr, yolo)
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.cases, for the tiny DETR

from odam.testing import module_output, receptive_field_centres  # noqa: E402

Measure = tuple[str, int, Callable[[Tensor], Tensor], float]  # level, stride, input -> map, placed centre


def torchvision_levels(name: str, model: nn.Module, size: int) -> list[Measure]:
    from odam.detectors.torchvision import fpn_centres

    x = torch.zeros(1, 3, size, size)
    with torch.no_grad():
        feats = model.backbone(x)
    centres = fpn_centres(model.backbone.fpn, {k: tuple(f.shape[-2:]) for k, f in feats.items()}, (size, size))
    out = [(f"{name} {k}", size // f.shape[-1], lambda z, k=k: model.backbone(z)[k], centres[k][0])
           for k, f in feats.items()]
    body = model.backbone.body
    inner = body.layer3 if hasattr(body, "layer3") else body.c4
    out.append((f"{name} body stride-16 stage", 16, module_output(inner, body), 0.0))
    return out


def families(which: str) -> list[tuple[str, int, list[Measure]]]:
    from torchvision.models.detection import fasterrcnn_resnet50_fpn, fcos_resnet50_fpn, retinanet_resnet50_fpn

    found: list[tuple[str, int, list[Measure]]] = []
    if which in ("all", "torchvision"):
        for build in (fcos_resnet50_fpn, retinanet_resnet50_fpn, fasterrcnn_resnet50_fpn):
            torch.manual_seed(0)
            model = build(weights=None, weights_backbone=None, num_classes=3).eval()
            found.append((f"{build.__name__} (random)", 256, torchvision_levels(build.__name__.split("_")[0], model,
                                                                                512)))
    if which in ("all", "tiny"):
        import odam

        for name in ("synthcrowd-fcos", "synthcrowd-fasterrcnn"):
            model = odam.load_detector(name).model
            found.append((f"{name} (trained)", 512, torchvision_levels(name, model, 512)))
    if which in ("all", "retinaface"):
        from odam.detectors.retinaface import STEPS, body_centres, retinaface

        model = retinaface()
        centres = body_centres()
        levels = [(f"retinaface fpn {k}", s, lambda z, k=k: model.body(z)[k], centres[k]) for k, s in enumerate(STEPS)]
        levels += [(f"retinaface ssh {k}", s, lambda z, k=k: model.ssh[k](model.body(z)[k]), centres[k])
                   for k, s in enumerate(STEPS)]
        found.append(("retinaface (pretrained)", 320, levels))
    if which in ("all", "detr"):
        from tests.cases.detr import tiny_detr

        model = tiny_detr()

        def backbone(z: Tensor) -> Tensor:
            return model.model.backbone.model(z).feature_maps[-1]

        def encoder(z: Tensor) -> Tensor:
            out = model.model(pixel_values=z, pixel_mask=torch.ones_like(z[:, 0], dtype=torch.long))
            h, w = -(-z.shape[-2] // 32), -(-z.shape[-1] // 32)
            return out.encoder_last_hidden_state.transpose(1, 2).reshape(1, -1, h, w)

        found.append(("detr tiny (random)", 256, [("detr backbone", 32, backbone, 0.0),
                                                   ("detr encoder", 32, encoder, 0.0)]))
    if which in ("all", "yolo"):
        from odam.detectors.yolo import from_yaml, neck_centres

        for yaml in ("yolov8n.yaml", "yolo11n.yaml"):
            torch.manual_seed(0)
            model = from_yaml(yaml, nc=3).eval()
            head = model.model[-1]
            centres = neck_centres(model)
            levels = []
            for k, f in enumerate(head.f):
                s = int(model.stride[k])
                levels.append((f"{yaml} neck P{k + 3} (model.{f})", s, module_output(model.model[f], model),
                               centres[k]))
            found.append((f"{yaml} (random)", 320, levels))
    return found


def main(which: str = "all") -> None:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print("| family | map | stride | old c | new c | centroid (y, x) | peak (y, x) | |centroid - new| (cells) |")
    print("|---|---|---|---|---|---|---|---|")
    for family, size, levels in families(which):
        for level, stride, features, placed in levels:
            n = size // stride
            period = max(2, 32 // stride)
            mid = max(0, n // 2 - period // 2)
            cells = torch.tensor([(mid + d, mid + d) for d in range(period) if mid + d < n])
            peaks, centroids = [], []
            for seed in (1, 2):
                x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed))
                p, c = receptive_field_centres(features, x, cells, stride, draws=2, seed=seed)
                peaks.append(p - cells * stride)
                centroids.append(c - cells * stride)
            centroid = torch.cat(centroids).mean(0)
            peak = torch.cat(peaks).median(0).values
            off = float((centroid - placed).abs().max()) / stride
            print(f"| {family} | {level} | {stride} | {(stride - 1) / 2:.1f} | {placed:.1f} | "
                  f"({centroid[0]:.1f}, {centroid[1]:.1f}) | ({peak[0]:.1f}, {peak[1]:.1f}) | {off:.2f} |", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
