"""Looking datasets up by name: :data:`DATASETS` (the embedded collections, a :class:`~pyterrier_knowacq._registry.Registry`)
and :func:`get_dataset` (names, ``beir:``/``irds:`` strings, ``{beir: ..., name: ...}`` and ``{synthetic: ...}`` mappings).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict

from .._registry import Registry
from .._util import KnowacqError
from .base import Dataset
from .beir import BeirDataset
from .embedded import DATA_DIR, MsMarcoPassage, MsMarcoTrain
from .irds import IrdsDataset

__all__ = ['DATASETS', 'get_dataset', 'dataset_spec_label']

#: what a dataset spec may be besides an embedded name (the hint of an unknown name)
_OTHER_SPECS = ('or beir:/path/to/folder, irds:<id>, or a mapping {beir: path/to/folder, name: my-collection} '
                '(or {synthetic: {passages: N, queries: Q}})')

#: the embedded collections by name: each entry makes the dataset
DATASETS: Registry[Callable[[], Dataset]] = Registry('dataset', hint=_OTHER_SPECS)
DATASETS.register('msmarco-passage', MsMarcoPassage)
DATASETS.register('msmarco-passage-train', MsMarcoTrain)
for _name in ('scifact', 'nfcorpus', 'vaswani', 'cranfield', 'nq-dpr-sample'):
    DATASETS.register(_name, lambda n=_name: BeirDataset(DATA_DIR / n, n))
del _name

_CACHE: Dict[tuple, Dataset] = {}

_SPEC_HELP = (f'choose one of {sorted(DATASETS)}, beir:/path/to/folder, irds:<id>, '
              'or a mapping {beir: path/to/folder, name: my-collection} (or {synthetic: {passages: N, queries: Q}})')


def dataset_spec_label(spec) -> str:
    """A short label of a dataset spec, for result folder names: ``scifact``, ``trec-covid`` (of ``beir:/x/trec-covid``),
    ``cisi`` (of ``{beir: ..., name: cisi}``), the whole ``a/b/c`` of ``irds:a/b/c``."""
    if isinstance(spec, Dataset):
        return spec.name
    if isinstance(spec, dict):
        if spec.get('name'):
            return str(spec['name'])
        if isinstance(spec.get('synthetic'), dict):
            return get_dataset(spec).name
        spec = f"beir:{spec['beir']}" if spec.get('beir') else f"irds:{spec.get('irds', '')}"
    spec = str(spec)
    if spec.startswith('irds:'):
        return spec[len('irds:'):]
    return spec.split(':')[-1].rstrip('/').split('/')[-1]


def get_dataset(name) -> Dataset:
    """Look up a dataset: an embedded name, ``beir:/path``, ``irds:<id>``, or a mapping ``{beir: path, name: label}``
    (``{irds: id}``) as written in YAML; a :class:`Dataset` passes through.

    A BEIR folder without a ``name`` gets the id ``<folder name>-<hash of its resolved path and content>``
    (:attr:`Dataset.id`), so two collections in folders of the same name never share results or caches.
    """
    if isinstance(name, Dataset):
        return name
    if isinstance(getattr(name, 'dataset', None), Dataset):   # pt.get_dataset('knowacq:...') wraps one of ours
        return name.dataset
    label = None
    if isinstance(name, dict) and 'synthetic' in name:   # {synthetic: {passages, queries, seed, ...}}: generated
        if set(name) != {'synthetic'}:
            raise KnowacqError(f'dataset mapping {name!r:.80} must hold only synthetic: {{passages: ..., queries: ..., '
                               'seed: ...}} (its name goes inside it)')
        from .synthetic import synthetic_dataset
        dataset = synthetic_dataset(name['synthetic'])
        key = ('synthetic', dataset.fingerprint(), dataset.name)
        return _CACHE.setdefault(key, dataset)
    if isinstance(name, dict):
        unknown = sorted(set(name) - {'beir', 'irds', 'name'}, key=str)
        kinds = [k for k in ('beir', 'irds') if name.get(k)]
        if unknown or len(kinds) != 1:
            raise KnowacqError(f'dataset mapping {name!r} must have exactly one of beir: or irds: (and optionally name:); '
                               'e.g. {beir: path/to/folder, name: cisi}')
        label = name.get('name')
        name = f'{kinds[0]}:{name[kinds[0]]}'
    if not isinstance(name, str) or not name:
        raise KnowacqError(f'dataset must be a name, got {name!r}; {_SPEC_HELP}')
    if name.startswith('beir:'):
        key = ('beir', str(Path(os.path.expanduser(name[5:])).resolve()), label)
    else:
        key = (name, label)
    if key not in _CACHE:
        if name.startswith('beir:'):
            _CACHE[key] = BeirDataset(os.path.expanduser(name[5:]), label)
        elif name.startswith('irds:'):
            if label is not None:
                raise KnowacqError(f'an irds: dataset is named by its id; drop name: {label!r}')
            _CACHE[key] = IrdsDataset(name[5:])
        else:   # an unknown name: "unknown dataset 'x' (did you mean ...?); choose one of [...]; or beir:..."
            _CACHE[key] = DATASETS.get_entry(name)()
    return _CACHE[key]
