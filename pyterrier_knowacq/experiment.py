"""Declarative experiments: a YAML file -> trained models -> pipelines -> ``pt.Experiment`` -> a results folder.

Example file::

    name: quickstart
    dataset: msmarco-passage
    topics: [dl19, dl20]
    systems:
      BM25: run(name=bm25)
      BM25 >> MiniLM: run(name=bm25) >> text >> biencoder(model=minilm-l6)
    baseline: BM25
    measures: [nDCG@10, RR(rel=2)@10, AP(rel=2), R(rel=2)@100]

``run_experiment('quickstart.yaml')`` writes ``results/quickstart/`` (format: DESIGN.md), atomically.
"""
from __future__ import annotations

import difflib
import inspect
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional

import pandas as pd
import yaml

from ._util import KnowacqError, atomic_directory, atomic_write_json, atomic_write_text, cache_dir
from .datasets import Dataset, get_dataset
from .pipeline_expr import parse_pipeline
from .stages import StageContext, build_pipeline, check_stage, register_stage  # noqa: F401  (re-exported)

__all__ = ['load_config', 'run_experiment', 'register_stage', 'DEFAULT_MEASURES', 'FORMAT']

FORMAT = 'pyterrier_knowacq.results/1'
DEFAULT_MEASURES = ['nDCG@10', 'RR(rel=2)@10', 'AP(rel=2)', 'R(rel=2)@100']
KEYS = {
    'name': 'experiment name (also the results folder name)', 'study': 'spine | multistage | knowacq | ...',
    'description': 'free text', 'dataset': 'dataset name, beir:/path or irds:<id>', 'topics': 'test split(s)',
    'folds': 'list of {train: split, test: split}', 'models': 'models to train per fold', 'systems': 'name -> pipeline',
    'measures': 'ir_measures names', 'baseline': 'system name', 'test': 't | wilcoxon', 'correction': 'holm | bonferroni | fdr_bh | none',
    'correction_alpha': 'float', 'seed': 'int', 'rerank_depth': 'cut first stages to this depth', 'analysis': 'analysis section',
    'dry_run': 'overrides applied with --dry-run', 'tags': 'tags for every system', 'output': 'results folder',
}
MODEL_TRAINERS = {
    'cross-encoder': ('pyterrier_knowacq.training.stages', 'train_model'),
    'bi-encoder': ('pyterrier_knowacq.training.dense', 'train_biencoder'),
    'colbert': ('pyterrier_knowacq.colbert_train', 'train_colbert'),
}


def _slug(text: str) -> str:
    return re.sub(r'[^A-Za-z0-9._-]+', '-', str(text)).strip('-').lower() or 'system'


def load_config(path) -> Dict[str, Any]:
    """Read and check an experiment file (``yaml.safe_load``); every problem is one :class:`KnowacqError`."""
    path = Path(path)
    if not path.exists():
        raise KnowacqError(f'experiment file {path} does not exist; see experiments/ for examples')
    try:
        config = yaml.safe_load(path.read_text(encoding='utf-8'))
    except UnicodeDecodeError as e:
        raise KnowacqError(f'{path} is not UTF-8 text ({e}); save it as UTF-8') from e
    except yaml.YAMLError as e:
        mark = getattr(e, 'problem_mark', None)
        where = f' at line {mark.line + 1}, column {mark.column + 1}' if mark else ''
        raise KnowacqError(f'{path} is not valid YAML{where}: {getattr(e, "problem", e)}; fix the syntax') from e
    return check_config(config, str(path))


def check_config(config, source: str = '<config>') -> Dict[str, Any]:
    if not isinstance(config, dict):
        raise KnowacqError(f'{source} must be a YAML mapping with keys such as name, dataset, topics, systems')
    for key in config:
        if key not in KEYS:
            close = difflib.get_close_matches(str(key), list(KEYS), n=1)
            hint = f' (did you mean {close[0]!r}?)' if close else ''
            raise KnowacqError(f'{source}: unknown key {key!r}{hint}; allowed keys: {", ".join(KEYS)}')
    for key in ('name', 'dataset', 'systems'):
        if key not in config:
            raise KnowacqError(f'{source}: missing required key {key!r} ({KEYS[key]})')
    if not isinstance(config['systems'], dict) or not config['systems']:
        raise KnowacqError(f'{source}: systems must be a non-empty mapping of name -> pipeline expression')
    if 'topics' in config and 'folds' in config:
        raise KnowacqError(f'{source}: give either topics (evaluation only) or folds (train/test), not both')
    if config.get('baseline') is not None and config['baseline'] not in config['systems']:
        raise KnowacqError(f'{source}: baseline {config["baseline"]!r} is not one of the systems: {list(config["systems"])}')
    for name, spec in (config.get('models') or {}).items():
        kind = (spec or {}).get('kind', 'cross-encoder') if isinstance(spec, dict) else None
        if kind not in MODEL_TRAINERS:
            raise KnowacqError(f'{source}: model {name!r} has kind {kind!r}; choose one of {list(MODEL_TRAINERS)}')
    for name, expr in config['systems'].items():
        expr = expr['pipeline'] if isinstance(expr, dict) else expr
        for stage in parse_pipeline(expr):
            check_stage(stage)
    _measures(config)
    return config


