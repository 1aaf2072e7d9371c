"""``knowacq train FILE``: the models of a training file, each trained by its kind's trainer.

A training file holds ``dataset``, ``seed``, ``models: {name: spec}`` and ``train_split:`` or ``folds:``. Each model
spec is a ``models:`` entry as an experiment file writes it: ``kind:`` (``cross-encoder`` when left out,
``bi-encoder``, ``colbert``) picks the trainer in :data:`~.registry.TRAINERS`, and the spec is checked by that kind's
validator before anything trains. Every problem is one ``<file>:<line>: <problem>; <fix>`` error.

Example (``train.yaml``)::

    dataset: msmarco-passage
    train_split: dl20
    models:
      ce: {backbone: minilm-l6, stages: [{loss: lce, steps: 200}]}
      dense: {kind: bi-encoder, backbone: minilm-l6, steps: 100}

    folders = train_from_config('train.yaml')      # {'ce': <cache>/models/trained/..., 'dense': ...}
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, Optional

from .._util import KnowacqError
from .registry import DEFAULT_KIND, TRAINERS, train, validate

__all__ = ['train_from_config']


def train_from_config(path, *, seed: Optional[int] = None) -> Dict[str, Path]:
    """``knowacq train FILE``: train every entry of ``models:`` on ``train_split`` (or on each fold's train split),
    each by its ``kind:`` (cross-encoder by default, bi-encoder, colbert) through :data:`~.registry.TRAINERS`.

    The file holds ``dataset``, ``seed``, ``models: {name: spec}`` and either ``train_split:`` or ``folds:``.
    Returns ``{name or name@split: model folder}``. Every problem in the file (YAML syntax, a missing key, a bad
    model spec, an unknown dataset or split) is one ``<file>:<line>: <problem>; <fix>`` error, raised before any
    training starts.
    """
    from ..datasets.core import get_dataset
    from ..datasets.readers import file_error, load_yaml, locate_error, yaml_line
    path = Path(path)
    if not path.exists():
        raise KnowacqError(f'{path} does not exist; give the path of a training YAML file')
    cfg, node = load_yaml(path, 'training file')
    layout = 'write `dataset:`, `models:` (name -> spec) and `train_split:` or `folds: [{train: ..., test: ...}]`'
    if not isinstance(cfg, dict):
        raise file_error(path, yaml_line(node), 'is empty' if cfg is None else f'is a {type(cfg).__name__}, not a mapping', layout)
    for key in ('dataset', 'models'):
        if not cfg.get(key):
            raise file_error(path, yaml_line(node, key), f'needs `{key}:`' + (' (name -> spec)' if key == 'models' else ''), layout)
    if not isinstance(cfg['models'], dict):
        raise file_error(path, yaml_line(node, 'models'), f'models is {cfg["models"]!r:.60}, not a mapping', layout)
    if seed is None:
        seed = cfg.get('seed', 42)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise file_error(path, yaml_line(node, 'seed'), f'seed is {seed!r:.40}', 'write an integer such as 42')
    seed = int(seed)
    # the splits, each with the line it is named on
    if cfg.get('train_split'):
        splits = [(str(cfg['train_split']), yaml_line(node, 'train_split'))]
    else:
        folds = cfg.get('folds') or []
        if not isinstance(folds, list):
            raise file_error(path, yaml_line(node, 'folds'), 'folds is not a list', layout)
        splits = []
        for i, f in enumerate(folds):
            if not isinstance(f, dict) or not f.get('train'):
                raise file_error(path, yaml_line(node, 'folds', i), f'fold {i + 1} has no `train:` split',
                                 'write each fold as {train: dl20, test: dl19}')
            splits.append((str(f['train']), yaml_line(node, 'folds', i)))
    if not splits:
        raise file_error(path, yaml_line(node), 'needs `train_split:` or `folds:`', layout)
    try:
        dataset = get_dataset(cfg['dataset'])
    except KnowacqError as e:
        raise file_error(path, yaml_line(node, 'dataset'), str(e)) from None
    for split, line in splits:
        try:
            dataset._check_split(split)
        except KnowacqError as e:
            raise file_error(path, line, str(e)) from None
    specs = {}
    for name, spec in cfg['models'].items():
        if not isinstance(spec, dict):
            raise file_error(path, yaml_line(node, 'models', name), f'model {name!r} is {spec!r:.40}, not a mapping',
                             'write its spec as a mapping such as {backbone: minilm-l6, stages: [...]}')
        spec = dict(spec)
        kind = spec.pop('kind', DEFAULT_KIND)
        if not isinstance(kind, str) or kind not in TRAINERS:
            raise file_error(path, yaml_line(node, 'models', name, 'kind'), f'model {name!r} has kind {kind!r:.40}',
                             f'choose one of {sorted(TRAINERS)}{TRAINERS.suggestion(str(kind))} (default {DEFAULT_KIND})')
        try:
            validate(kind, copy.deepcopy(spec))
        except KnowacqError as e:
            other = _kind_of(spec, kind)
            if other is not None:   # e.g. `kind: colbert` on a cross-encoder's stages: the kind is what is wrong
                raise file_error(path, yaml_line(node, 'models', name, 'kind'),
                                 f'model {name!r} has kind {kind!r} but its spec is a {other} spec ({e})',
                                 f'write `kind: {other}`' + (' (or no kind)' if other == DEFAULT_KIND else '') +
                                 f', or a {kind} spec as in the models: of a `knowacq run` experiment') from None
            scopes = [(r'\bstage (\d+)', lambda m, name=name: ('models', name, 'stages', int(m[1]) - 1)),
                      (r'', ('models', name))]
            raise file_error(path, locate_error(str(e), node, scopes), f'model {name!r}: {e}') from None
        specs[name] = (kind, spec)
    out = {}
    for split, _ in splits:
        for name, (kind, spec) in specs.items():
            out[f'{name}@{split}' if len(splits) > 1 else name] = train(kind, spec, dataset=dataset, train_split=split,
                                                                        seed=seed, verbose=True)
    return out


def _kind_of(spec: Dict[str, Any], kind: str) -> Optional[str]:
    """The other kind whose validator accepts ``spec`` (written for another family than ``kind``), or ``None``."""
    for other in TRAINERS:
        if other != kind:
            try:
                validate(other, copy.deepcopy(spec))
                return other
            except Exception:  # noqa: BLE001 - not that kind either
                continue
    return None
