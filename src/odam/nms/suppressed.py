"""A detector whose own NMS is replaced: :class:`Suppressed`, above the adapters.

The adapter only knows its model: :meth:`~odam.DetectorAdapter.trace` with ``candidates=True`` gives the pass
before the model's NMS. :class:`Suppressed` takes those candidates, asks ODAM for their heat-map vectors (Odam-NMS)
or the model for their embeddings (FeatureNMS), and lets :func:`odam.nms.decide` choose, keeping its record.
"""

from __future__ import annotations

from torch import Tensor, nn

from odam.detectors import DetectorAdapter, wrap_detector
from odam.detectors.base import Candidates, Trace
from odam.nms.decisions import Decisions, Suppression, decide
from odam.structures import Detections


class Suppressed(DetectorAdapter):
    """``detector`` with its NMS replaced by ``nms`` (a method name from :data:`odam.nms.METHODS`, ``"odam"`` for
    Odam-NMS, or a :class:`~odam.nms.Suppression`), within each class, keeping at most the detector's
    ``max_detections``.

    It is an adapter itself: :meth:`detect`, every explainer and every metric take it, and they see the kept
    detections. :meth:`decisions` says why each candidate was kept or suppressed. Odam-NMS compares the score
    maps of the detector's default layer, whatever ``layer`` an explainer asks for.

    Args:
        detector: a model :func:`odam.wrap_detector` accepts, or an adapter. A :class:`Suppressed` has its
            suppression replaced, not stacked.
        nms: the method, or a :class:`~odam.nms.Suppression`.
        **settings: :class:`~odam.nms.Suppression` fields (``iou_threshold``, ``low``, ``high``...).

    Example:
        >>> import torch, odam
        >>> from odam.nms import Suppressed
        >>> detector = Suppressed(odam.load_detector("synthcrowd-fcos"), "odam", max_candidates=20)
        >>> image = torch.rand(3, 64, 96)
        >>> decisions = detector.decisions(image)
        >>> torch.equal(decisions.detections().boxes, detector.detect(image).boxes)
        True
        >>> len(decisions), decisions.rules.count("kept") == len(decisions.keep)
        (20, True)
    """

    def __init__(self, detector: nn.Module | DetectorAdapter, nms: str | Suppression = "odam-nms",
                 **settings: float) -> None:
        inner = wrap_detector(detector)
        if isinstance(inner, Suppressed):
            inner = inner.detector
        super().__init__(inner.model, inner.categories)
        #: the adapter whose NMS is replaced
        self.detector = inner
        #: the replacement and its settings
        self.nms = Suppression.parse(nms, **settings)
        self.targets = inner.targets
        self.named_layers = inner.named_layers
        self.default_layer = inner.default_layer

    def __repr__(self) -> str:
        return f"Suppressed({type(self.detector).__name__}, {self.nms.method!r})"

    @property
    def score_threshold(self) -> float:
        return self.detector.score_threshold

    @score_threshold.setter
    def score_threshold(self, value: float) -> None:
        self.detector.score_threshold = value

    @property
    def max_detections(self) -> int | None:
        return self.detector.max_detections

    @max_detections.setter
    def max_detections(self, value: int) -> None:
        self.detector.max_detections = value  # AttributeError where the adapter's cap lives in the model

    def check_layer(self, layer: str | nn.Module | None) -> None:
        self.detector.check_layer(layer)

    def decisions(self, image: object) -> Decisions:
        """Detect in ``image`` and return the record of every candidate's fate (:class:`~odam.nms.Decisions`)."""
        return self.suppress(self.trace(image, candidates=True, max_candidates=self.nms.max_candidates))

    def suppress(self, trace: Trace, vectors: Tensor | None = None) -> Decisions:
        """The decisions on a trace made with ``candidates=True`` (of this detector, on its default layer).

        Args:
            trace: the candidate pass.
            vectors: for Odam-NMS, the candidates' heat-map vectors if already computed (what
                ``ODAM(self.detector, frozen_norm=self.nms.frozen_norm).vectors(trace, trace.detections,
                self.nms.short_edge)`` returns; ``odam explain --nms`` also shows them); ``None`` computes them.
        """
        cands = trace.detections
        embeddings = None
        if vectors is not None and (self.nms.method != "odam-nms" or vectors.shape[0] != len(cands)):
            raise ValueError(f"vectors are for odam-nms, one row per candidate ({len(cands)}); got "
                             f"{tuple(vectors.shape)} for {self.nms.method}")
        if vectors is None and len(cands) and self.nms.method == "odam-nms":
            from odam.explainers.odam import ODAM

            vectors = ODAM(self.detector, frozen_norm=self.nms.frozen_norm).vectors(trace, cands, self.nms.short_edge)
        elif len(cands) and self.nms.method == "feature-nms":
            embeddings = self.detector.embeddings(trace, cands)
        return decide(cands, self.nms, vectors=vectors, embeddings=embeddings, max_detections=self.max_detections)

    def run(self, image: Tensor, layer: str | nn.Module | None, candidates: int | None) -> Trace:
        trace = self.detector.run(image, layer, candidates or self.nms.max_candidates)
        if candidates is not None:
            return trace
        # Odam-NMS compares the default maps (what the method is defined on): the candidates, and so the kept
        # ones, are the same in a trace of another layer.
        basis = trace
        if layer is not None and layer != self.detector.default_layer and self.nms.method == "odam-nms":
            basis = self.detector.run(image, None, self.nms.max_candidates)
        decided = self.suppress(basis)
        kept = trace.detections
        trace.detections = Detections(kept.boxes[decided.keep], decided.scores[decided.keep],
                                      kept.labels[decided.keep], kept.levels[decided.keep],
                                      kept.indices[decided.keep], kept.source)
        return trace

    def attributes(self, trace: Trace, detections: Detections, frozen_norm: bool = False
                   ) -> tuple[Tensor, list, Tensor]:
        return self.detector.attributes(trace, detections, frozen_norm)

    def score_candidates(self, images: Tensor, max_candidates: int) -> Candidates:
        return self.detector.score_candidates(images, max_candidates)

    def embed(self, trace: Trace, detections: Detections) -> Tensor:
        return self.detector.embed(trace, detections)
