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

``run_experiment('quickstart.yaml')`` writes ``results/quickstart/`` (format: DESIGN.md), atomically, after checking
every spec, data path and model name of the file (:mod:`.preflight`). A failed system leaves the results of the others
(marked incomplete); running the same file again resumes.
"""
from __future__ import annotations

import inspect
import platform
import shlex
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional, Set

import pandas as pd

from .._resources import ResourceLog, stage as _stage
from .._util import KnowacqError, atomic_directory, atomic_write_json, atomic_write_text, cache_dir, write_csv, write_jsonl
from ..datasets.core import get_dataset
from .config import (DEFAULT_MEASURES, KEYS, MODEL_TRAINERS, Fold, _fold_data, _measures, _slug,  # noqa: F401
                                apply_dry_run, check_config, folds_of, load_config, runs_on)
from .expressions import parse_pipeline
from .components import StageContext, build_pipeline, register_stage  # noqa: F401  (re-exported)

__all__ = ['load_config', 'run_experiment', 'register_stage', 'DEFAULT_MEASURES', 'FORMAT']

FORMAT = 'pyterrier_knowacq.results/1'
#: queries per pipeline call: a system's candidates (BM25 top-1000 >> text >> ColBERT: 16k passages with their texts
#: and tokens) are held for this many queries at a time, so a run's memory is bounded whatever the number of topics
#: (every built-in stage works per query, so the results are the same)
QUERY_BATCH = 16


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


#: the finished systems of unfinished runs, beside the results folders: <parent>/.knowacq-work/<results folder name>/
WORK_FOLDER = '.knowacq-work'


def _apply_dry_run(config):
    return apply_dry_run(config)


class _Work:
    """The finished systems of a run that is not complete yet, so that a failure or a kill loses none of them.

    ``<parent of the results>/.knowacq-work/<results folder name>/<collection>/runs/<slug>.<key>.res.gz`` and
    ``<collection>/manifest.json`` (``{key: {system, slug, seconds, run, finished}}``). The key is a hash of what
    determines the system's run (:func:`_system_key`); a later run with the same key reuses the file instead of
    running the system again. The folder is removed when the results folder is complete.
    """

    def __init__(self, out: Path):
        self.root = out.parent / WORK_FOLDER / out.name

    def _manifest_file(self, coll: str) -> Path:
        return self.root / coll / 'manifest.json'

    def manifest(self, coll: str) -> Dict[str, dict]:
        import json
        try:
            data = json.loads(self._manifest_file(coll).read_text(encoding='utf-8'))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, coll: str, key: str) -> Optional[dict]:
        entry = self.manifest(coll).get(key)
        if isinstance(entry, dict) and isinstance(entry.get('run'), str) and (self.root / coll / entry['run']).is_file():
            return entry
        return None

    def run_file(self, coll: str, entry: dict) -> Path:
        return self.root / coll / entry['run']

    def put(self, coll: str, key: str, name: str, slug: str, res: pd.DataFrame, seconds: float) -> dict:
        """Keep a finished system's run (written under a temporary name, then renamed) and record it."""
        import os
        import pyterrier as pt
        runs = self.root / coll / 'runs'
        runs.mkdir(parents=True, exist_ok=True)
        rel = f'runs/{slug}.{key[:16]}.res.gz'
        tmp = runs / f'.{slug}.{key[:16]}.{os.getpid()}.tmp.res.gz'
        pt.io.write_results(res, str(tmp), run_name=slug)
        os.replace(tmp, self.root / coll / rel)
        manifest = self.manifest(coll)
        for old_key, old in list(manifest.items()):   # an earlier version of this system (another pipeline or data)
            if isinstance(old, dict) and old.get('slug') == slug and old_key != key:
                del manifest[old_key]
                if isinstance(old.get('run'), str) and old['run'] != rel:
                    (self.root / coll / old['run']).unlink(missing_ok=True)
        manifest[key] = {'system': name, 'slug': slug, 'seconds': seconds, 'run': rel,
                         'finished': datetime.now(timezone.utc).isoformat(timespec='seconds')}
        atomic_write_json(self._manifest_file(coll), manifest)
        return manifest[key]

    def remove(self) -> None:
        import shutil
        shutil.rmtree(self.root, ignore_errors=True)
        try:
            self.root.parent.rmdir()   # .knowacq-work itself, once no other run keeps work there
        except OSError:
            pass


