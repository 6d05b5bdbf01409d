"""Conformance case for Hugging Face DETR: a tiny random-weight ``DetrForObjectDetection``, built offline."""

from __future__ import annotations

import torch
from tests.cases import Case
from torch import Tensor, nn

from odam.detectors.base import DetectorAdapter

#: The tiny model's preprocessing and threshold; the case image gives 5 detections of its 8 queries.
SHORTEST_EDGE, LONGEST_EDGE, THRESHOLD = 128, 160, 0.45


def tiny_detr(num_queries: int = 8, num_labels: int = 3) -> nn.Module:
    """A seeded DETR with a 4-stage basic-block ResNet (stride 32), one encoder and one decoder layer.

    The initialisation is widened (``init_std=0.5``) so that queries differ from each other and scores depend on
    the image, and the box head's last layer is scaled down so that boxes lie inside the image instead of
    saturating the sigmoid.
    """
    from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig

    backbone = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1], layer_type="basic",
                            out_features=["stage4"])
    config = DetrConfig(backbone_config=backbone, d_model=32, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=32,
                        decoder_ffn_dim=32, encoder_attention_heads=2, decoder_attention_heads=2,
                        num_queries=num_queries, num_labels=num_labels, init_std=0.5)
    torch.manual_seed(0)
    model = DetrForObjectDetection(config).eval()
    with torch.no_grad():
        model.bbox_predictor.layers[-1].weight.mul_(0.1)
    return model


def wrap(model: nn.Module, **settings: object) -> DetectorAdapter:
    from odam.detectors.detr import DetrAdapter

    kw = {"threshold": THRESHOLD, "shortest_edge": SHORTEST_EDGE, "longest_edge": LONGEST_EDGE} | settings
    return DetrAdapter(model, **kw)


def native(model: nn.Module, image: Tensor, threshold: float = THRESHOLD, **size: int) -> tuple[Tensor, Tensor, Tensor]:
    """``DetrImageProcessor`` + the model + ``post_process_object_detection``, on the float image (hence
    ``do_rescale=False``)."""
    from transformers import DetrImageProcessor

    size = size or {"shortest_edge": SHORTEST_EDGE, "longest_edge": LONGEST_EDGE}
    processor = DetrImageProcessor(size=size, do_rescale=False)
    inputs = processor(images=image, return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)
    result = processor.post_process_object_detection(out, threshold=threshold,
                                                      target_sizes=[tuple(image.shape[-2:])])[0]
    return result["boxes"], result["scores"], result["labels"]


def image() -> Tensor:
    return torch.rand(3, 96, 120, generator=torch.Generator().manual_seed(1))


CASES = [
    Case("detr-resnet", tiny_detr, native, image, probe=lambda m: m.model.backbone.model.encoder.stages[0],
         wrap=wrap),
]
