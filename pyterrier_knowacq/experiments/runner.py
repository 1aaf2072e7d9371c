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

``run_experiment('quickstart.yaml')`` writes ``results/quickstart/`` (format: :mod:`pyterrier_knowacq.results`,
DESIGN.md), atomically, after checking every spec, data path and model name of the file (:mod:`.preflight`). A failed
system leaves the results of the others (marked incomplete); running the same file again resumes.

The pieces of a run live beside this module: the models' training (:mod:`.fold_training`), the work folder that makes
a run resumable (:mod:`.work`), the tables of an experiment with ``seeds:`` (:mod:`.seeds`), what meta.json records
of the machine and libraries (:mod:`.provenance`) and what a ``--dry-run`` substitutes (:mod:`.dry_run`).
"""
from __future__ import annotations

import shlex
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, Optional

import pandas as pd

from .. import results as result_folder
from .._resources import ResourceLog, stage as _stage
from .._util import KnowacqError, atomic_directory
from ..datasets.core import get_dataset
from ..results import FORMAT
from .config import (DEFAULT_MEASURES, KEYS, Fold, _fold_data, _measures, _slug, check_measures_fit_qrels, measures_for,  # noqa: F401
                                check_config, folds_of, load_config, runs_on)
from .dry_run import apply_dry_run, topics_limit
from .expressions import parse_pipeline
from .rehearsal_data import prepare_generated
from .components import StageContext, build_pipeline, register_stage  # noqa: F401  (re-exported)
# the pieces of a run, each in its own module; their names stay importable from here
from .fold_training import _train_models, _training_summary  # noqa: F401
from .provenance import VERSIONED_MODULES, _git_commit, _platform, _versions  # noqa: F401
from .seeds import _seed_tables, _seeds_of, _uses_trained  # noqa: F401
from .work import WORK_FOLDER, _models_used, _system_key, _Work  # noqa: F401

__all__ = ['load_config', 'run_experiment', 'register_stage', 'DEFAULT_MEASURES', 'FORMAT']

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


def _apply_dry_run(config):
    return apply_dry_run(config)


def _incomplete(folder: Path) -> bool:
    """Whether ``folder`` is a results folder that a failed run left marked ``"incomplete": true``."""
    return result_folder.is_incomplete(folder)


def _error_text(error: BaseException, limit: int = 600) -> str:
    text = str(error) if isinstance(error, KnowacqError) else f'{type(error).__name__}: {error}'
    text = ' '.join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + '...'


def _in_query_batches(pipeline, topics: pd.DataFrame, size: Optional[int] = None) -> pd.DataFrame:
    """``pipeline(topics)``, run :data:`QUERY_BATCH` queries at a time (the same results: stages work per query)."""
    size = int(size or QUERY_BATCH)
    if len(topics) <= size:
        return pipeline(topics)
    parts = [pipeline(topics.iloc[i:i + size]) for i in range(0, len(topics), size)]
    return pd.concat([p for p in parts if len(p)] or parts[:1], ignore_index=True)


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
        limit_topics = topics_limit(limit_topics)
    else:   # the memory plan on this machine's device, before any work (planning.py); force=True runs it anyway
        from .planning import check_plan
        check_plan(config, force=force)
    seed = int(config.get('seed', 42))
    seeds = _seeds_of(config)   # None: one seed (no seed column, one run per system); else trained models per seed
    dataset = get_dataset(config['dataset'])
    folds = folds_of(config, str(path))
    for ds in {id(d): d for d in [dataset] + [f.test_data(dataset)[0] for f in folds]}.values():
        prepare_generated(ds)   # data generated on first use (a synthetic docstore, its index and teacher): built now
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
        result_folder.write_config(tmp, Path(path).read_text(encoding='utf-8'))
        trained_on: Dict[tuple, Dict[str, str]] = {}   # (training split, seed) -> {model name: folder}
        trained_names = set(config.get('models') or {})
        current = None
        try:
            for fold in folds:
                current = fold.folder
                test_ds, test_split = fold.test_data(dataset)
                topics, qrels = test_ds.get_topics(test_split), test_ds.get_qrels(test_split)
                _check_topics_qrels(topics, qrels, fold.test)
                fold_measures = measures_for(config, fold, qrels)
                check_measures_fit_qrels(fold_measures, qrels, fold.folder)
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
                        result_folder.runs_dir(tmp, fold.folder).mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(work.run_file(fold.folder, kept), result_folder.run_path(tmp, fold.folder, slug))
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
                common = dict(names=done, baseline=baseline, test=config.get('test', 't'),
                              correction=correction if baseline is not None else None,   # nothing to correct without one
                              correction_alpha=float(config.get('correction_alpha', 0.05)), verbose=False)
                if seeds is None:
                    agg = pt.Experiment(results, topics, qrels, fold_measures, **common)
                    perq = pt.Experiment(results, topics, qrels, fold_measures, perquery=True, names=done, verbose=False)
                else:   # aggregated: seed-means (tests over queries on per-query seed-means); perquery: a seed column
                    agg, perq, meta['seed_results'][fold.folder] = _seed_tables(runs, topics, qrels, fold_measures,
                                                                                **common)
                result_folder.write_aggregated(tmp, fold.folder, agg)
                # JSON lines, not TSV: query texts holding tabs, quotes, newlines or U+2028 come back exactly as run
                result_folder.write_topics(tmp, fold.folder, topics)
                result_folder.write_perquery(tmp, fold.folder, perq)
                meta['timings'][fold.folder] = timings
                # results are grouped by dataset id + content fingerprint: two collections that share a folder name are
                # never compared with each other (the leaderboard keeps them in separate tables)
                meta['collections'].append({'name': fold.folder, 'dataset': test_ds.id, 'dataset_name': test_ds.name,
                                            'dataset_fingerprint': fingerprint, 'topics': test_split or fold.test,
                                            # the dataset trained on: a split of the experiment's, or
                                            # another one named in `train:` (irds:..., scifact)
                                            'train_dataset': _fold_data(dataset, fold.train)[0].id if fold.train else None,
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
            if config.get('knowedit'):   # the knowledge-editing study: its own sets, edits, fine-tuning and retrieval
                from ..analysis.knowedit import run_knowedit
                current = 'knowedit'
                meta['knowedit'] = run_knowedit(config['knowedit'], tmp, seed=seed, dry_run=dry_run)
        except Exception as e:  # noqa: BLE001 - training, topics or the analysis failed: nothing more can run
            where = f'{current}: ' if current in ('analysis', 'knowedit') else ''
            failures.append({'system': None, 'collection': None if current in ('analysis', 'knowedit') else current,
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
        result_folder.write_meta(tmp, meta)
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
