""":func:`check_train_file`: a ``knowacq train`` file (dataset, splits, every cross-encoder spec, its runs, teachers
and model names) checked before any training."""
from __future__ import annotations

import time
from pathlib import Path

from ..._util import KnowacqError
from .checks import VALIDATORS, _Pass
from .report import Report


def check_train_file(path, *, dry_run: bool = False, echo: bool = True) -> Report:
    """Check a ``knowacq train`` file (dataset, splits, every cross-encoder spec, its runs, teachers and model names)
    before any training; print the warnings. Raises :class:`PreflightError` listing every problem."""
    from ...datasets.readers import file_error, load_yaml, yaml_line
    started = time.perf_counter()
    path = Path(path)
    if not path.exists():
        raise KnowacqError(f'{path} does not exist; give the path of a training YAML file')
    cfg, node = load_yaml(path, 'training file')
    layout = 'write `dataset:`, `models:` (name -> spec) and `train_split:` or `folds: [{train: ..., test: ...}]`'
    if not isinstance(cfg, dict):
        raise file_error(path, yaml_line(node), 'is empty' if cfg is None else f'is a {type(cfg).__name__}, not a mapping',
                         layout)
    p = _Pass(path, node)
    for key in ('dataset', 'models'):
        if not cfg.get(key):
            p.add(f'needs `{key}:`' + (' (name -> spec)' if key == 'models' else '') + f'; {layout}', p.at(key))
    models = cfg.get('models') or {}
    if not isinstance(models, dict):
        p.add(f'models is {models!r:.60}, not a mapping; {layout}', p.at('models'))
        models = {}
    seed = cfg.get('seed')
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        p.add(f'seed is {seed!r:.40}; write an integer such as 42', p.at('seed'))
    splits = []
    if cfg.get('train_split'):
        splits = [(str(cfg['train_split']), p.at('train_split'))]
    elif not isinstance(cfg.get('folds') or [], list):
        p.add(f'folds is not a list; {layout}', p.at('folds'))
    else:
        for i, f in enumerate(cfg.get('folds') or []):
            if not isinstance(f, dict) or not f.get('train'):
                p.add(f'fold {i + 1} has no `train:` split; write each fold as {{train: dl20, test: dl19}}', p.at('folds', i))
            else:
                splits.append((str(f['train']), p.at('folds', i)))
        if not cfg.get('folds'):
            p.add(f'needs `train_split:` or `folds:`; {layout}', f'{path}:{yaml_line(node)}: ')
    dataset = p.dataset(cfg['dataset'], p.at('dataset')) if cfg.get('dataset') else None
    for split, at in splits:
        p.split(dataset, split, at)
    for name, spec in models.items():
        if not isinstance(spec, dict):
            p.add(f'model {name!r} is {spec!r:.40}, not a mapping; write its spec as a mapping such as '
                  '{backbone: minilm-l6, stages: [...]}', p.at('models', name))
            continue
        kind = spec.get('kind', 'cross-encoder')
        if not isinstance(kind, str) or kind not in VALIDATORS:
            p.add(f'model {name!r} has kind {kind!r:.40}; choose one of {sorted(VALIDATORS)} (default cross-encoder)',
                  p.at('models', name, 'kind'))
            continue
        p.spec(name, spec, kind, 'models', (name,), f'model {name!r}')
        p.spec_names(spec, kind)
        for split, _ in splits:
            if dataset is not None:
                p.spec_refs(spec, dataset, split, 'models', (name,), f'model {name!r}')
    errors = list(dict.fromkeys(prob.text for prob in p.problems if not (dry_run and prob.warning)))
    warnings = list(dict.fromkeys(prob.warning for prob in p.problems if dry_run and prob.warning))
    report = Report(str(path), cfg, errors, warnings, dict(p.counts), time.perf_counter() - started)
    if echo:
        report.echo()
    report.raise_errors()
    return report
