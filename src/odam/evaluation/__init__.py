"""Evaluation over datasets: the explanation metrics runner and its reports.

Every runner (:mod:`~odam.evaluation.explanations`, :mod:`~odam.evaluation.nms`,
:mod:`~odam.evaluation.correlation`) resumes from its journals (:mod:`~odam.evaluation.journal`) and runs as one
process or as several under ``torchrun``, each rank on every ``world``-th image (docs/EVALUATION.md).
"""

from odam.evaluation.explanations import METHODS, EvaluationConfig, run
from odam.evaluation.report import summarize

__all__ = ["METHODS", "EvaluationConfig", "run", "summarize"]
