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

import inspect
import platform
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, Optional

import pandas as pd

from ._util import KnowacqError, atomic_directory, atomic_write_json, atomic_write_text, cache_dir, write_csv, write_jsonl
from .datasets import get_dataset
from .experiment_config import (DEFAULT_MEASURES, KEYS, MODEL_TRAINERS, Fold, _fold_data, _measures, _slug,  # noqa: F401
                                check_config, folds_of, load_config, runs_on)
from .pipeline_expr import parse_pipeline
from .stages import StageContext, build_pipeline, register_stage  # noqa: F401  (re-exported)

__all__ = ['load_config', 'run_experiment', 'register_stage', 'DEFAULT_MEASURES', 'FORMAT']

FORMAT = 'pyterrier_knowacq.results/1'


class ResultsExist(KnowacqError):
    """The results folder exists and may not be replaced; ``flag`` is how the message names the way to replace it
    (``overwrite=True`` in Python; the command line says ``--overwrite``)."""

    def __init__(self, message: str, flag: str):
        super().__init__(message)
        self.flag = flag


#: import names of every library whose version can change the numbers; the versions recorded are those of the
#: distributions that really provide them (the ``pyterrier`` module comes from ``pyterrier``, not the empty
#: ``python-terrier`` shim; ``faiss`` from ``faiss-cpu`` or ``faiss-gpu``)
VERSIONED_MODULES = ('pyterrier', 'pyterrier_alpha', 'pyterrier_dr', 'pyterrier_pisa', 'ir_datasets', 'ir_measures',
                     'torch', 'transformers', 'tokenizers', 'safetensors', 'huggingface_hub', 'accelerate', 'peft',
                     'sentence_transformers', 'faiss', 'numpy', 'pandas', 'scipy', 'statsmodels')


