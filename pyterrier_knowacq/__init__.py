"""pyterrier_knowacq: how neural rankers acquire retrieval knowledge, as PyTerrier transformers and experiments."""
__version__ = '0.1.0'

from ._util import KnowacqError
from .datasets.core import get_dataset

__all__ = ['KnowacqError', 'get_dataset', 'BiEncoder', 'CrossEncoder', 'PisaBM25', 'run_experiment', '__version__']


def __getattr__(name):
    # heavy modules (torch, transformers) load only when used
    if name == 'BiEncoder':
        from .models.biencoder import BiEncoder
        return BiEncoder
    if name == 'CrossEncoder':
        from .models.crossencoder import CrossEncoder
        return CrossEncoder
    if name == 'PisaBM25':
        from .models.first_stage import PisaBM25
        return PisaBM25
    if name == 'run_experiment':
        from .experiments.runner import run_experiment
        return run_experiment
    raise AttributeError(name)