def _measures(config):
    import ir_measures
    out = []
    for m in config.get('measures') or DEFAULT_MEASURES:
        try:
            out.append(ir_measures.parse_measure(str(m)))
        except Exception:
            raise KnowacqError(f'unknown measure {m!r}; write ir_measures names such as nDCG@10, RR(rel=2)@10, AP(rel=2), R@100') from None
    return out


@dataclass
class Fold:
    test: str
    train: Optional[str] = None

    @property
    def folder(self) -> str:
        return _slug(self.test.split(':')[-1].split('/')[-1] if ':' in self.test else self.test)


def _fold_data(dataset: Dataset, split: Optional[str]):
    """A split of the experiment's dataset, or another dataset named in its place (``irds:...``, ``scifact``)."""
    from .datasets import DATASETS
    if split and (split.startswith(('irds:', 'beir:')) or (split in DATASETS and split not in dataset.splits)):
        return get_dataset(split), None
    return dataset, split


def _versions() -> Dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version
    out = {'python': platform.python_version(), 'platform': platform.platform()}
    for pkg in ('pyterrier-knowacq', 'python-terrier', 'pyterrier-dr', 'pyterrier-pisa', 'torch', 'transformers',
                'ir-measures', 'faiss-cpu', 'numpy', 'pandas'):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _git_commit() -> Optional[str]:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=here, capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=here,
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            return out.stdout.strip() + ('-dirty' if dirty else '')
    except (OSError, subprocess.SubprocessError):
        pass
    return None


def _apply_dry_run(config):
    overrides = config.get('dry_run') or {}
    config = {**config, **{k: v for k, v in overrides.items() if k in KEYS}}
    config['name'] = f'{config["name"]}-dry-run'
    return config


def _train_models(config, fold: Fold, dataset, seed, dry_run) -> Dict[str, str]:
    import importlib
    trained = {}
    for name, spec in (config.get('models') or {}).items():
        spec = dict(spec or {})
        module, fn_name = MODEL_TRAINERS[spec.pop('kind', 'cross-encoder')]
        try:
            fn = getattr(importlib.import_module(module), fn_name)
        except (ImportError, AttributeError) as e:
            raise KnowacqError(f'model {name!r} needs {module}.{fn_name}, which is not available ({e})') from e
        train_ds, train_split = _fold_data(dataset, fold.train)
        if train_split is None and fold.train is None:
            raise KnowacqError(f'model {name!r} must be trained, so the experiment needs folds: [{{train: ..., test: ...}}]')
        out = cache_dir('trained') / _slug(f'{config["name"]}-{fold.train}-{name}')
        kwargs = dict(dataset=train_ds, train_split=train_split, output_dir=out, seed=seed)
        if 'dry_run' in inspect.signature(fn).parameters:
            kwargs['dry_run'] = dry_run
        print(f'[knowacq] training {name!r} on {fold.train} ...', flush=True)
        trained[name] = str(fn(spec, **kwargs))
    return trained


