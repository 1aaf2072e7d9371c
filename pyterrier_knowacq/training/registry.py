"""The model families knowacq trains, by a model spec's ``kind:``: one :class:`~pyterrier_knowacq._registry.Registry`.

Each entry names, lazily (a module path and attribute names, so this registry imports no torch), the family's training
entry point, its spec validator and its :class:`~.cached.TrainingFamily` (what :func:`~.cached.train_cached` needs):

==================  ================================  ==========================  ========================
kind                entry point                       spec validator              trained models in
==================  ================================  ==========================  ========================
``cross-encoder``   ``training.stages.train_model``   ``validate_spec``           ``models/trained``
``bi-encoder``      ``training.dense.train_biencoder``  ``validate_dense_spec``   ``models/trained-dense``
``colbert``         ``training.colbert.train_colbert``  ``validate_colbert_spec`` ``models/trained-colbert``
==================  ================================  ==========================  ========================

Every entry point is ``fn(spec, *, dataset, train_split, output_dir=None, seed=42[, dry_run]) -> folder`` and trains
through :func:`~.cached.train_cached`. :func:`train` dispatches on the kind (``knowacq train``, the experiment runner,
each DDP rank); ``experiments.config.MODEL_TRAINERS`` is this registry. An entry unpacks as the older
``(module, function)`` pair.

Example::

    from pyterrier_knowacq.training.registry import TRAINERS, train
    folder = train('bi-encoder', {'backbone': 'tiny-bert', 'steps': 2}, dataset='msmarco-passage', train_split='dl20')
    TRAINERS.get_entry('colbrt')   # KnowacqError: unknown model kind 'colbrt' (did you mean 'colbert'?); ...
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from .._registry import Registry

__all__ = ['TRAINERS', 'TrainerEntry', 'DEFAULT_KIND', 'train', 'validate']

#: the kind of a model spec without ``kind:``
DEFAULT_KIND = 'cross-encoder'


@dataclass(frozen=True)
class TrainerEntry:
    """Where a family's training lives: ``module`` and, in it, the entry point ``function``, the spec ``validator``
    and the :class:`~.cached.TrainingFamily` object ``family``; resolved when used (a monkeypatched entry point is
    the one called)."""
    module: str
    function: str
    validator: str
    family: str = 'FAMILY'

    def __iter__(self):
        """``module, function = TRAINERS[kind]`` (the ``(module, function)`` pair this table used to hold)."""
        return iter((self.module, self.function))

    def _attr(self, name: str):
        return getattr(importlib.import_module(self.module), name)

    def load(self) -> Callable[..., Path]:
        """The entry point ``fn(spec, *, dataset, train_split, output_dir, seed[, dry_run]) -> folder``."""
        return self._attr(self.function)

    def load_validator(self) -> Callable[[Dict[str, Any]], Dict[str, Any]]:
        return self._attr(self.validator)

    def load_family(self):
        return self._attr(self.family)


TRAINERS: Registry[TrainerEntry] = Registry('model kind', hint=f'set `kind:` to one of them (default {DEFAULT_KIND})')
TRAINERS.register('cross-encoder', TrainerEntry('pyterrier_knowacq.training.stages', 'train_model', 'validate_spec'))
TRAINERS.register('bi-encoder', TrainerEntry('pyterrier_knowacq.training.dense', 'train_biencoder', 'validate_dense_spec'))
TRAINERS.register('colbert', TrainerEntry('pyterrier_knowacq.training.colbert', 'train_colbert', 'validate_colbert_spec'))


def validate(kind: str, spec: Dict[str, Any]) -> Dict[str, Any]:
    """``spec`` checked by its kind's own validator (an unknown kind: one error with the closest kind)."""
    return TRAINERS.get_entry(kind).load_validator()(spec)


def train(kind: str, spec: Dict[str, Any], *, dataset, train_split, output_dir=None, seed: int = 42,
          dry_run: bool = False, verbose: Optional[bool] = None) -> Path:
    """Train (or fetch from the cache) the ``kind`` model ``spec`` (without ``kind:``) through its family's entry
    point; returns the trained folder. ``dry_run`` and ``verbose`` reach the entry points that take them (the
    cross-encoder's has no dry run: an experiment's dry run shrinks its spec instead)."""
    fn = TRAINERS.get_entry(kind).load()
    kwargs: Dict[str, Any] = dict(dataset=dataset, train_split=train_split, output_dir=output_dir, seed=seed)
    params = inspect.signature(fn).parameters
    if 'dry_run' in params:
        kwargs['dry_run'] = dry_run
    if verbose is not None and 'verbose' in params:
        kwargs['verbose'] = verbose
    return fn(spec, **kwargs)
