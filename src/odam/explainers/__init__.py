"""Explainers: one interface, one verb (``explain``)."""

from odam.explainers.odam import ODAM, gaussian_smooth

__all__ = ["ODAM", "gaussian_smooth"]
