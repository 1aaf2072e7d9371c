"""Fine-tuning: losses (registry), the shared trainer, training examples from PyTerrier objects, teachers, stages,
the model families (:data:`~.registry.TRAINERS`) and their one cached-training path (:mod:`.cached`).

Submodules are imported lazily, so that importing the training registry (as the experiment files do) loads no torch.
"""
__all__ = ['LOSSES', 'Loss', 'get_loss', 'register_loss']


def __getattr__(name):
    if name in __all__:
        from . import losses
        return getattr(losses, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
