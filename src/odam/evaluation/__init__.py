"""Evaluation over datasets: the explanation metrics runner and its reports."""

from odam.evaluation.explanations import METHODS, EvaluationConfig, run
from odam.evaluation.report import summarize

__all__ = ["METHODS", "EvaluationConfig", "run", "summarize"]
