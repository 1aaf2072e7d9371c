""":func:`check_experiment`: an experiment file (and, for a dry run, its ``dry_run:`` variant) checked before any
work, its datasets, folds, specs, systems and analysis alike."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..._util import KnowacqError
from .checks import STAGE_MODEL_PARAMS, VALIDATORS, _is_beir, _node_at, _Pass
from .report import Report, _Problem


_ONLY_REAL = ' (only the real run reads it, so the dry run goes on)'


def _experiment_pass(p: _Pass, config: Dict[str, Any]) -> None:
    """Specs, data and model names of one experiment configuration (its key-level problems are reported apart)."""
    from ..config import MODEL_TRAINERS, _fold_data, folds_of, runs_on
    from ..expressions import parse_pipeline
    models = config.get('models') if isinstance(config.get('models'), dict) else {}
    trained = {str(n) for n in models}
    dataset = p.dataset(config['dataset'], p.at('dataset')) if config.get('dataset') is not None else None
    try:
        folds = folds_of(config, str(p.path))
    except Exception:  # noqa: BLE001 - reported with the file's own problems
        folds = []
    tests, trains = [], {}
    for i, fold in enumerate(folds if dataset is not None else []):
        at = p.at('folds', i) if config.get('folds') else p.at('topics')
        test = p.guard(fold.test_data, dataset, at=at, local=_is_beir(fold.test_dataset) or fold.test.startswith('beir:'))
        if test is not None:
            p.split(*test, at=at)
            tests.append((fold, test))
        if fold.train is None:
            continue
        train = p.guard(_fold_data, dataset, fold.train, at=at, local=fold.train.startswith('beir:'))
        if train is not None and fold.train not in trains:
            p.split(*train, at=at)
            trains[fold.train] = train
    if models and any(fold.train is None for fold in folds):
        p.add(f'models {sorted(trained)} must be trained, so the experiment needs folds: [{{train: ..., test: ...}}] '
              '(topics: evaluates only)', p.at('models'))
    for name, spec in models.items():
        kind = spec.get('kind', 'cross-encoder') if isinstance(spec, dict) else None
        if kind not in MODEL_TRAINERS or kind not in VALIDATORS:
            continue   # reported with the file's own problems
        p.spec(name, spec, kind, 'models', (name,), f'model {name!r}')
        p.spec_names(spec, kind)
        for train_ds, train_split in trains.values():
            p.spec_refs(spec, train_ds, train_split, 'models', (name,), f'model {name!r}')
    systems = config.get('systems') if isinstance(config.get('systems'), dict) else {}
    for name, spec in systems.items():
        expr = spec.get('pipeline') if isinstance(spec, dict) else spec
        try:
            stages = parse_pipeline(expr)
        except Exception:  # noqa: BLE001 - reported with the file's own problems
            continue
        p.counts['systems'] += 1
        at = p.at('systems', name)
        for fold, (test_ds, split) in tests:
            if not runs_on(spec, fold.folder):
                continue
            for stage in stages:
                if stage.name == 'run':
                    p.run_ref(str(stage.params.get('name', 'bm25')), test_ds, split,
                              f'system {name!r} on {fold.folder}: run(name=...)', at, stage=True)
        if not p.dry:   # a dry run swaps every model a stage names that is not a packaged alias for a tiny one
            for stage in stages:
                for param in STAGE_MODEL_PARAMS:
                    p.model_name(stage.params.get(param), trained)
    if config.get('analysis') is not None:
        _analysis_pass(p, config['analysis'], trained)


def _analysis_pass(p: _Pass, section, trained) -> None:
    from ...datasets.core import DATA_DIR
    from ...datasets.readers import _resolve
    try:
        from ...analysis.pipeline import _check
    except ImportError as e:
        p.add(f'analysis: cannot be checked: {e}; install the missing package', p.at('analysis'), local=True)
        return
    p.guard(_check, section, at=p.at('analysis'))
    if not isinstance(section, dict):
        return
    for pname, entry in (section.get('probe_data') or {}).items() if isinstance(section.get('probe_data'), dict) else ():
        if not isinstance(entry, dict):
            continue
        keys = ('analysis', 'probe_data', pname)
        if p.dry and isinstance(entry.get('dry_run'), dict):   # a dry run reads the entry's offline stand-in
            entry, keys = entry['dry_run'], keys + ('dry_run',)
        if 'dpr_json' in entry:
            p.counts['data references'] += 1
            at = p.at(*keys, 'dpr_json')
            given = entry['dpr_json']
            path = DATA_DIR / 'nq-dpr-sample' / 'haystack-dpr-sample.json.gz' if given == 'nq-dpr-sample' else Path(str(given))
            try:
                _resolve(path)
            except KnowacqError:
                p.add(f'analysis probe data {pname!r}: DPR JSON file {given} does not exist (nor {path.name}.gz); '
                      'check the path', at, local=True)
        elif entry.get('dataset') is not None:
            at = p.at(*keys)
            ds = p.dataset(entry['dataset'], at)
            splits = entry.get('split')
            for split in splits if isinstance(splits, list) else [splits]:
                p.split(ds, split, at, prefix=f'analysis probe data {pname!r}: ')
    train = section.get('train') if isinstance(section.get('train'), dict) else {}
    keys = ('analysis', 'train')
    if p.dry and isinstance(train.get('dry_run'), dict):
        train, keys = train['dry_run'], keys + ('dry_run',)
    target = None
    if train.get('dataset') is not None:
        ds = p.dataset(train['dataset'], p.at(*keys))
        p.split(ds, train.get('split'), p.at(*keys), prefix='analysis train: ')
        target = (ds, train.get('split'))
    for gname, group in (section.get('groups') or {}).items() if isinstance(section.get('groups'), dict) else ():
        if not isinstance(group, dict):
            continue
        if not p.dry:   # a dry run swaps the analysis' models for tiny ones
            p.model_name(group.get('backbone'), trained)
        for cname, entry in (group.get('compare') or {}).items() if isinstance(group.get('compare'), dict) else ():
            label = f'analysis group {gname!r} compare {cname!r}'
            if isinstance(entry, dict) and 'spec' in entry:
                spec = entry['spec']
                if isinstance(spec, dict):
                    spec = {**spec, 'pooling': spec.get('pooling', group.get('pooling'))}
                p.spec(cname, spec, 'bi-encoder', 'analysis', ('groups', gname, 'compare', cname, 'spec'), label)
                p.spec_names(spec, 'bi-encoder')
                ds = p.dataset(entry['dataset'], p.at('analysis', 'groups', gname, 'compare', cname)) \
                    if entry.get('dataset') is not None else (target or (None,))[0]
                split = entry.get('split', (target or (None, None))[1])
                if ds is not None:
                    p.spec_refs(spec, ds, split, 'analysis', ('groups', gname, 'compare', cname, 'spec'), label)
            elif not p.dry:
                names = ([entry] if not isinstance(entry, dict) else
                         [entry.get('base'), entry.get('adapter')] if 'adapter' in entry else
                         [entry.get('query'), entry.get('doc')])
                for name in names:
                    p.model_name(name, trained)


def _safely(p: _Pass, fn, *args, known: bool = False) -> None:
    """Run a pass's checks; a shape that breaks them is a problem of the report when nothing names one yet
    (``known``: another pass did)."""
    try:
        fn(p, *args)
    except Exception as e:  # noqa: BLE001
        if not p.problems and not known:
            p.add(f'the file cannot be checked ({type(e).__name__}: {" ".join(str(e).split())[:200]})')


def _merge(real: _Pass, dry: Optional[_Pass], dry_run: bool) -> Tuple[List[str], List[str]]:
    """Errors and warnings, each once, in the order found. A dry run: the real experiment's unverifiable hub ids and
    the files only the real run reads are warnings; everything the dry run itself reads or loads is an error (it
    checks only the models a dry run does not swap for tiny ones: cross-encoder backbones, teacher models)."""
    errors: Dict[str, None] = {}
    warnings: Dict[str, str] = {}   # text -> the problem it softens (dropped when that problem is an error)
    for prob in real.problems:
        if not dry_run:
            errors[prob.text] = None
        elif prob.warning:
            warnings[prob.warning] = prob.text
        elif prob.local:
            warnings[prob.text + _ONLY_REAL] = prob.text
        else:
            errors[prob.text] = None
    for prob in (dry.problems if dry is not None else []):   # the dry run reads or loads each of these itself
        errors[prob.text] = None
    return list(errors), [w for w, hard in warnings.items() if hard not in errors]


def check_experiment(path, *, dry_run: bool = False, echo: bool = True) -> Report:
    """Check an experiment file (and, for ``dry_run``, its dry-run variant) before any work; print the warnings.

    Returns the :class:`Report` (``report.config`` is the file's mapping) when nothing stops the run.

    Raises:
        PreflightError: listing every problem, one a line (one problem: its own one-line message).
        KnowacqError: when the file cannot be read as a mapping at all (missing, not YAML, empty).
    """
    from ..config import KEYS, apply_dry_run, config_problems, locate_problem, read_config
    started = time.perf_counter()
    path = Path(path)
    config, node, problems = read_config(path)
    real = _Pass(path, node)
    real.problems += [_Problem(str(e)) for e in problems]
    overrides = config.get('dry_run')
    if overrides is not None:
        if not isinstance(overrides, dict):
            real.add(f'dry_run is {overrides!r:.60}; write it as a mapping of the keys a --dry-run replaces, e.g. '
                     '{dataset: msmarco-passage, folds: [{train: dl20, test: dl19}]}', real.at('dry_run'))
        else:
            from ..._util import check_keys
            real.guard(check_keys, overrides, [k for k in KEYS if k != 'dry_run'], 'dry_run: unknown keys',
                       at=real.at('dry_run'))
    real_ok = not real.problems
    if config.get('dataset') is not None and isinstance(config.get('systems'), dict):
        _safely(real, _experiment_pass, config)
    dry = None
    if dry_run and isinstance(overrides, dict) and isinstance(config.get('systems'), dict):
        variant = apply_dry_run(config)
        roots = {k: ('dry_run', k) for k in overrides if k in KEYS}
        dry = _Pass(path, node, roots, dry=True, names=real.names, runs=real.runs)
        if real_ok:   # else the file's own problems are reported already, and the variant mostly repeats them
            dry_node = _node_at(node, 'dry_run')
            dry.problems += [_Problem(str(locate_problem(path, dry_node, e))) for e in config_problems(variant, str(path))]
        if variant.get('dataset') is not None and isinstance(variant.get('systems'), dict):
            _safely(dry, _experiment_pass, variant, known=bool(real.problems))
    elif dry_run and isinstance(config.get('systems'), dict):
        dry = _Pass(path, node, dry=True, names=real.names, runs=real.runs)   # no variant: the dry run reads the file's own data
        if config.get('dataset') is not None:
            _safely(dry, _experiment_pass, config, known=bool(real.problems))
    errors, warnings = _merge(real, dry, dry_run)
    counts = {k: max(real.counts[k], dry.counts[k] if dry else 0) for k in real.counts}
    report = Report(str(path), config, errors, warnings, counts, time.perf_counter() - started)
    if echo:
        report.echo()
    report.raise_errors()
    return report
