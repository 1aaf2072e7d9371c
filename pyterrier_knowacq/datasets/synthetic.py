"""A synthetic collection of any size, with an ir_datasets-style docstore: the data of the scale rehearsal.

``dataset: {synthetic: {passages: 1000000, queries: 2000, seed: 0}}`` in an experiment file (or
``get_dataset({'synthetic': {...}})``) names a collection generated deterministically from its parameters:

* **passages**: short texts (12-28 words) over a 50,000-word pseudo-vocabulary with Zipfian word frequencies, docnos
  ``"0"`` .. ``"N-1"``;
* **queries**: four words each, split into ``train`` / ``dev`` / ``test`` (``dev`` and ``test``: a tenth of the queries
  each unless given). Each query has one relevant passage (label 2) holding its two rare words, and one partially
  relevant passage (label 1) holding one of them, so BM25 finds them near the top, but not always first;
* a **teacher** in the released RankGPT format (``teacher: {coverage: 0.5, depth: 20}``): for a ``coverage`` share of
  the train queries, their BM25 top-``depth`` candidates (PISA over this corpus) with a simulated LLM's ordering
  (relevant first, then by word overlap, with noise; a few answers malformed as ChatGPT's sometimes are), written as
  ``marco-train-sim.jsonl`` + ``marco-train-sim-gpt3.5.json`` and converted by
  :func:`~pyterrier_knowacq.training.rankgpt_convert.convert_rankgpt` (texts matched against the corpus in one
  streaming pass, as for the real release). The converted run is the dataset's run ``rankgpt-sim`` of the ``train``
  split (``data: {teacher: rankgpt-sim}``); the conversion report is kept beside it (``conversion.json``). The teacher
  (and the PISA index it is retrieved with) is built by the experiment layer,
  :func:`pyterrier_knowacq.experiments.rehearsal_data.prepare_generated` (``knowacq run`` calls it before any
  training); this module generates and reads the collection, and reads the teacher once it is built.

The corpus is written once into the knowacq cache (``datasets/synthetic-.../``, keyed by the parameters and
:data:`GENERATOR_VERSION`, under a file lock, atomically): ``passages.txt`` (one passage a line) and ``offsets.u64``
(the byte offset of each line, and the file size). :meth:`SyntheticDataset.get_texts` looks a list of docnos up with
two ``pread`` calls per passage, like ir_datasets' ``docs_store().get_many``: memory does not grow with the corpus,
and nothing builds a whole-corpus dict (``_texts`` raises, as for ``irds:`` datasets). ``corpus_fingerprint()`` and
``fingerprint()`` are hashes of the parameters and the generator version (no corpus pass).

``passages_env: KNOWACQ_REHEARSAL_PASSAGES`` lets an environment variable (``20000``, ``100k``, ``1M``) replace
``passages``: one experiment file then runs at several sizes (the dataset id and fingerprints follow the size used).

Example::

    ds = get_dataset({'synthetic': {'passages': 100000, 'queries': 500, 'seed': 0}})
    ds.get_topics('test'), ds.get_qrels('test'), ds.get_texts(['17', '4242'])
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
from functools import cached_property
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import pandas as pd

from .._util import KnowacqError, atomic_directory, atomic_write_json, cache_dir
from .base import Dataset
from .irds import IrdsDataset
from .readers_trec import read_run
from .synthetic_corpus import (_CONSONANTS, _VOWELS, CHUNK, MAX_WORDS, MIN_WORDS, VOCABULARY,  # noqa: F401 - re-exported
                               _generate, _plan, _vocabulary, _zipf_cdf)

__all__ = ['SyntheticDataset', 'synthetic_dataset', 'GENERATOR_VERSION', 'TEACHER_RUN']

#: bump when the generated texts, queries or qrels change: every cache keyed by the fingerprints is then rebuilt
GENERATOR_VERSION = 1
#: the dataset run that holds the converted RankGPT-format teacher (train split only)
TEACHER_RUN = 'rankgpt-sim'

KEYS = {'passages', 'queries', 'seed', 'dev', 'test', 'teacher', 'name', 'passages_env'}
TEACHER_KEYS = {'coverage', 'depth'}
_FIX = ('write it as {synthetic: {passages: 1000000, queries: 2000, seed: 0}} (optional: dev, test, '
        'teacher: {coverage: 0.5, depth: 20}, name, passages_env)')


def _count(value, what: str, minimum: int) -> int:
    """A whole number from YAML or an environment variable (``100k``, ``1M`` and ``2.5e5`` read as numbers)."""
    text = str(value).strip().lower().replace('_', '')
    mult = {'k': 1_000, 'm': 1_000_000}.get(text[-1:], 1) if text else 1
    try:
        number = float(text[:-1] if mult > 1 else text) * mult
        ok = not isinstance(value, bool) and number == int(number)
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok or int(number) < minimum:
        raise KnowacqError(f'synthetic dataset: {what} is {value!r:.40}; write a whole number >= {minimum} (e.g. 100000, '
                           f'100k or 1M)')
    return int(number)


def _params(spec: Dict[str, Any]) -> Dict[str, Any]:
    """The checked parameters of a ``{synthetic: {...}}`` spec, with the defaults filled in."""
    if not isinstance(spec, dict):
        raise KnowacqError(f'synthetic dataset parameters {spec!r:.60} are not a mapping; {_FIX}')
    bad = sorted(set(spec) - KEYS, key=str)
    if bad:
        import difflib
        close = difflib.get_close_matches(str(bad[0]), sorted(KEYS), n=1)
        hint = f' (did you mean {close[0]!r}?)' if close else ''
        raise KnowacqError(f'synthetic dataset: unknown key {bad[0]!r}{hint}; allowed: {sorted(KEYS)}')
    for key in ('passages', 'queries'):
        if spec.get(key) is None:
            raise KnowacqError(f'synthetic dataset needs `{key}:`; {_FIX}')
    passages = spec['passages']
    env = spec.get('passages_env')
    if env is not None:
        if not isinstance(env, str) or not env.strip():
            raise KnowacqError(f'synthetic dataset: passages_env is {env!r:.40}; give the name of an environment variable, '
                               'e.g. KNOWACQ_REHEARSAL_PASSAGES')
        if os.environ.get(env, '').strip():
            passages = os.environ[env]
            what = f'passages (from ${env})'
        else:
            what = 'passages'
    else:
        what = 'passages'
    queries = _count(spec['queries'], 'queries', 10)
    out = {'passages': _count(passages, what, 100), 'queries': queries, 'seed': int(spec.get('seed', 0) or 0)}
    out['dev'] = _count(spec.get('dev', max(1, queries // 10)), 'dev', 1)
    out['test'] = _count(spec.get('test', max(1, queries // 10)), 'test', 1)
    if out['dev'] + out['test'] >= queries:
        raise KnowacqError(f'synthetic dataset: dev ({out["dev"]}) + test ({out["test"]}) leave no train queries of '
                           f'{queries}; lower them or raise queries')
    if 2 * queries > out['passages']:
        raise KnowacqError(f'synthetic dataset: {queries} queries need at least {2 * queries} passages (one relevant and '
                           f'one partially relevant each), not {out["passages"]}')
    teacher = spec.get('teacher') or {}
    if not isinstance(teacher, dict) or set(teacher) - TEACHER_KEYS:
        raise KnowacqError(f'synthetic dataset: teacher is {teacher!r:.60}; write it as {{coverage: 0.5, depth: 20}}')
    coverage = float(teacher.get('coverage', 0.5))
    if not 0 < coverage <= 1:
        raise KnowacqError(f'synthetic dataset: teacher coverage is {coverage!r}; write a share of the train queries in (0, 1]')
    out['teacher'] = {'coverage': coverage, 'depth': _count(teacher.get('depth', 20), 'teacher depth', 2)}
    name = spec.get('name')
    if name is not None and (not isinstance(name, str) or not name.strip() or '/' in name or ':' in name):
        raise KnowacqError(f'synthetic dataset: name {name!r:.40} must be a short label without "/" or ":"')
    out['name'] = name
    return out


def _hash(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _label(n: int) -> str:
    """``20000`` -> ``20k``, ``1000000`` -> ``1m``, ``123456`` -> ``123456``."""
    for unit, size in (('m', 1_000_000), ('k', 1_000)):
        if n % size == 0:
            return f'{n // size}{unit}'
    return str(n)


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock on ``path`` (created): concurrent builders (DDP ranks, parallel runs) build once."""
    import fcntl
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, 'a+') as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _stage(name: str):
    """A metered stage of the active resource log (``knowacq run`` records it in meta.json), else nothing."""
    try:
        from .._resources import stage
    except ImportError:   # pragma: no cover - the meter is optional here
        return contextlib.nullcontext()
    return stage(name)


