"""How explanations look in a notebook: one-line reprs, and the explorer of the image inline."""

from __future__ import annotations

import html
import re

import pytest
import torch

import odam
from odam.data.photos import SCENE
from odam.structures import Detections, Explanation
from odam.viz import read_explorer


def test_reprs_are_one_line_of_shapes_and_counts() -> None:
    boxes = torch.rand(300, 4) * 100
    boxes[:, 2:] += boxes[:, :2]
    dets = Detections(boxes, torch.linspace(0.1, 0.9, 300), torch.arange(300) % 3)
    assert repr(dets) == "Detections(300 boxes, scores 0.100-0.900, labels {0: 100, 1: 100, 2: 100}, cpu)"
    assert repr(dets[:0]) == "Detections(0 boxes, cpu)"
    many = Detections(boxes[:20], torch.rand(20), torch.arange(20))
    assert repr(many).endswith("labels {0: 1, 1: 1, 2: 1, 3: 1, 4: 1, 5: 1, 6: 1, 7: 1, ...}, cpu)")
    e = Explanation(dets, ("score", "left"), torch.zeros(300, 2, 48, 64))
    text = repr(e)
    assert "\n" not in text and "tensor" not in text and len(text) < 200
    assert text == "Explanation(300 detections x 2 targets (score, left), maps 48x64 float32 on cpu, no image)"


def test_an_explanation_shows_the_explorer_of_its_image() -> None:
    detector = odam.load_detector("synthcrowd-fcos")
    explanation = odam.ODAM(detector).explain(SCENE, ("score", "top"), detections=detector.detect(SCENE)[:2])
    assert explanation.image is not None and explanation.image.shape == (3, 320, 320)
    assert "with image" in repr(explanation)
    frame = explanation._repr_html_()
    match = re.fullmatch(r'<iframe srcdoc="(.*)" title="odam explanation" style="[^"]*"></iframe>', frame, re.S)
    assert match, frame[:200]
    [page] = read_explorer(html.unescape(match.group(1)))
    assert (page["width"], page["height"]) == (320, 320) and page["targets"] == ["score", "top"]
    torch.testing.assert_close(torch.tensor([d["box"] for d in page["detections"]]), explanation.detections.boxes,
                               rtol=0, atol=1e-4)
    for k in range(2):
        for j, target in enumerate(explanation.targets):
            assert page["maps"]["explanation"][k][target]["hi"] == float(explanation.maps[k, j].max())


def test_the_image_must_match_the_maps() -> None:
    d = Detections(torch.tensor([[0.0, 0.0, 2.0, 2.0]]), torch.tensor([0.9]), torch.tensor([1]))
    message = "expected image of shape [3, 8, 8] (the maps' size), got (3, 8, 9)"
    with pytest.raises(ValueError, match=re.escape(message)):
        Explanation(d, ("score",), torch.zeros(1, 1, 8, 8), torch.zeros(3, 8, 9))