def _system_key(pipeline: str, collection: str, dataset, split, fingerprint: str, topics: pd.DataFrame,
                models: Dict[str, str], rerank_depth, seed: int, dry_run: bool) -> str:
    """What determines a system's run: its pipeline, the collection (dataset id, content fingerprint, split, the
    topics exactly as run) and the models its stages load (trained models by their content-keyed folders)."""
    import hashlib
    import json
    h = hashlib.sha1()
    for qid, query in zip(topics['qid'], topics['query']):
        h.update(str(qid).encode('utf-8', 'surrogateescape') + b'\0' + str(query).encode('utf-8', 'surrogateescape') + b'\1')
    payload = {'format': 1, 'pipeline': pipeline, 'collection': collection, 'dataset': dataset.id, 'split': split,
               'fingerprint': fingerprint, 'topics': h.hexdigest(), 'models': models, 'rerank_depth': rerank_depth,
               'seed': seed, 'dry_run': bool(dry_run)}
    return hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _models_used(stages, ctx: StageContext) -> Dict[str, str]:
    """``{'0:ce.model=ELECTRA-C': '<folder>|<content fingerprint>', ...}``: every stage parameter that names a model,
    with the content of its weights (an alias or local folder retrained in place is not reused as it was)."""
    from ..models.backbones import model_fingerprint
    from .preflight import STAGE_MODEL_PARAMS
    out = {}
    for i, stage in enumerate(stages):
        for key, value in stage.params.items():
            if key in STAGE_MODEL_PARAMS or (isinstance(value, str) and value in ctx.models):
                folder = str(ctx.model(value))
                try:
                    weights = model_fingerprint(folder)
                except Exception:  # noqa: BLE001 - a name that cannot be resolved fails when the stage builds it
                    weights = None
                out[f'{i}:{stage.name}.{key}={value}'] = f'{folder}|{weights}'
    return out


def _incomplete(folder: Path) -> bool:
    """Whether ``folder`` is a results folder that a failed run left marked ``"incomplete": true``."""
    import json
    try:
        meta = json.loads((folder / 'meta.json').read_text(encoding='utf-8'))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get('incomplete') is True


def _error_text(error: BaseException, limit: int = 600) -> str:
    text = str(error) if isinstance(error, KnowacqError) else f'{type(error).__name__}: {error}'
    text = ' '.join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + '...'


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


def _in_query_batches(pipeline, topics: pd.DataFrame, size: Optional[int] = None) -> pd.DataFrame:
    """``pipeline(topics)``, run :data:`QUERY_BATCH` queries at a time (the same results: stages work per query)."""
    size = int(size or QUERY_BATCH)
    if len(topics) <= size:
        return pipeline(topics)
    parts = [pipeline(topics.iloc[i:i + size]) for i in range(0, len(topics), size)]
    return pd.concat([p for p in parts if len(p)] or parts[:1], ignore_index=True)


def _seeds_of(config) -> Optional[List[int]]:
    """The experiment's ``seeds:`` (checked by the preflight: distinct integers), or None (one seed, ``seed:``)."""
    seeds = config.get('seeds')
    return None if seeds is None else [int(s) for s in seeds]


def _uses_trained(stages, trained: Set[str]) -> bool:
    """Whether a system's stages load a model the experiment trains (``ce(model=C)``): it then runs once per seed."""
    return any(isinstance(v, str) and v in trained for stage in stages for v in stage.params.values())


