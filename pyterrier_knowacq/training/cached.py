"""One cached-training path for every model family: where a trained model goes in the cache, what its
``training.json`` records, and how an interrupted training resumes.

A trained model is cached under a content key (:func:`~.cache_keys.training_key`: the spec, the training data's
content, the weights it starts from, the seed) in ``<cache>/models/<family cache>/<key>``. :func:`train_cached`

1. checks the spec with the family (:meth:`TrainingFamily.prepare`: its validator, the dry run's substitutions);
2. for each *stage* of the spec (a cross-encoder spec has several, each starting from the previous stage's weights;
   the other families one): reuses ``<key>`` when it holds a model, else trains into ``<key>.work`` (the trainer
   resumes from ``<key>.work/checkpoint`` after an interruption), copies the kept model and its ``training.json``
   into ``<key>`` in one atomic move, and removes ``<key>.work``;
3. writes ``<output_dir>/training.json``: ``{model, <the model's training.json>, stages: [{stage, key, cached,
   ...}]}``.

A family (:class:`TrainingFamily`, one object per model kind, named in :data:`~.registry.TRAINERS`) says only what is
its own: how its spec is checked, what its cache key holds, and how one stage trains.

Example::

    folder = train_cached('bi-encoder', {'backbone': 'tiny-bert', 'steps': 2}, dataset='msmarco-passage',
                          train_split='dl20', seed=42)
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Dict, FrozenSet, List, Optional, Tuple

from .._util import atomic_directory, atomic_write_json, cache_dir

__all__ = ['TrainingFamily', 'train_cached', 'stage_key']


class TrainingFamily:
    """What one model family tells :func:`train_cached` (subclassed by each family module as ``FAMILY``)."""
    #: the model kind (a :data:`~.registry.TRAINERS` name)
    kind: str = ''
    #: the cache folder of its trained models: ``<cache>/models/<cache>``
    cache: str = 'trained'
    #: part of every cache key: raise it when a change of the trainer changes the weights a spec gives
    version: int = 1
    #: spec keys that do not change the trained weights (left out of the cache key)
    neutral_keys: FrozenSet[str] = frozenset()
    #: ``training.json`` of each stage says which stage it is (multi-stage families)
    staged: bool = False

    def prepare(self, spec: Dict[str, Any], dataset, train_split, dry_run: bool = False) -> Tuple[Dict[str, Any], Any]:
        """``(checked spec, training split)``: the family's validator, the dry run's substitutions."""
        raise NotImplementedError

    def stage_count(self, spec: Dict[str, Any]) -> int:
        return 1

    def key_spec(self, spec: Dict[str, Any], stage: int) -> Dict[str, Any]:
        """What the cache key of the model after ``stage`` stages hashes (with the data, weights and seed)."""
        return {k: v for k, v in spec.items() if k not in self.neutral_keys}

    def setup(self, spec: Dict[str, Any], dataset, train_split, seed: int) -> Dict[str, Any]:
        """What every stage shares (e.g. the validation queries carved from the training split), computed once."""
        return {}

    def train_stage(self, spec: Dict[str, Any], stage: int, init: Optional[Path], dataset, train_split, seed: int,
                    work: Path, shared: Dict[str, Any], verbose: bool):
        """Train stage ``stage`` (1-based) from ``init`` (the previous stage's folder, or ``None``) into ``work``;
        returns ``(TrainResult, info)``: ``info`` joins the stage's ``training.json``."""
        raise NotImplementedError


def stage_key(family: TrainingFamily, spec: Dict[str, Any], stage: int, dataset, train_split, seed: int) -> str:
    """The cache key of ``spec``'s model after ``stage`` stages (:func:`~.cache_keys.training_key`)."""
    from .cache_keys import training_key
    return training_key(family.key_spec(spec, stage), dataset, train_split, seed, family.version)


def train_cached(kind: str, spec: Dict[str, Any], *, dataset, train_split, output_dir=None, seed: int = 42,
                 dry_run: bool = False, verbose: bool = False) -> Path:
    """Train (or fetch from the cache) the ``kind`` model ``spec`` on ``dataset``'s ``train_split``; returns the folder
    of the final model. ``output_dir``, when given, receives ``training.json`` (every stage, cached or trained).
    Interrupted training resumes from the stage's checkpoint on the next call."""
    from ..datasets.core import get_dataset
    from .registry import TRAINERS
    family: TrainingFamily = TRAINERS.get_entry(kind).load_family()
    dataset = get_dataset(dataset)
    spec, train_split = family.prepare(spec, dataset, train_split, dry_run)
    shared = family.setup(spec, dataset, train_split, seed)
    root = cache_dir('models', family.cache)
    init = spec.get('init')
    prev: Optional[Path] = Path(init) if init else None
    log: List[Dict[str, Any]] = []
    for k in range(1, family.stage_count(spec) + 1):
        key = stage_key(family, spec, k, dataset, train_split, seed)
        final = root / key
        if (final / 'knowacq.json').exists():
            prev = final
            log.append({'stage': k, 'key': key, 'cached': True})
            continue
        work = root / f'{key}.work'
        started = time.time()
        result, info = family.train_stage(spec, k, prev, dataset, train_split, seed, work, shared, verbose)
        record = {'spec': spec, **({'stage': k} if family.staged else {}), 'dataset': dataset.id, 'split': train_split,
                  'seed': seed, 'steps': result.steps, 'best_metric': result.best_metric,
                  'selected': result.model_dir.name, **info, 'history': result.history,
                  'wall_time_s': round(time.time() - started, 1)}
        with atomic_directory(final, overwrite=True) as tmp:
            shutil.copytree(result.model_dir, tmp, dirs_exist_ok=True)
            atomic_write_json(tmp / 'training.json', record)
        shutil.rmtree(work, ignore_errors=True)
        log.append({'stage': k, 'key': key, 'cached': False, 'best_metric': result.best_metric,
                    'selected': result.model_dir.name, **{f: info[f] for f in ('validation', 'data') if f in info},
                    'history': result.history})
        prev = final
    if output_dir is not None:
        path = prev / 'training.json'
        info = json.loads(path.read_text()) if path.exists() else {}
        atomic_write_json(Path(output_dir) / 'training.json', {'model': str(prev), **info, 'stages': log})
    return prev