class SyntheticDataset(IrdsDataset):
    """A generated collection read through a docstore (see the module docstring). It is an :class:`IrdsDataset` in
    behaviour (batched look-ups, ``known_docnos()`` is ``None``, ``_texts`` raises) without ir_datasets.

    Nothing is generated when the object is made (the preflight builds nothing): the docstore on the first read;
    the docstore, its PISA index and the teacher all at once with
    :func:`~pyterrier_knowacq.experiments.rehearsal_data.prepare_generated` (the runner calls it after the preflight,
    so that each build is metered as its own stage), which :meth:`get_run` of the teacher then reads."""
    #: runs built on first use: a preflight checks their names only (reading one would build the collection)
    generated_runs = (TEACHER_RUN,)

    def __init__(self, spec: Dict[str, Any]):   # noqa: D107 - no IrdsDataset.__init__: nothing to load from ir_datasets
        self.params = _params(spec)
        p = self.params
        self.name = p['name'] or f'synthetic-{_label(p["passages"])}-{_label(p["queries"])}q-s{p["seed"]}'
        self.splits = ('train', 'dev', 'test')
        self.irds_id = None

    # -- identity: the parameters and the generator version, never a pass over the corpus
    @property
    def id(self) -> str:
        return self.name

    @property
    def corpus_name(self) -> str:
        return self.name

    def _corpus_params(self) -> Dict[str, Any]:
        p = self.params   # the corpus holds the queries' injected words, so the query plan is part of it
        return {'version': GENERATOR_VERSION, 'passages': p['passages'], 'queries': p['queries'], 'seed': p['seed'],
                'vocabulary': VOCABULARY, 'words': [MIN_WORDS, MAX_WORDS]}

    def corpus_fingerprint(self) -> str:
        return _hash({'synthetic-corpus': self._corpus_params()})

    def fingerprint(self) -> str:
        p = self.params
        return _hash({'synthetic': self._corpus_params(), 'dev': p['dev'], 'test': p['test'], 'teacher': p['teacher']})

    def _check_split(self, split):
        return Dataset._check_split(self, split)

    def provenance(self) -> str:
        p = self.params
        return (f'Synthetic collection generated by pyterrier_knowacq.datasets.synthetic (generator version {GENERATOR_VERSION}) '
                f'from seed {p["seed"]}: {p["passages"]:,} passages of {MIN_WORDS}-{MAX_WORDS} words over a '
                f'{VOCABULARY:,}-word Zipfian pseudo-vocabulary, {p["queries"]:,} queries (train/dev/test '
                f'{p["queries"] - p["dev"] - p["test"]}/{p["dev"]}/{p["test"]}) with one relevant passage (label 2, its '
                'two rare words) and one partially relevant passage (label 1) each; teacher run '
                f'{TEACHER_RUN!r}: a simulated LLM ordering of the BM25 top-{p["teacher"]["depth"]} of '
                f'{p["teacher"]["coverage"]:.0%} of the train queries in the released RankGPT format, converted by '
                'training.rankgpt_convert. For scale rehearsals, not for effectiveness claims.')

    # -- the docstore
    @property
    def folder(self) -> Path:
        """The generated collection (built on first use, once per parameters and cache, under a lock)."""
        return self.prepare()

    def prepare(self, verbose: bool = True) -> Path:
        """Generate the collection into the cache unless it is there; returns its folder."""
        p = self.params
        target = cache_dir('datasets') / f'synthetic-{_label(p["passages"])}-{self.corpus_fingerprint()}'
        if (target / 'meta.json').exists():
            return target
        with _locked(target.with_name(target.name + '.lock')):
            if (target / 'meta.json').exists():
                return target
            with _stage(f'data: synthetic corpus ({p["passages"]:,} passages)'):
                started = time.time()
                if verbose:
                    print(f'[knowacq] {self.name}: generating {p["passages"]:,} passages and {p["queries"]:,} queries '
                          f'into {target}', file=sys.stderr, flush=True)
                with atomic_directory(target, overwrite=True) as tmp:
                    _generate(tmp, p['passages'], p['queries'], p['seed'])
                    atomic_write_json(tmp / 'meta.json', {'generator_version': GENERATOR_VERSION,
                                                          **self._corpus_params(),
                                                          'seconds': round(time.time() - started, 2)})
        return target

    @property
    def _texts(self):
        raise KnowacqError(f'{self.name}: refusing to load the whole corpus into memory (dataset._texts); look texts up '
                           'in batches with dataset.get_texts(docnos), and use dataset.known_docnos() (None: all known)')

    def _files(self):
        """Open file descriptors of (passages, offsets), per process (a forked or spawned rank opens its own)."""
        folder = self.folder
        owner = (os.getpid(), str(folder))
        fds = self.__dict__.get('_fds')
        if fds is None or fds[0] != owner:
            if fds is not None and fds[0][0] == owner[0]:
                for fd in fds[1:]:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            fds = (owner, os.open(folder / 'passages.txt', os.O_RDONLY), os.open(folder / 'offsets.u64', os.O_RDONLY))
            self.__dict__['_fds'] = fds
        return fds[1], fds[2]

    def find_texts(self, docnos) -> List[Optional[str]]:
        """The text of each docno (``None`` where the corpus has none): two ``pread`` calls per distinct passage, in
        file order."""
        docnos = list(docnos)
        n = self.params['passages']
        wanted = {}
        for d in docnos:
            s = str(d)
            if s not in wanted:
                wanted[s] = int(s) if s.isdigit() and (len(s) == 1 or s[0] != '0') and int(s) < n else None
        text_fd, off_fd = self._files()
        found: Dict[str, str] = {}
        for d, i in sorted(((d, i) for d, i in wanted.items() if i is not None), key=lambda x: x[1]):
            start, end = np.frombuffer(os.pread(off_fd, 16, 8 * i), dtype='<u8')
            found[d] = os.pread(text_fd, int(end - start) - 1, int(start)).decode('utf-8')
        return [found.get(str(d)) for d in docnos]

    def get_corpus_iter(self, verbose: bool = False) -> Iterator[Dict[str, str]]:
        """Every passage in docno order, streamed from the docstore file (memory flat in the corpus size)."""
        with open(self.folder / 'passages.txt', 'r', encoding='utf-8', newline='\n') as f:
            for i, line in enumerate(f):
                yield {'docno': str(i), 'text': line[:-1]}

    # -- topics and qrels (small: they grow with the queries, not the corpus)
    @cached_property
    def _queries(self) -> pd.DataFrame:
        df = pd.read_csv(self.folder / 'topics.tsv', sep='\t', dtype=str, keep_default_na=False)
        q, dev, test = self.params['queries'], self.params['dev'], self.params['test']
        df['split'] = ['train'] * (q - dev - test) + ['dev'] * dev + ['test'] * test
        return df

    @cached_property
    def _all_qrels(self) -> pd.DataFrame:
        df = pd.read_csv(self.folder / 'qrels.tsv', sep='\t', dtype={'qid': str, 'docno': str, 'label': int})
        return df

    def get_topics(self, split=None) -> pd.DataFrame:
        split = self._check_split(split)
        df = self._queries
        return df.loc[df['split'] == split, ['qid', 'query']].reset_index(drop=True)

    def get_qrels(self, split=None) -> pd.DataFrame:
        qids = set(self.get_topics(split)['qid'])
        df = self._all_qrels
        return df[df['qid'].isin(qids)].reset_index(drop=True)

    # -- the teacher
    def run_names(self, split=None) -> List[str]:
        return [TEACHER_RUN] if split in (None, 'train') else []

    def get_run(self, name: str, split=None) -> pd.DataFrame:
        if name != TEACHER_RUN:
            return super(IrdsDataset, self).get_run(name, split)   # no shipped runs: bm25 is PISA over the corpus
        if split not in (None, 'train'):
            raise KnowacqError(f'{self.name}: the teacher run {TEACHER_RUN!r} covers train queries only, not split '
                               f'{split!r}; train on the train split')
        return read_run(self.teacher_folder() / f'{TEACHER_RUN}.trec')

    def teacher_report(self) -> Dict[str, Any]:
        """The conversion report of the teacher (``queries_written``, ``passages_mapped``, coverage of the train
        queries, ...), once the teacher is built (see :meth:`teacher_folder`)."""
        return json.loads((self.teacher_folder() / 'conversion.json').read_text(encoding='utf-8'))

    def teacher_folder(self) -> Path:
        """The RankGPT-format teacher files and their conversion, once built (by
        :func:`~pyterrier_knowacq.experiments.rehearsal_data.build_teacher`, which ``knowacq run`` calls before any
        training); a teacher not built yet is a :class:`KnowacqError` that says so."""
        target = self.teacher_target()
        if not (target / 'conversion.json').exists():
            raise KnowacqError(f'{self.name}: the teacher run {TEACHER_RUN!r} is not built yet; build it with '
                               'pyterrier_knowacq.experiments.rehearsal_data.build_teacher(dataset) (knowacq run builds '
                               'it before any training)')
        return target

    def teacher_target(self) -> Path:
        """Where the teacher of these parameters lies once built (keyed by the teacher parameters and the dataset)."""
        t = self.params['teacher']
        key = _hash({'teacher': t, 'dataset': self.fingerprint(), 'converter': 1})
        return self.folder / f'teacher-{key}'


def synthetic_dataset(spec: Dict[str, Any]) -> SyntheticDataset:
    """The dataset of a ``{synthetic: {...}}`` spec (parameters checked; nothing is generated until first use)."""
    return SyntheticDataset(spec)