def _seed_tables(runs, topics: pd.DataFrame, qrels: pd.DataFrame, measures, *, names: List[str],
                 baseline: Optional[int], test: str, correction, correction_alpha: float, **_):
    """An experiment with ``seeds:``: ``(aggregated, perquery, per-seed aggregates)`` of one collection.

    ``runs`` are ``(system, seed or None, run)``. ``perquery`` is pt.Experiment's per-query frame of every run with
    a ``seed`` column (empty for seed-independent systems); ``aggregated`` has pt.Experiment's columns, each system's
    value being its seed-mean, and the paired test against the baseline runs over queries on the per-query seed-means
    (the query is the unit); ``per-seed aggregates`` are ``{system: {seed: {measure: mean}}}`` of seeded systems.
    """
    import pyterrier as pt
    from scipy import stats as st
    perq = pt.Experiment([r[2] for r in runs], topics, qrels, measures, perquery=True,
                         names=[str(i) for i in range(len(runs))], verbose=False)
    which = perq['name'].astype(int).to_numpy()
    perq = perq.assign(name=[runs[i][0] for i in which], seed=pd.array([runs[i][1] for i in which], dtype='Int64'))
    order = {n: i for i, n in enumerate(names)}
    perq = perq.sort_values(['name', 'seed', 'qid'], key=lambda c: c.map(order) if c.name == 'name' else c,
                            na_position='first', kind='stable').reset_index(drop=True)
    ms = [str(m) for m in measures]
    # per query: the mean over seeds (a seed-independent system has one value)
    wide = perq.pivot_table(index=['name', 'qid'], columns='measure', values='value', aggfunc='mean')
    rows = [[n] + [float(wide.loc[n][m].mean()) for m in ms] for n in names]
    columns = ['name'] + ms
    p_cols = []
    if baseline is not None:   # the columns, order and tests of pt.Experiment's table (pyterrier's renderer)
        test_fn = {'t': st.ttest_rel, 'wilcoxon': st.wilcoxon}[test]
        base = wide.loc[names[baseline]]
        for i, n in enumerate(names):
            if i == baseline:
                rows[i] += [None] * (3 * len(ms))
                continue
            own = wide.loc[n].reindex(base.index)
            for m in ms:
                x, y = own[m].to_numpy(float), base[m].to_numpy(float)
                try:
                    p = float(test_fn(x, y)[1])
                except ValueError:   # e.g. wilcoxon on all-zero differences
                    p = float('nan')
                rows[i] += [int((x > y).sum()), int((x < y).sum()), p]
        for m in ms:
            columns += [f'{m} +', f'{m} -', f'{m} p-value']
            p_cols.append(f'{m} p-value')
    agg = pd.DataFrame(rows, columns=columns)
    if baseline is not None and correction is not None:
        import numpy as np
        import statsmodels.stats.multitest
        for col in p_cols:
            reject, corrected, _, _ = statsmodels.stats.multitest.multipletests(
                agg[col].drop(agg.index[baseline]), alpha=correction_alpha, method=correction)
            at = agg.columns.get_loc(col)
            agg.insert(at + 1, col.replace('p-value', 'reject'), np.insert(reject, baseline, False))
            agg.insert(at + 2, col + ' corrected', np.insert(corrected, baseline, np.nan))
    seeded = perq[perq['seed'].notna()]
    per_seed: Dict[str, Dict[str, Dict[str, float]]] = {}
    for (n, s, m), v in seeded.groupby(['name', 'seed', 'measure'], sort=False)['value'].mean().items():
        per_seed.setdefault(n, {}).setdefault(str(int(s)), {})[m] = float(v)
    per_seed = {n: {s: {m: vals[m] for m in ms if m in vals} for s, vals in by.items()} for n, by in per_seed.items()}
    return agg, perq, per_seed


