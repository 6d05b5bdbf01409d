"""The training engine behind ``odam train`` (single process, or DDP under torchrun), and Odam-Train."""

from odam.train.engine import TrainConfig, train
from odam.train.evaluate import evaluate_coco
from odam.train.odam_train import OdamTrainer

__all__ = ["OdamTrainer", "TrainConfig", "evaluate_coco", "train"]
