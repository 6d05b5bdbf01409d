"""Explainers: one interface, one verb (``explain``)."""

from odam.explainers.drise import DRISE
from odam.explainers.gradcam import GradCAM, GradCAMPlusPlus
from odam.explainers.odam import ODAM, gaussian_smooth

__all__ = ["DRISE", "ODAM", "GradCAM", "GradCAMPlusPlus", "gaussian_smooth"]