def run_experiment(path, output: Optional[str] = None, overwrite: bool = False, dry_run: bool = False,
                   limit_topics: Optional[int] = None, command: Optional[str] = None) -> Path:
    """Run an experiment file and return its results folder (built atomically: all or nothing)."""
    import pyterrier as pt
    started = time.time()
    config = load_config(path)
    if dry_run:
        config = check_config(_apply_dry_run(config), str(path))
        limit_topics = limit_topics or 3
    seed = int(config.get('seed', 42))
    dataset = get_dataset(config['dataset'])
    folds = [Fold(**f) if isinstance(f, dict) else Fold(str(f)) for f in config.get('folds') or []] or \
        [Fold(str(t)) for t in (config.get('topics') if isinstance(config.get('topics'), list) else [config.get('topics')])]
    measures = _measures(config)
    systems = {name: (spec['pipeline'] if isinstance(spec, dict) else spec) for name, spec in config['systems'].items()}
    names = list(systems)
    baseline = names.index(config['baseline']) if config.get('baseline') in names else None
    correction = config.get('correction', 'holm')
    correction = None if str(correction).lower() in ('none', 'null', 'false') else correction
    out = Path(output or config.get('output') or Path('results') / _slug(config['name']))

    import torch
    torch.manual_seed(seed)
    meta = {'format': FORMAT, 'experiment': config['name'], 'study': config.get('study', 'spine'),
            'description': config.get('description', ''), 'config': config,
            'command': command or ' '.join(shlex.quote(a) for a in sys.argv), 'versions': _versions(),
            'git_commit': _git_commit(), 'seed': seed, 'created': datetime.now(timezone.utc).isoformat(timespec='seconds'),
            'measures': [str(m) for m in measures], 'baseline': config.get('baseline'), 'test': config.get('test', 't'),
            'correction': correction, 'collections': [], 'systems': [], 'timings': {}, 'models': {}}
    for name, spec in config['systems'].items():
        tags = {**(config.get('tags') or {}), **(spec.get('tags', {}) if isinstance(spec, dict) else {})}
        meta['systems'].append({'name': name, 'slug': _slug(name), 'pipeline': systems[name], 'tags': tags})
    if len({s['slug'] for s in meta['systems']}) != len(names):
        raise KnowacqError('two system names reduce to the same file name; rename one of them')

    with atomic_directory(out, overwrite=overwrite) as tmp:
        atomic_write_text(tmp / 'config.yaml', Path(path).read_text(encoding='utf-8'))
        for fold in folds:
            test_ds, test_split = _fold_data(dataset, fold.test)
            topics, qrels = test_ds.get_topics(test_split), test_ds.get_qrels(test_split)
            _check_topics_qrels(topics, qrels, fold.test)
            topics = topics[topics['qid'].isin(set(qrels['qid']))]
            if limit_topics:
                topics = topics.head(int(limit_topics))
            models = _train_models(config, fold, dataset, seed, dry_run)
            meta['models'][fold.folder] = models
            ctx = StageContext(test_ds, test_split, fold.train, models, seed, tmp, dry_run)
            results, timings = [], {}
            coll = tmp / fold.folder
            (coll / 'runs').mkdir(parents=True, exist_ok=True)
            for name in names:
                pipeline = build_pipeline(parse_pipeline(systems[name]), ctx, config.get('rerank_depth'))
                print(f'[knowacq] {fold.folder}: {name}', flush=True)
                t0 = time.time()
                res = pipeline(topics)
                timings[name] = round(time.time() - t0, 3)
                pt.io.write_results(res, str(coll / 'runs' / f'{_slug(name)}.res.gz'))
                results.append(res)
            common = dict(names=names, baseline=baseline, test=config.get('test', 't'), correction=correction,
                          correction_alpha=float(config.get('correction_alpha', 0.05)), verbose=False)
            agg = pt.Experiment(results, topics, qrels, measures, **common)
            perq = pt.Experiment(results, topics, qrels, measures, perquery=True, names=names, verbose=False)
            agg.to_csv(coll / 'aggregated.csv', index=False)
            topics[['qid', 'query']].to_csv(coll / 'topics.tsv', sep='\t', index=False, header=False)
            perq.to_csv(coll / 'perquery.csv', index=False)
            meta['timings'][fold.folder] = timings
            meta['collections'].append({'name': fold.folder, 'dataset': test_ds.name, 'topics': test_split or fold.test,
                                        'train': fold.train, 'num_queries': int(len(topics)),
                                        'provenance': _first_paragraph(test_ds.provenance())})
            _print_table(fold.folder, agg, measures)
        if config.get('analysis'):
            from .analysis.pipeline import run_analysis
            fold_models = next(iter(meta['models'].values()), {}) if meta['models'] else {}
            meta['analysis'] = run_analysis(config['analysis'], tmp, seed=seed, dry_run=dry_run, models=fold_models)
        meta['wall_time_s'] = round(time.time() - started, 2)
        atomic_write_json(tmp / 'meta.json', meta)
    return out


def _check_topics_qrels(topics: pd.DataFrame, qrels: pd.DataFrame, label: str):
    if topics.empty:
        raise KnowacqError(f'{label}: no topics; check the split name')
    judged = set(qrels['qid'])
    with_qrels = topics['qid'].isin(judged)
    if not with_qrels.any():
        raise KnowacqError(f'{label}: none of the {len(topics)} topics has qrels (e.g. qid {topics.qid.iloc[0]!r}); '
                           'topics and qrels come from different collections')
    if not with_qrels.all():
        print(f'[knowacq] {label}: {int((~with_qrels).sum())} of {len(topics)} topics have no qrels and are left out', flush=True)


def _first_paragraph(text: str) -> str:
    paras = [p.strip() for p in text.split('\n\n') if p.strip() and not p.strip().startswith('#')]
    return paras[0] if paras else text.strip()[:500]


def _print_table(label, agg, measures):
    cols = ['name'] + [str(m) for m in measures if str(m) in agg.columns]
    with pd.option_context('display.max_colwidth', 60, 'display.width', 200):
        print(f'\n== {label} ==\n{agg[cols].round(4).to_string(index=False)}\n', flush=True)