def run_experiment(path, output: Optional[str] = None, overwrite: bool = False, dry_run: bool = False,
                   limit_topics: Optional[int] = None, command: Optional[str] = None, force: bool = False) -> Path:
    """Run an experiment file and return its results folder (built atomically).

    Every model spec, data path and model name is checked first (:mod:`~.preflight`): all problems are raised at
    once, in seconds, before any work; then the memory plan on this machine's device (:func:`~.planning.check_plan`):
    a model or system that cannot fit raises :class:`~.planning.PlanRefused` unless ``force``. Each finished system's
    run is kept in a work folder beside the results (``.knowacq-work/<name>/``); when a system fails, the others still
    run, the results folder is written with the systems that finished (``meta.json``: ``"incomplete": true``,
    ``"failed": [{system, collection, error}]``) and the first error is raised. Running again (an incomplete folder is
    replaced without ``overwrite``) reuses the finished systems and completes the folder; the work folder is then
    removed.

    ``seeds: [1, 2, 3]`` trains every model once per seed and runs every system that loads a trained model once per
    seed (``runs/<slug>.seed<k>.res.gz``; systems without one run once): ``perquery.csv`` gains a ``seed`` column
    (empty for seed-independent systems), ``aggregated.csv`` holds each system's seed-mean (its test against the
    baseline over queries, on per-query seed-means), meta.json ``seeds``, ``seed_results`` ``{collection: {system:
    {seed: {measure: value}}}}``, ``seed_models`` and ``seed_timings``. Without ``seeds:`` nothing of this changes.

    Each stage (preflight, data and index builds, the training of each model, each system on each collection) is
    metered (:mod:`._resources`): meta.json's ``resources`` holds its wall time and peak RSS (process + children), and
    the table is printed at the end.
    """
    resources = ResourceLog()
    with resources.active():
        return _run_experiment(path, output, overwrite, dry_run, limit_topics, command, resources, force=force)