def _versions() -> Dict[str, str]:
    """``{'python': ..., 'pyterrier-knowacq': ..., 'pyterrier': ..., 'torch': ..., ...}``: the installed libraries that
    can change the numbers, keyed by normalised distribution name; missing (optional) ones are left out."""
    import re
    from importlib.metadata import PackageNotFoundError, packages_distributions, version
    out = {'python': platform.python_version(), 'platform': platform.platform()}
    providers = packages_distributions()
    for dist in ['pyterrier-knowacq'] + [d for module in VERSIONED_MODULES for d in providers.get(module, [])]:
        key = re.sub(r'[-_.]+', '-', dist).lower()
        if key in out:
            continue
        try:
            out[key] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def _platform() -> Dict[str, object]:
    """The hardware and OS a run was measured on (ir_metadata's platform block): CPU model, logical cores, RAM, GPUs."""
    import os
    cpu = None
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as f:
            cpu = next((line.split(':', 1)[1].strip() for line in f if line.lower().startswith('model name')), None)
    except OSError:
        pass
    ram_gb = None
    try:
        ram_gb = round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2 ** 30, 1)
    except (AttributeError, ValueError, OSError):
        pass
    gpus, cuda = [], None
    try:
        import torch
        if torch.cuda.is_available():
            gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            cuda = torch.version.cuda
    except Exception:  # a broken CUDA set-up must not stop the run from recording the rest
        pass
    return {'cpu': cpu or platform.processor() or platform.machine() or None, 'logical_cores': os.cpu_count(),
            'ram_gb': ram_gb, 'gpus': gpus, 'cuda': cuda, 'os': platform.platform(), 'machine': platform.machine(),
            'python': f'{platform.python_implementation()} {platform.python_version()}'}


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
        # (a pointer folder: the model itself is cached under a key of the data's and weights' content)
        out = cache_dir('trained') / _slug(f'{config["name"]}-{train_ds.id}-{fold.train}-{name}')
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
    folds = folds_of(config, str(path))
    measures = _measures(config)
    systems = {name: (spec['pipeline'] if isinstance(spec, dict) else spec) for name, spec in config['systems'].items()}
    names = list(systems)
    correction = config.get('correction', 'holm')
    correction = None if str(correction).lower() in ('none', 'null', 'false') else correction
    out = Path(output or config.get('output') or Path('results') / _slug(config['name']))

    import torch
    torch.manual_seed(seed)
    meta = {'format': FORMAT, 'experiment': config['name'], 'study': config.get('study', 'spine'),
            'description': config.get('description', ''), 'config': config,
            'command': command or ' '.join(shlex.quote(a) for a in sys.argv), 'versions': _versions(),
            'platform': _platform(),
            'git_commit': _git_commit(), 'seed': seed, 'created': datetime.now(timezone.utc).isoformat(timespec='seconds'),
            'measures': [str(m) for m in measures], 'baseline': config.get('baseline'), 'test': config.get('test', 't'),
            'correction': correction, 'collections': [], 'systems': [], 'timings': {}, 'models': {}}
    for name, spec in config['systems'].items():
        tags = {**(config.get('tags') or {}), **(spec.get('tags', {}) if isinstance(spec, dict) else {})}
        entry = {'name': name, 'slug': _slug(name), 'pipeline': systems[name], 'tags': tags}
        if isinstance(spec, dict) and spec.get('collections'):
            entry['collections'] = list(spec['collections'])
        meta['systems'].append(entry)
    if len({s['slug'] for s in meta['systems']}) != len(names):
        raise KnowacqError('two system names reduce to the same file name; rename one of them')

    if out.exists() and not overwrite:
        raise ResultsExist(f'{out} already exists; remove it or pass overwrite=True', flag='overwrite=True')
    with atomic_directory(out, overwrite=overwrite) as tmp:
        atomic_write_text(tmp / 'config.yaml', Path(path).read_text(encoding='utf-8'))
        trained_on: Dict[Optional[str], Dict[str, str]] = {}
        for fold in folds:
            test_ds, test_split = fold.test_data(dataset)
            topics, qrels = test_ds.get_topics(test_split), test_ds.get_qrels(test_split)
            _check_topics_qrels(topics, qrels, fold.test)
            topics = topics[topics['qid'].isin(set(qrels['qid']))]
            if limit_topics:
                topics = topics.head(int(limit_topics))
            if fold.train not in trained_on:   # folds sharing a training split share its models (no retraining)
                trained_on[fold.train] = _train_models(config, fold, dataset, seed, dry_run)
            models = trained_on[fold.train]
            meta['models'][fold.folder] = models
            fold_names = [n for n in names if runs_on(config['systems'][n], fold.folder)]
            baseline = fold_names.index(config['baseline']) if config.get('baseline') in fold_names else None
            ctx = StageContext(test_ds, test_split, fold.train, models, seed, tmp, dry_run)
            results, timings = [], {}
            coll = tmp / fold.folder
            (coll / 'runs').mkdir(parents=True, exist_ok=True)
            for name in fold_names:
                pipeline = build_pipeline(parse_pipeline(systems[name]), ctx, config.get('rerank_depth'))
                print(f'[knowacq] {fold.folder}: {name}', flush=True)
                t0 = time.time()
                res = pipeline(topics)
                timings[name] = round(time.time() - t0, 3)
                pt.io.write_results(res, str(coll / 'runs' / f'{_slug(name)}.res.gz'), run_name=_slug(name))
                results.append(res)
            common = dict(names=fold_names, baseline=baseline, test=config.get('test', 't'), correction=correction,
                          correction_alpha=float(config.get('correction_alpha', 0.05)), verbose=False)
            fold_measures = _measures({'measures': fold.measures}) if fold.measures else measures
            agg = pt.Experiment(results, topics, qrels, fold_measures, **common)
            perq = pt.Experiment(results, topics, qrels, fold_measures, perquery=True, names=fold_names, verbose=False)
            write_csv(agg, coll / 'aggregated.csv')
            # JSON lines, not TSV: query texts holding tabs, quotes, newlines or U+2028 come back exactly as run
            write_jsonl(coll / 'topics.jsonl', ({'qid': str(q), 'query': str(t)} for q, t in zip(topics['qid'], topics['query'])))
            write_csv(perq, coll / 'perquery.csv')
            meta['timings'][fold.folder] = timings
            # results are grouped by dataset id + content fingerprint: two collections that share a folder name are
            # never compared with each other (the leaderboard keeps them in separate tables)
            meta['collections'].append({'name': fold.folder, 'dataset': test_ds.id, 'dataset_name': test_ds.name,
                                        'dataset_fingerprint': test_ds.fingerprint(), 'topics': test_split or fold.test,
                                        'train_dataset': dataset.id if fold.train else None,
                                        'measures': [str(m) for m in fold_measures],
                                        'train': fold.train, 'num_queries': int(len(topics)),
                                        'provenance': _first_paragraph(test_ds.provenance())})
            _print_table(fold.folder, agg, fold_measures)
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
