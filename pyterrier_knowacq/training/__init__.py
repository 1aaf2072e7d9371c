"""Fine-tuning: losses (registry), the shared trainer, training examples from PyTerrier objects, teachers, stages.

Submodules are imported lazily so that ``import pyterrier_knowacq.training.losses`` stays light.
"""
from .losses import LOSSES, Loss, get_loss, register_loss  # noqa: F401

__all__ = ['LOSSES', 'Loss', 'get_loss', 'register_loss']
