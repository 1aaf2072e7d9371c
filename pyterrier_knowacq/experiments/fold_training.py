"""The models of an experiment (``models:``), trained on a fold's training split under a seed, and the summary of
each training that meta.json records (``training``).

Example::

    folders = _train_models(config, fold, dataset, seed=42, dry_run=False)   # {'C': '<cache>/trained/...'}
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Dict, List, Optional

from .._resources import stage as _stage
from .._util import KnowacqError, cache_dir
from .config import MODEL_TRAINERS, Fold, _fold_data, _slug

__all__: List[str] = []


def _train_models(config, fold: Fold, dataset, seed, dry_run, info: Optional[dict] = None,
                  per_seed: bool = False) -> Dict[str, str]:
    """``{model name: trained folder}`` of a fold's training split under ``seed``; ``per_seed`` (an experiment with
    ``seeds:``): each seed keeps its own pointer folder and resource stage (the models are cached by seed anyway)."""
    import importlib
    from ..training.launch import pop_processes
    trained = {}
    for name, spec in (config.get('models') or {}).items():
        spec = dict(spec or {})
        kind = spec.pop('kind', 'cross-encoder')
        spec, processes = pop_processes(spec)   # processes: N trains in N DDP ranks (training/launch.py)
        module, fn_name = MODEL_TRAINERS[kind]
        try:
            fn = getattr(importlib.import_module(module), fn_name)
        except (ImportError, AttributeError) as e:
            raise KnowacqError(f'model {name!r} needs {module}.{fn_name}, which is not available ({e})') from e
        train_ds, train_split = _fold_data(dataset, fold.train)
        if train_split is None and fold.train is None:
            raise KnowacqError(f'model {name!r} must be trained, so the experiment needs folds: [{{train: ..., test: ...}}]')
        # (a pointer folder: the model itself is cached under a key of the data's and weights' content)
        out = cache_dir('trained') / _slug(f'{config["name"]}-{train_ds.id}-{fold.train}-{name}'
                                           + (f'-seed{seed}' if per_seed else ''))
        of_seed = f' (seed {seed})' if per_seed else ''
        kwargs = dict(dataset=train_ds, train_split=train_split, output_dir=out, seed=seed)
        if 'dry_run' in inspect.signature(fn).parameters:
            kwargs['dry_run'] = dry_run
        print(f'[knowacq] training {name!r} on {fold.train}{of_seed} ...', flush=True)
        with _stage(f'train: {fold.train}/{name}{of_seed}', **({'processes': processes} if processes > 1 else {})):
            if processes > 1:
                from ..training.launch import train_in_processes
                folder = train_in_processes(kind, spec, dataset=config['dataset'] if train_ds is dataset else fold.train,
                                            train_split=train_split, output_dir=out, seed=seed, dry_run=dry_run,
                                            processes=processes)
            else:
                folder = fn(spec, **kwargs)
        trained[name] = str(folder)
        if info is not None:
            info[name] = _training_summary(out, folder, processes)
    return trained


def _training_summary(out: Path, folder, processes: int) -> dict:
    """meta.json's ``training`` entry of a model: its folder, the teacher coverage of each distillation stage, and, for
    a model trained in several processes, what each rank trained (``launch.json``)."""
    import json

    def read(path):
        try:
            return json.loads(Path(path).read_text(encoding='utf-8'))
        except (OSError, ValueError):
            return {}
    summary = {'folder': str(folder)}
    log = read(Path(out) / 'training.json')
    coverage = []
    for entry in log.get('stages') or []:   # cross-encoders: one entry per stage (a cached stage: its own folder)
        data = entry.get('data') or read(Path(folder).parent / str(entry.get('key')) / 'training.json').get('data') or {}
        if data.get('teacher_coverage'):
            tc = data['teacher_coverage']
            coverage.append({'stage': entry.get('stage'), **{k: tc.get(k) for k in ('covered', 'total', 'coverage', 'lists')}})
    if coverage:
        summary['teacher_coverage'] = coverage
    if processes > 1:
        launch = read(Path(out) / 'launch.json')
        summary['processes'] = processes
        summary['ranks'] = [{'rank': r.get('rank'), 'world_size': r.get('world_size'), 'folder': r.get('folder'),
                             'runs': [{k: run.get(k) for k in ('steps', 'batches_per_epoch', 'first_batch', 'seconds')}
                                      | {'first_loss': (run.get('losses') or [None])[0],
                                         'last_loss': (run.get('losses') or [None])[-1]} for run in r.get('runs') or []]}
                            for r in launch.get('ranks') or []]
    return summary
