"""The training engine behind ``odam train`` (single process, or DDP under torchrun)."""

from odam.train.engine import TrainConfig, train
from odam.train.evaluate import evaluate_coco

__all__ = ["TrainConfig", "evaluate_coco", "train"]