def _run_experiment(path, output, overwrite, dry_run, limit_topics, command, resources: ResourceLog,
                    force: bool = False) -> Path:
    import pyterrier as pt
    from .preflight import check_experiment
    started = time.time()
    with _stage('preflight'):
        report = check_experiment(path, dry_run=dry_run)   # every problem at once, before any work
    print(report.summary(), flush=True)
    config = report.config
    if dry_run:
        config = apply_dry_run(config)
        limit_topics = limit_topics or 3
    else:   # the memory plan on this machine's device, before any work (planning.py); force=True runs it anyway
        from .planning import check_plan
        check_plan(config, force=force)
    seed = int(config.get('seed', 42))
    seeds = _seeds_of(config)   # None: one seed (no seed column, one run per system); else trained models per seed
    dataset = get_dataset(config['dataset'])
    folds = folds_of(config, str(path))
    for ds in {id(d): d for d in [dataset] + [f.test_data(dataset)[0] for f in folds]}.values():
        if callable(getattr(ds, 'prepare_all', None)):   # data generated on first use (a synthetic docstore, its
            ds.prepare_all()                              # index and teacher): built now, each a metered stage
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
            'correction': correction, 'collections': [], 'systems': [], 'timings': {}, 'models': {}, 'training': {}}
    if seeds is not None:   # meta['models']: the first seed's (the analysis uses them); each seed's in seed_models
        meta.update({'seeds': seeds, 'seed_results': {}, 'seed_models': {}, 'seed_timings': {}})
    for name, spec in config['systems'].items():
        tags = {**(config.get('tags') or {}), **(spec.get('tags', {}) if isinstance(spec, dict) else {})}
        entry = {'name': name, 'slug': _slug(name), 'pipeline': systems[name], 'tags': tags}
        if isinstance(spec, dict) and spec.get('collections'):
            entry['collections'] = list(spec['collections'])
        meta['systems'].append(entry)
    if len({s['slug'] for s in meta['systems']}) != len(names):
        raise KnowacqError('two system names reduce to the same file name; rename one of them')

    if out.exists() and not overwrite:
        if not _incomplete(out):
            raise ResultsExist(f'{out} already exists; remove it or pass overwrite=True', flag='overwrite=True')
        print(f'[knowacq] {out} is incomplete (a system failed): resuming it', flush=True)
    work = _Work(out)
    failures, first_error, reused = [], None, {}
    with atomic_directory(out, overwrite=True) as tmp:
        atomic_write_text(tmp / 'config.yaml', Path(path).read_text(encoding='utf-8'))
        trained_on: Dict[tuple, Dict[str, str]] = {}   # (training split, seed) -> {model name: folder}
        trained_names = set(config.get('models') or {})
        current = None
        try:
            for fold in folds:
                current = fold.folder
                test_ds, test_split = fold.test_data(dataset)
                topics, qrels = test_ds.get_topics(test_split), test_ds.get_qrels(test_split)
                _check_topics_qrels(topics, qrels, fold.test)
                topics = topics[topics['qid'].isin(set(qrels['qid']))]
                if limit_topics:
                    topics = topics.head(int(limit_topics))
                for s in seeds or [seed]:   # folds sharing a training split share its models (no retraining)
                    if (fold.train, s) not in trained_on:
                        info = meta['training'].setdefault(str(fold.train), {})
                        trained_on[(fold.train, s)] = _train_models(config, fold, dataset, s, dry_run,
                                                                    info=info.setdefault(str(s), {}) if seeds else info,
                                                                    per_seed=seeds is not None)
                models = trained_on[(fold.train, (seeds or [seed])[0])]
                meta['models'][fold.folder] = models
                if seeds is not None:
                    meta['seed_models'][fold.folder] = {str(s): trained_on[(fold.train, s)] for s in seeds}
                fold_names = [n for n in names if runs_on(config['systems'][n], fold.folder)]
                ctx = StageContext(test_ds, test_split, fold.train, models, seed, tmp, dry_run)
                fingerprint = test_ds.fingerprint()
                results, done, timings = [], [], {}
                runs = []   # (system, seed or None, run, seconds): with seeds:, a system of trained models once per seed
                coll = tmp / fold.folder
                for name in fold_names:
                    stages = parse_pipeline(systems[name])
                    for s in (seeds if seeds is not None and _uses_trained(stages, trained_names) else [None]):
                        # s None: one run (no seeds:, or a seed-independent system), as <slug>.res.gz; else
                        # <slug>.seed<s>.res.gz, its own work-folder entry (the key holds the seed and its models)
                        sctx = ctx if s is None else StageContext(test_ds, test_split, fold.train,
                                                                  trained_on[(fold.train, s)], s, tmp, dry_run)
                        label, slug = (name, _slug(name)) if s is None else (f'{name} (seed {s})', f'{_slug(name)}.seed{s}')
                        key = _system_key(systems[name], fold.folder, test_ds, test_split, fingerprint, topics,
                                          _models_used(stages, sctx), config.get('rerank_depth'),
                                          seed if s is None else s, dry_run)
                        kept = work.get(fold.folder, key)
                        if kept is not None:
                            print(f'[knowacq] {fold.folder}: reusing finished system {label}', flush=True)
                            res = pt.io.read_results(str(work.run_file(fold.folder, kept))).drop(columns=['name'], errors='ignore')
                            reused.setdefault(fold.folder, []).append(label)
                        else:
                            print(f'[knowacq] {fold.folder}: {label}', flush=True)
                            try:
                                with _stage(f'system: {fold.folder}/{label}'):
                                    pipeline = build_pipeline(stages, sctx, config.get('rerank_depth'))
                                    t0 = time.time()
                                    res = _in_query_batches(pipeline, topics)
                                kept = work.put(fold.folder, key, name, slug, res, round(time.time() - t0, 3))
                            except Exception as e:  # noqa: BLE001 - recorded; the other systems still run
                                failures.append({'system': name, 'collection': fold.folder, 'error': _error_text(e),
                                                 **({} if s is None else {'seed': s})})
                                first_error = first_error or e
                                print(f'[knowacq] {fold.folder}: system {label!r} FAILED ({_error_text(e, 300)}); going '
                                      'on with the other systems', file=sys.stderr, flush=True)
                                continue
                        (coll / 'runs').mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(work.run_file(fold.folder, kept), coll / 'runs' / f'{slug}.res.gz')
                        runs.append((name, s, res, kept['seconds']))
                    own = [r for r in runs if r[0] == name]
                    if not own:
                        continue
                    if seeds is not None and own[0][1] is not None:   # the seed-mean; each seed's in seed_timings
                        timings[name] = round(sum(r[3] for r in own) / len(own), 3)
                        meta['seed_timings'].setdefault(fold.folder, {})[name] = {str(r[1]): r[3] for r in own}
                    else:
                        timings[name] = own[0][3]
                    results.append(own[0][2])
                    done.append(name)
                if not done:
                    continue
                baseline = done.index(config['baseline']) if config.get('baseline') in done else None
                common = dict(names=done, baseline=baseline, test=config.get('test', 't'), correction=correction,
                              correction_alpha=float(config.get('correction_alpha', 0.05)), verbose=False)
                fold_measures = _measures({'measures': fold.measures}) if fold.measures else measures
                if seeds is None:
                    agg = pt.Experiment(results, topics, qrels, fold_measures, **common)
                    perq = pt.Experiment(results, topics, qrels, fold_measures, perquery=True, names=done, verbose=False)
                else:   # aggregated: seed-means (tests over queries on per-query seed-means); perquery: a seed column
                    agg, perq, meta['seed_results'][fold.folder] = _seed_tables(runs, topics, qrels, fold_measures,
                                                                                **common)
                write_csv(agg, coll / 'aggregated.csv')
                # JSON lines, not TSV: query texts holding tabs, quotes, newlines or U+2028 come back exactly as run
                write_jsonl(coll / 'topics.jsonl', ({'qid': str(q), 'query': str(t)} for q, t in zip(topics['qid'], topics['query'])))
                write_csv(perq, coll / 'perquery.csv')
                meta['timings'][fold.folder] = timings
                # results are grouped by dataset id + content fingerprint: two collections that share a folder name are
                # never compared with each other (the leaderboard keeps them in separate tables)
                meta['collections'].append({'name': fold.folder, 'dataset': test_ds.id, 'dataset_name': test_ds.name,
                                            'dataset_fingerprint': fingerprint, 'topics': test_split or fold.test,
                                            'train_dataset': dataset.id if fold.train else None,
                                            'measures': [str(m) for m in fold_measures],
                                            'train': fold.train, 'num_queries': int(len(topics)),
                                            'provenance': _first_paragraph(test_ds.provenance())})
                _print_table(fold.folder, agg, fold_measures)
            current = None
            if config.get('analysis'):
                from ..analysis.pipeline import run_analysis
                current = 'analysis'
                fold_models = next(iter(meta['models'].values()), {}) if meta['models'] else {}
                meta['analysis'] = run_analysis(config['analysis'], tmp, seed=seed, dry_run=dry_run, models=fold_models)
        except Exception as e:  # noqa: BLE001 - training, topics or the analysis failed: nothing more can run
            where = 'analysis: ' if current == 'analysis' else ''
            failures.append({'system': None, 'collection': None if current == 'analysis' else current,
                             'error': where + _error_text(e)})
            first_error = first_error or e
        if failures and not meta['collections']:
            raise first_error   # nothing finished: no results folder (an earlier incomplete one stays as it was)
        if failures:
            meta['incomplete'] = True
            meta['failed'] = failures
        if reused:
            meta['reused'] = reused   # finished by an earlier, failed run of this experiment (timings are theirs)
        meta['wall_time_s'] = round(time.time() - started, 2)
        meta['resources'] = resources.as_dict()   # {stage: {wall_s, peak_rss_mb, start_rss_mb}}
        atomic_write_json(tmp / 'meta.json', meta)
    print('\n' + resources.table(f'{config["name"]}: wall time and peak RSS (process + children) per stage') + '\n',
          flush=True)
    if failures:
        print(f'[knowacq] {len(failures)} failure(s); the systems that finished are in {out} (marked incomplete). Run '
              'the same command again to resume: finished systems are reused, not run again', file=sys.stderr, flush=True)
        raise first_error
    work.remove()
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
