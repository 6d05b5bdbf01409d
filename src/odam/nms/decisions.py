"""Which suppression replaces a detector's NMS (:class:`Suppression`), and what it decided (:class:`Decisions`).

:func:`decide` runs one of :data:`METHODS` on a detector's candidates within each class, as
:class:`odam.nms.Suppressed` does, and records for every candidate whether it was kept and, if not, which kept
candidate removed it, with the IoU, the evidence (heat-map correlation, embedding distance or Soft-NMS decay) and
the rule that fired. The kept set is the one the method's own function in :mod:`odam.nms` returns; the record
names, for a suppressed candidate, the first kept candidate (by rank) for which the method's duplicate rule holds,
which in a greedy pass is the one that removed it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor
from torchvision.ops import box_iou

from odam.heatmaps import SHORT_EDGE, unit_vectors
from odam.nms import ops
from odam.structures import Detections

#: What can replace a detector's own NMS (``odam.load_detector(..., nms=...)``, ``odam explain --nms``).
METHODS = ("nms", "soft-nms", "feature-nms", "odam-nms")
_ALIASES = {"odam": "odam-nms", "soft": "soft-nms", "feature": "feature-nms", "featurenms": "feature-nms",
            "softnms": "soft-nms", "odamnms": "odam-nms"}

#: The rules a decision can name: ``"kept"``, ``"capped"`` (kept by the method but beyond the detector's
#: ``max_detections``), and per method the rule that removed a candidate.
RULES = {
    "nms": ("iou>T_iou",),
    "odam-nms": ("iou>=T_iou and corr>T_l", "iou<T_iou and corr>T_h"),
    "feature-nms": ("iou>T_h", "T_l<=iou<=T_h and dist<=D"),
    "soft-nms": ("score<T_score", "decayed score<T_score"),
}


@dataclass(frozen=True)
class Suppression:
    """Which NMS replaces a detector's own, with its settings.

    The detector's candidates before NMS (those above its score threshold, the ``max_candidates`` best) go
    through ``method`` within each class, and the first ``max_detections`` survivors (the detector's own cap)
    are returned.

    Attributes:
        method: one of :data:`METHODS`.
        iou_threshold: ``T_iou`` of ``"nms"`` and ``"odam-nms"``; Soft-NMS's linear threshold.
        low, high: ``T^l``/``T^h`` of ``"odam-nms"`` (default 0.2/0.8) or the IoU range of ``"feature-nms"``
            (default 0.1/0.9); ``None`` picks the method's default.
        distance: ``"feature-nms"``'s embedding distance.
        sigma, soft_method, soft_threshold: ``"soft-nms"``'s settings.
        short_edge: ``"odam-nms"``'s heat-map resolution.
        centred: ``"odam-nms"`` compares maps by Pearson correlation (``True``) or plain cosine.
        frozen_norm: ``"odam-nms"`` computes the maps with ``ODAM(frozen_norm=...)``: ``True`` (the default)
            holds FCOS's GroupNorm statistics fixed, which is many times faster on a CPU and approximates the
            gradients; ``False`` is exact.
        max_candidates: at most this many candidates (by score) enter the suppression.

    Example:
        >>> s = Suppression.parse("odam")
        >>> s.method, s.iou_threshold, s.low, s.high, s.frozen_norm, s.max_candidates
        ('odam-nms', 0.5, 0.2, 0.8, True, 1000)
        >>> Suppression.parse("feature-nms").low, Suppression.parse("soft", sigma=0.3).sigma
        (0.1, 0.3)
    """

    method: str = "odam-nms"
    iou_threshold: float = 0.5
    low: float | None = None
    high: float | None = None
    distance: float = 1.0
    sigma: float = 0.5
    soft_method: str = "gaussian"
    soft_threshold: float = 0.05
    short_edge: int = SHORT_EDGE
    centred: bool = True
    frozen_norm: bool = True
    max_candidates: int = 1000

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown NMS method {self.method!r}; choose from {', '.join(METHODS)}")
        if self.low is None or self.high is None:
            low, high = (0.1, 0.9) if self.method == "feature-nms" else (0.2, 0.8)
            object.__setattr__(self, "low", low if self.low is None else self.low)
            object.__setattr__(self, "high", high if self.high is None else self.high)
        if self.soft_method not in ops.SOFT_METHODS:
            raise ValueError(f"soft_method must be one of {ops.SOFT_METHODS}, got {self.soft_method!r}")
        for name in ("short_edge", "max_candidates"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")

    @classmethod
    def parse(cls, nms: str | Suppression, **settings: float) -> Suppression:
        """A :class:`Suppression` from a method name (aliases ``"odam"``, ``"soft"``, ``"feature"``) or one."""
        if isinstance(nms, Suppression):
            return replace(nms, **settings) if settings else nms
        if not isinstance(nms, str):
            raise ValueError(f"nms must be a method name or a Suppression, got {type(nms).__name__}")
        key = nms.strip().lower().replace("_", "-")
        return cls(method=_ALIASES.get(key.replace("-", ""), key), **settings)


@dataclass(frozen=True)
class Decisions:
    """What one suppression decided about each of ``N`` candidates (indexed as ``candidates``).

    Attributes:
        method: the :class:`Suppression` that decided.
        candidates: the candidates, as the detector scored them.
        keep: ``Tensor[K]`` int64, the kept candidates by descending final score: what ``detect`` returns.
        scores: ``Tensor[N]``, each candidate's final score: Soft-NMS's decayed one (for a dropped candidate, the
            decayed score that fell below the threshold); for the other methods the score.
        suppressor: ``Tensor[N]`` int64, the kept candidate that removed each one; -1 for a kept candidate and
            for one that never entered (Soft-NMS's score below its threshold).
        iou: ``Tensor[N]``, the IoU with the suppressor (NaN without one).
        evidence: ``Tensor[N]``, what besides IoU decided: the heat-map correlation with the suppressor
            (``"odam-nms"``), the embedding distance to it (``"feature-nms"``), the factor by which the score
            was decayed (``"soft-nms"``, for every candidate), NaN otherwise.
        rules: for each candidate, ``"kept"``, ``"capped"`` or the rule of :data:`RULES` that removed it.

    Example:
        >>> boxes = torch.tensor([[0.0, 0, 10, 10], [1, 0, 11, 10], [20, 0, 30, 10]])
        >>> cands = Detections(boxes, torch.tensor([0.9, 0.8, 0.7]), torch.zeros(3, dtype=torch.int64))
        >>> d = decide(cands, Suppression("nms"))
        >>> d.keep.tolist(), d.suppressor.tolist(), d.rules
        ([0, 2], [-1, 0, -1], ('kept', 'iou>T_iou', 'kept'))
        >>> round(d.iou[1].item(), 3)
        0.818
    """

    method: Suppression
    candidates: Detections
    keep: Tensor
    scores: Tensor
    suppressor: Tensor
    iou: Tensor
    evidence: Tensor
    rules: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.candidates)

    @property
    def kept(self) -> Tensor:
        """``Tensor[N]`` bool: whether each candidate is in :attr:`keep`."""
        mask = torch.zeros(len(self), dtype=torch.bool, device=self.keep.device)
        mask[self.keep] = True
        return mask

    def detections(self) -> Detections:
        """The kept candidates with their final scores, by descending score: what the detector returns."""
        c = self.candidates
        return Detections(c.boxes[self.keep], self.scores[self.keep], c.labels[self.keep], c.levels[self.keep],
                          c.indices[self.keep], c.source)

    def __repr__(self) -> str:
        removed = sum(r not in ("kept", "capped") for r in self.rules)
        return (f"Decisions(method={self.method.method!r}, candidates={len(self)}, kept={len(self.keep)}, "
                f"suppressed={removed}, capped={self.rules.count('capped')})")


def decide(candidates: Detections, config: Suppression | str, *, vectors: Tensor | None = None,
           embeddings: Tensor | None = None, max_detections: int | None = None) -> Decisions:
    """Suppress ``candidates`` with ``config`` within each class, and record why.

    Args:
        candidates: the detector's candidates before NMS.
        config: the method and its settings (or a method name).
        vectors: ``Tensor[N, D]``, each candidate's heat-map vector (``"odam-nms"``; see
            :meth:`odam.ODAM.vectors`).
        embeddings: ``Tensor[N, E]`` (``"feature-nms"``).
        max_detections: keep at most this many (the detector's own cap); the rest are ``"capped"``.

    Returns:
        The :class:`Decisions`.
    """
    config = Suppression.parse(config)
    n = len(candidates)
    device = candidates.boxes.device
    if n and config.method == "odam-nms" and (vectors is None or vectors.shape[:1] != (n,)):
        raise ValueError(f"odam-nms needs vectors of shape [{n}, D], got "
                         f"{None if vectors is None else tuple(vectors.shape)}")
    if n and config.method == "feature-nms" and (embeddings is None or embeddings.shape[:1] != (n,)):
        raise ValueError(f"feature-nms needs embeddings of shape [{n}, E], got "
                         f"{None if embeddings is None else tuple(embeddings.shape)}")
    scores = candidates.scores.clone()
    suppressor = torch.full((n,), -1, dtype=torch.int64, device=device)
    iou = torch.full((n,), float("nan"), device=device)
    evidence = torch.full((n,), float("nan"), device=device)
    rules = ["kept"] * n
    kept = [torch.zeros(0, dtype=torch.int64, device=device)]
    for label in torch.unique(candidates.labels):
        idx = torch.where(candidates.labels == label)[0]
        if config.method == "soft-nms":
            keep = _soft(candidates, idx, config, scores, suppressor, iou, evidence, rules)
        else:
            keep = _greedy(candidates, idx, config, vectors, embeddings, suppressor, iou, evidence, rules)
        kept.append(idx[keep])
    keep = torch.cat(kept)
    keep = keep[torch.sort(scores[keep], descending=True, stable=True).indices]
    if max_detections is not None:
        for i in keep[max_detections:].tolist():
            rules[i] = "capped"
        keep = keep[:max_detections]
    return Decisions(config, candidates, keep, scores, suppressor, iou, evidence, tuple(rules))


def _greedy(c: Detections, idx: Tensor, config: Suppression, vectors: Tensor | None, embeddings: Tensor | None,
            suppressor: Tensor, iou_out: Tensor, evidence_out: Tensor, rules: list[str]) -> Tensor:
    """One class of a greedy method: the kept positions within ``idx``; fills the record of the others."""
    boxes, s = c.boxes[idx], c.scores[idx]
    if config.method == "nms":
        keep = ops.nms(boxes, s, config.iou_threshold)
    elif config.method == "odam-nms":
        keep = ops.odam_nms(boxes, s, vectors[idx], config.iou_threshold, config.low, config.high,
                            centred=config.centred)
    else:
        keep = ops.feature_nms(boxes, s, embeddings[idx], config.low, config.high, config.distance)
    removed = torch.ones(len(idx), dtype=torch.bool, device=idx.device)
    removed[keep] = False
    gone = torch.where(removed)[0]
    if len(gone) == 0:
        return keep
    rank = torch.empty_like(idx)
    rank[ops.visit_order(s)] = torch.arange(len(idx), device=idx.device)
    b = boxes.float()
    iou = box_iou(b[gone], b[keep])  # [S, K]
    if config.method == "nms":
        evidence = torch.full_like(iou, float("nan"))
        fired = [iou > config.iou_threshold]
    elif config.method == "odam-nms":
        unit = unit_vectors(vectors.to(b.device), config.centred, rows=idx)
        evidence = unit[gone] @ unit[keep].T
        fired = [(iou >= config.iou_threshold) & (evidence > config.low),
                 (iou < config.iou_threshold) & (evidence > config.high)]
    else:
        e = embeddings[idx].to(b.device).float()
        evidence = torch.cdist(e[gone], e[keep])
        fired = [iou > config.high, (iou >= config.low) & (iou <= config.high) & (evidence <= config.distance)]
    which = torch.stack(fired)  # [R, S, K]: rule r holds between suppressed s and kept k
    earlier = rank[keep][None] < rank[gone][:, None]  # a kept candidate removes only later ones
    duplicate = which.any(0) & earlier
    # the first kept candidate by rank for which a rule holds: the one that removed it in the greedy pass
    first = torch.where(duplicate, rank[keep][None].expand_as(duplicate), len(idx)).argmin(1)
    rows = torch.arange(len(gone), device=gone.device)
    found = duplicate[rows, first]  # False is not reached: the method's own rule removed it
    i, r, k = idx[gone][found], rows[found], first[found]  # all at once: per-element tensor writes cost ~1000 x
    suppressor[i] = idx[keep[k]]
    iou_out[i] = iou[r, k].to(iou_out.dtype)
    evidence_out[i] = evidence[r, k].to(evidence_out.dtype)
    names = RULES[config.method]
    rule = which[:, rows, first].to(torch.int64).argmax(0)  # the first rule that holds
    for c, f, j in zip(idx[gone].tolist(), found.tolist(), rule.tolist(), strict=True):
        rules[c] = names[j] if f else "unattributed"
    return keep


def _soft(c: Detections, idx: Tensor, config: Suppression, scores: Tensor, suppressor: Tensor, iou_out: Tensor,
          evidence_out: Tensor, rules: list[str]) -> Tensor:
    """One class of Soft-NMS: the kept positions within ``idx``; decays ``scores`` and fills the record."""
    boxes, s = c.boxes[idx], c.scores[idx]
    keep, decayed, dropped_by, final = ops.soft_nms_record(boxes, s, config.sigma, config.soft_threshold,
                                                           config.soft_method, config.iou_threshold)
    scores[idx] = final.to(scores.dtype)
    scores[idx[keep]] = decayed
    evidence_out[idx] = (final.float() / s.float().clamp_min(1e-30)).to(evidence_out.dtype)
    b = boxes.float()
    for g in range(len(idx)):
        i = int(idx[g])
        if bool((keep == g).any()):
            continue
        by = int(dropped_by[g])
        if by < 0:
            rules[i] = RULES["soft-nms"][0]  # below the threshold before any decay
            continue
        suppressor[i] = idx[by]
        iou_out[i] = box_iou(b[g:g + 1], b[by:by + 1])[0, 0]
        rules[i] = RULES["soft-nms"][1]
    return keep
