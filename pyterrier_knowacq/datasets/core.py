"""Datasets the PyTerrier way: topics, qrels, a corpus iterator, text lookup and precomputed runs.

Embedded collections ship inside the package (compressed, each with its ``PROVENANCE.md``): ``msmarco-passage``
(TREC DL19 + DL20 slice with graded qrels, 31k passage texts, first-stage runs and LLM teacher orderings),
``msmarco-passage-train``, ``scifact``, ``nfcorpus``, ``vaswani``, ``cranfield`` and ``nq-dpr-sample``. Any BEIR-layout
folder works as ``beir:/path/to/folder`` and any ir_datasets id as ``irds:<id>`` (where the network allows).

Example::

    ds = get_dataset('msmarco-passage')
    pipeline = ds.run_transformer('bm25') >> ds.text_loader() >> cross_encoder
    pt.Experiment([pipeline], ds.get_topics('dl19'), ds.get_qrels('dl19'), ['nDCG@10'])
"""
from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pandas as pd
import pyterrier as pt

from .._util import KnowacqError
from .readers import (_read_lines, _resolve, iter_beir_corpus, open_text, read_beir_qrels,  # noqa: F401 - re-exported
                      read_beir_queries, read_jsonl, read_run, read_trec_qrels, read_tsv_topics)

__all__ = ['Dataset', 'BeirDataset', 'MsMarcoPassage', 'MsMarcoTrain', 'IrdsDataset', 'DATASETS', 'get_dataset',
           'TextLoader', 'RunTransformer', 'read_run']

DATA_DIR = Path(__file__).resolve().parents[1] / 'data'  # pyterrier_knowacq/data: the embedded collections


class Dataset:
    """Base class of every collection. Subclasses fill in the readers."""
    name: str = ''
    splits: tuple = ()

    def __repr__(self):
        return f'{type(self).__name__}({self.name!r})'

    def _check_split(self, split: Optional[str]) -> str:
        split = split or (self.splits[-1] if self.splits else 'test')
        if self.splits and split not in self.splits:
            raise KnowacqError(f'dataset {self.name!r} has no split {split!r}; choose one of {list(self.splits)}')
        return split

    # -- to implement
    def get_topics(self, split: Optional[str] = None) -> pd.DataFrame:
        raise NotImplementedError

    def get_qrels(self, split: Optional[str] = None) -> pd.DataFrame:
        raise NotImplementedError

    def get_corpus_iter(self, verbose: bool = False) -> Iterator[Dict[str, str]]:
        raise NotImplementedError

    def provenance(self) -> str:
        return ''

    # -- shared behaviour
    @cached_property
    def _texts(self) -> Dict[str, str]:
        """The whole corpus as a dict: only for the small corpora that ship or sit in a folder (``IrdsDataset`` refuses
        it). Callers should look texts up with :meth:`get_texts` (a list at a time) instead."""
        return {d['docno']: d['text'] for d in self.get_corpus_iter()}

    def find_texts(self, docnos) -> List[Optional[str]]:
        """The text of each docno, ``None`` where the corpus has none (one batched look-up)."""
        texts = self._texts
        return [texts.get(d) for d in docnos]

    def get_texts(self, docnos) -> List[str]:
        """The text of each docno of a list, in order: the batched look-up every training and scoring path uses
        (call it with many docnos at once; an ``irds:`` docstore is read with one ``get_many`` per call)."""
        docnos = list(docnos)
        texts = self.find_texts(docnos)
        missing = [d for d, t in zip(docnos, texts) if t is None]
        if missing:
            raise KnowacqError(f'{len(missing)} docno(s) have no text in dataset {self.name!r} (first: {missing[0]!r}); '
                               'the run and the corpus do not match — use a run over this corpus')
        return texts

    def known_docnos(self):
        """The set of docnos that have text, for filtering candidates; ``None`` where the corpus is too large to list
        (``irds:``): every docno is then assumed known and a missing one fails at :meth:`get_texts`."""
        return self._texts.keys()

    @property
    def corpus_name(self) -> str:
        """A readable label of the corpus for cache folder names (the content key is :meth:`corpus_fingerprint`)."""
        return self.name

    def text_loader(self, fields='*', *, verbose: bool = False, field: Optional[str] = None) -> 'TextLoader':
        """Adds document fields by docno (``pyterrier.HasTextLoader``): ``'*'`` (every field) or ``'text'``, the one
        field a corpus here has; ``pt.text.get_text(dataset, 'text')`` calls it. ``field=`` is the old name of the
        argument (deprecated)."""
        if field is not None:
            import warnings
            warnings.warn("text_loader(field=...) is deprecated; pass the field as the first argument: "
                          "text_loader('text')", DeprecationWarning, stacklevel=2)
            fields = field
        return TextLoader(self, fields, verbose=verbose)

    def run_names(self, split: Optional[str] = None) -> List[str]:
        return []

    def get_run(self, name: str, split: Optional[str] = None) -> pd.DataFrame:
        raise KnowacqError(f'dataset {self.name!r} ships no precomputed runs; available: {self.run_names(split) or "none"}')

    def run_transformer(self, name: str, k: Optional[int] = None) -> 'RunTransformer':
        return RunTransformer(self, name, k)

    # -- identity: what results are grouped by, and what every cache built from the data is keyed by
    @property
    def id(self) -> str:
        """A unique, stable id: results of two datasets with different ids are never compared with each other.

        Embedded datasets use their name; a BEIR folder uses the name given to it (``{beir: path, name: cisi}``) or its
        base name plus a hash of its resolved path and content; ``irds:`` datasets their whole id."""
        return self.name

    def corpus_fingerprint(self) -> str:
        """A hash of the corpus *content* (indexes and encodings are keyed by it, never by a name: two collections
        that share a folder name never share an index, and one whose files change is re-indexed)."""
        from .._util import content_fingerprint
        files = self._corpus_files()
        if files is None:   # no files to hash (a dataset defined in code): hash the documents themselves
            return _hash_records((d['docno'], d['text']) for d in self.get_corpus_iter())
        return content_fingerprint(files, type(self).__name__)

    def fingerprint(self) -> str:
        """A hash of everything the dataset reads (corpus, topics, qrels, shipped runs): trained models, teacher runs and
        the leaderboard's tables are keyed by it."""
        from .._util import content_fingerprint
        files = self._data_files()
        if files is None:
            parts = [self.corpus_fingerprint()]
            for split in self.splits or (None,):
                parts.append(_hash_records(map(tuple, self.get_topics(split)[['qid', 'query']].astype(str).values)))
                parts.append(_hash_records(map(tuple, self.get_qrels(split)[['qid', 'docno', 'label']].astype(str).values)))
            return _hash_records([parts])
        return content_fingerprint(files, type(self).__name__)

    def _corpus_files(self) -> Optional[List[Path]]:
        """The files the corpus is read from (``None``: hash the documents instead)."""
        return None

    def _data_files(self) -> Optional[Dict[str, Path]]:
        """``{path relative to the dataset root: path}`` of every data file: every file under ``root`` where the dataset
        has one (``None``: hash the corpus, topics and qrels instead)."""
        root = getattr(self, 'root', None)
        if root is None:
            return None
        root = Path(root)
        return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob('*'))
                if p.is_file() and not p.name.startswith('.') and p.name != 'PROVENANCE.md'}


def _hash_records(records) -> str:
    """A short hash of a sequence of string tuples (unambiguous: fields and records are delimited)."""
    import hashlib
    h = hashlib.sha1()
    for rec in records:
        for field in rec:
            h.update(str(field).encode('utf-8', 'surrogateescape') + b'\0')
        h.update(b'\1')
    return h.hexdigest()[:16]


class TextLoader(pt.Transformer):
    """Adds the ``text`` of each ``docno`` from a dataset's corpus, for ``>>`` before a neural re-ranker.

    Follows ``pyterrier.HasTextLoader``: ``fields`` is ``'*'`` (every field) or the names of the fields to load, and
    the corpora here have one field, ``text``; so ``pt.text.get_text(dataset)`` and ``pt.text.get_text(dataset,
    'text')`` both add a ``text`` column. A list naming another field raises; a single other name (the old meaning: the
    column to put the text in) still works this release, with a ``DeprecationWarning``.

    Example::

        bm25 >> dataset.text_loader() >> CrossEncoder.from_pretrained('my-model')
    """
    schematic = {'label': 'TextLoader'}
    #: the fields a corpus here has
    FIELDS = ('text',)

    def __init__(self, dataset: Dataset, fields='*', *, verbose: bool = False, field: Optional[str] = None):
        if field is not None:   # the old keyword: TextLoader(dataset, field='text')
            fields = field
        names = list(self.FIELDS) if fields == '*' else [fields] if isinstance(fields, str) else list(fields)
        unknown = [f for f in names if f not in self.FIELDS]
        if unknown and isinstance(fields, str):
            import warnings
            warnings.warn(f'text_loader({fields!r}): the corpus has no field {fields!r} (its only field is "text"); the '
                          f'text is put in a column {fields!r} this release, and an unknown field raises in the next (as '
                          "PyTerrier's text loaders do). Use text_loader('text') >> pt.apply.rename({'text': "
                          f'{fields!r}}})', DeprecationWarning, stacklevel=3)
            self.columns = {fields: 'text'}
        elif unknown or not names:
            raise KnowacqError(f'dataset {dataset.name!r} has no field(s) {unknown or names}; its corpus has '
                               f'{list(self.FIELDS)} (or ask for every field with "*")')
        else:
            self.columns = {name: name for name in names}
        self.dataset = dataset
        self.fields = list(self.columns)
        self.field = self.fields[0]
        self.verbose = verbose

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        import pyterrier_alpha as pta
        pta.validate.columns(inp, includes=['docno'])
        out = inp.copy()
        texts = self.dataset.get_texts(out['docno'].tolist()) if len(out) else pd.Series([], dtype=object)
        for column in self.columns:
            out[column] = texts
        return out

    def fuse_rank_cutoff(self, k: int):
        """``(... >> text_loader) % k`` cuts before loading (``compile()``), so no text is loaded for dropped rows."""
        return pt.RankCutoff(k) >> self

    def __repr__(self):
        return f'{self.dataset.name}.text_loader(' + ('' if self.fields == ['text'] else repr(self.fields)) + ')'

    def __eq__(self, other):
        return isinstance(other, TextLoader) and other.dataset.id == self.dataset.id and other.columns == self.columns

    def __hash__(self):
        return hash(('TextLoader', self.dataset.id, tuple(self.columns.items())))


class RunTransformer(pt.Transformer):
    """A precomputed run as a first stage: returns, for each input query, that query's ranked list.

    Example::

        ds.run_transformer('bm25') >> ds.text_loader() >> reranker
    """

    def __init__(self, dataset: Dataset, name: str, k: Optional[int] = None):
        self.dataset = dataset
        self.name = name
        self.k = k

    @cached_property
    def _run(self) -> pd.DataFrame:
        runs = [self.dataset.get_run(self.name, split) for split in self.dataset.splits
                if self.name.split(':')[0] in [n.split(':')[0] for n in self.dataset.run_names(split)]]
        if not runs:
            raise KnowacqError(f'dataset {self.dataset.name!r} has no run {self.name!r}; available: {self.dataset.run_names()}')
        return pd.concat(runs, ignore_index=True)

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        import pyterrier_alpha as pta
        pta.validate.query_frame(inp, extra_columns=['query'])
        run = self._run
        if self.k is not None:
            run = run[run['rank'] < self.k]
        missing = set(inp['qid']) - set(run['qid'])
        if missing:
            raise KnowacqError(f'run {self.name!r} of {self.dataset.name!r} has no results for {len(missing)} of the topics '
                               f'(e.g. qid {sorted(missing)[0]!r}); use topics the run covers')
        out = inp[['qid', 'query']].merge(run, on='qid')
        if out.empty:
            return pd.DataFrame(columns=['qid', 'query', 'docno', 'score', 'rank'])
        return out.sort_values(['qid', 'rank']).reset_index(drop=True)

    def fuse_rank_cutoff(self, k: int) -> 'RunTransformer':
        """``run % k`` (after ``compile()``) returns the top ``k`` of each query's list directly; a run already cut
        at ``k`` or less is kept as it is."""
        if self.k is not None and self.k <= k:
            return self
        return RunTransformer(self.dataset, self.name, k)

    def __repr__(self):
        return f'run({self.name!r}' + (f', k={self.k}' if self.k else '') + ')'

    def __eq__(self, other):
        return isinstance(other, RunTransformer) and (other.dataset.id, other.name, other.k) == (self.dataset.id, self.name, self.k)

    def __hash__(self):
        return hash(('RunTransformer', self.dataset.id, self.name, self.k))


class MsMarcoPassage(Dataset):
    """The embedded TREC DL 2019 + 2020 passage slice (splits ``dl19``, ``dl20``, ``dev-small`` topics only)."""
    name = 'msmarco-passage'
    splits = ('dl19', 'dl20')
    FIRST_STAGES = ('bm25', 'bm25-rm3', 'tasb', 'splade-pp-ed', 'openai-ada2', 'repllama')

    def __init__(self, root: Path = DATA_DIR / 'msmarco-passage'):
        self.root = Path(root)

    def _check_split(self, split):
        if split == 'dev-small':
            return split
        return super()._check_split(split)

    def get_topics(self, split=None):
        return read_tsv_topics(self.root / 'queries' / f'{self._check_split(split)}.tsv')

    def get_qrels(self, split=None):
        return read_trec_qrels(self.root / 'qrels' / f'{self._check_split(split)}.qrels')

    def _corpus_files(self):
        return [_resolve(self.root / 'collection' / 'passages.tsv')]

    def get_corpus_iter(self, verbose=False):
        for line in _read_lines(self.root / 'collection' / 'passages.tsv'):
            docno, _, text = line.partition('\t')
            if docno:
                yield {'docno': docno, 'text': text}

    def provenance(self):
        return (self.root / 'PROVENANCE.md').read_text()

    def run_names(self, split=None):
        return list(self.FIRST_STAGES) + ['rankgpt-3.5', 'rankgpt-3.5:run1..run5', 'rankvicuna-7b', 'rankvicuna-7b:<first stage>']

    def _run_path(self, name: str, split: str) -> Path:
        base, _, variant = name.partition(':')
        runs = self.root / 'runs'
        if base in self.FIRST_STAGES and not variant:
            return runs / 'first-stage' / f'{base}.{split}.top100.trec'
        if base == 'rankgpt-3.5':
            return runs / 'llm-rerankers' / f'rankgpt-gpt-3.5-turbo.bm25-top100.{split}.{variant or "run1"}.trec'
        if base == 'rankvicuna-7b':
            return runs / 'llm-rerankers' / f'rankvicuna-7b.{variant or "bm25"}-top100.{split}.trec'
        raise KnowacqError(f'msmarco-passage has no run {name!r}; choose one of {self.run_names()}')

    def get_run(self, name, split=None):
        split = self._check_split(split)
        return read_run(self._run_path(name, split))


class MsMarcoTrain(Dataset):
    """MS MARCO training-side texts: 620 dev-small queries with a positive passage each (split ``dev-small-positives``).

    The raw training triples (110 queries) are available through :meth:`train_records`.
    """
    name = 'msmarco-passage-train'
    splits = ('dev-small-positives',)

    def __init__(self, root: Path = DATA_DIR / 'msmarco-passage-train'):
        self.root = Path(root)

    def _pairs(self):
        path = _resolve(self.root / 'dev-small-positives' / 'dev-small.positives.tsv')
        rows = []
        for n, line in enumerate(_read_lines(path), 1):
            if not line.strip():
                continue
            r = line.split('\t')
            if len(r) < 4:
                raise KnowacqError(f'{path}:{n}: has {len(r)} tab-separated field(s), not 4; write each line as '
                                   'qid<TAB>docno<TAB>query<TAB>passage text')
            rows.append(r[:4])
        return pd.DataFrame(rows, columns=['qid', 'docno', 'query', 'text'])

    def get_topics(self, split=None):
        self._check_split(split)
        return self._pairs()[['qid', 'query']].drop_duplicates('qid').reset_index(drop=True)

    def get_qrels(self, split=None):
        self._check_split(split)
        df = self._pairs()[['qid', 'docno']].copy()
        df['label'] = 1
        return df

    def _corpus_files(self):
        return [_resolve(self.root / 'dev-small-positives' / 'passages.tsv')]

    def get_corpus_iter(self, verbose=False):
        for line in _read_lines(self.root / 'dev-small-positives' / 'passages.tsv'):
            docno, _, text = line.partition('\t')
            if docno:
                yield {'docno': docno, 'text': text}

    def train_records(self) -> List[dict]:
        """``{query, pos: [...], neg: [...], (pos_scores, neg_scores)}`` records of the 110 MS MARCO train queries."""
        return read_jsonl(self.root / 'combined' / 'train.jsonl', '{"query": "...", "pos": ["..."], "neg": ["..."]}')

    def provenance(self):
        return (self.root / 'PROVENANCE.md').read_text()


class BeirDataset(Dataset):
    """A BEIR-layout folder: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv`` (optionally gzipped)."""

    def __init__(self, root, name: Optional[str] = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise KnowacqError(f'BEIR folder {self.root} does not exist; give a folder holding corpus.jsonl, queries.jsonl and qrels/')
        for needed in ('corpus.jsonl', 'queries.jsonl'):
            _resolve(self.root / needed)
        if name is not None and (not isinstance(name, str) or not name.strip() or '/' in name or name.startswith(('beir:', 'irds:'))):
            raise KnowacqError(f'BEIR dataset name {name!r} must be a short non-empty label without "/" (e.g. cisi)')
        self._given_name = name
        self.name = name or self.root.name
        qrels = self.root / 'qrels'
        self.splits = tuple(sorted({p.name.split('.')[0] for p in qrels.glob('*.tsv*')})) if qrels.is_dir() else ()
        if not self.splits:
            raise KnowacqError(f'{self.root}/qrels holds no <split>.tsv files; BEIR folders need qrels to evaluate')

    @cached_property
    def id(self) -> str:
        """The given name, else ``<folder name>-<hash of resolved path and content>``: BEIR's own layout names every
        folder after the collection's parent, so two collections in folders called ``beir`` must not share an id."""
        if self._given_name:
            return self._given_name
        import hashlib
        key = hashlib.sha1(f'{self.root.resolve()}|{self.fingerprint()}'.encode('utf-8', 'surrogateescape')).hexdigest()[:8]
        return f'{self.root.resolve().name}-{key}'

    def _check_split(self, split):
        if split is None:
            return 'test' if 'test' in self.splits else self.splits[-1]
        return super()._check_split(split)

    @cached_property
    def _queries(self) -> Dict[str, str]:
        return read_beir_queries(self.root / 'queries.jsonl')

    def get_qrels(self, split=None):
        return read_beir_qrels(self.root / 'qrels' / f'{self._check_split(split)}.tsv')

    def get_topics(self, split=None):
        qids = self.get_qrels(split)['qid'].unique()
        queries = self._queries
        return pd.DataFrame([(q, queries[q]) for q in qids if q in queries], columns=['qid', 'query'])

    def _corpus_files(self):
        return [_resolve(self.root / 'corpus.jsonl')]

    def get_corpus_iter(self, verbose=False):
        yield from iter_beir_corpus(self.root / 'corpus.jsonl')

    def provenance(self):
        p = self.root / 'PROVENANCE.md'
        return p.read_text() if p.exists() else f'BEIR folder {self.root}'


class IrdsDataset(Dataset):
    """Any ir_datasets id (``irds:msmarco-passage/trec-dl-2019/judged``); needs the network to download.

    Corpora here run to millions of documents, so nothing loads one into memory: texts are looked up in the docstore
    (opened once per dataset object) with one batched ``get_many`` per :meth:`get_texts` call, at most
    :attr:`GET_MANY_BATCH` docnos at a time; :attr:`_texts` (a dict of the whole corpus) raises instead.
    """
    #: the most docnos asked of the docstore in one ``get_many`` (bounds the memory of one look-up)
    GET_MANY_BATCH = 100_000

    def __init__(self, irds_id: str):
        import ir_datasets
        self.name = f'irds:{irds_id}'
        try:
            self._ds = ir_datasets.load(irds_id)
        except KeyError as e:
            raise KnowacqError(f'unknown ir_datasets id {irds_id!r}; see https://ir-datasets.com for the list') from e
        self.irds_id = irds_id
        self.splits = ()

    @cached_property
    def docs_parent(self) -> str:
        """The id of the ir_datasets dataset that provides the documents (``msmarco-passage`` for
        ``msmarco-passage/train``); the dataset's own id where ir_datasets cannot tell."""
        import ir_datasets
        try:
            return ir_datasets.docs_parent_id(self.irds_id) or self.irds_id
        except Exception:  # noqa: BLE001 - older ir_datasets: the dataset's own id is still a correct (finer) key
            return self.irds_id

    @property
    def corpus_name(self) -> str:
        return f'irds:{self.docs_parent}'

    def corpus_fingerprint(self) -> str:
        """An ir_datasets id names fixed, checksummed data, so the id of the dataset that provides the documents keys
        the corpus (``msmarco-passage/trec-dl-2019`` and ``msmarco-passage/train`` share one index); never iterates it."""
        import hashlib
        return hashlib.sha1(f'irds-docs:{self.docs_parent}'.encode()).hexdigest()[:16]

    def fingerprint(self) -> str:
        import hashlib
        return hashlib.sha1(f'irds:{self.irds_id}'.encode()).hexdigest()[:16]

    def _check_split(self, split):
        return split

    def _guard(self, fn):
        try:
            return fn()
        except Exception as e:  # ir_datasets raises many kinds of download errors
            raise KnowacqError(f'{self.name}: could not read the data ({type(e).__name__}: {e}); ir_datasets downloads need '
                               'the network — offline, use an embedded dataset or a beir:/path folder') from e

    def get_topics(self, split=None):
        return self._guard(lambda: pd.DataFrame([(q.query_id, getattr(q, 'text', None) or q[1]) for q in self._ds.queries_iter()],
                                                columns=['qid', 'query']))

    def get_qrels(self, split=None):
        return self._guard(lambda: pd.DataFrame([(q.query_id, q.doc_id, int(q.relevance)) for q in self._ds.qrels_iter()],
                                                columns=['qid', 'docno', 'label']))

    def get_corpus_iter(self, verbose=False):
        for d in self._guard(self._ds.docs_iter):
            yield {'docno': d.doc_id, 'text': getattr(d, 'text', '') or ''}

    @property
    def _texts(self):
        raise KnowacqError(f'{self.name}: refusing to load the whole corpus into memory (dataset._texts); look texts up '
                           'in batches with dataset.get_texts(docnos), and use dataset.known_docnos() (None: all known)')

    def known_docnos(self):
        return None

    @cached_property
    def _store(self):
        """The docstore, opened once (opening it per look-up costs far more than the look-up)."""
        return self._guard(self._ds.docs_store)

    def find_texts(self, docnos) -> List[Optional[str]]:
        docnos = list(docnos)
        found: Dict[str, str] = {}
        unique = list(dict.fromkeys(docnos))
        for i in range(0, len(unique), self.GET_MANY_BATCH):
            docs = self._guard(lambda chunk=unique[i:i + self.GET_MANY_BATCH]: self._store.get_many(chunk))
            for d, doc in docs.items():
                found[d] = getattr(doc, 'text', '') or ''
        return [found.get(d) for d in docnos]

    def provenance(self):
        return f'ir_datasets {self.name[5:]} (documentation: https://ir-datasets.com)'


DATASETS = {
    'msmarco-passage': MsMarcoPassage,
    'msmarco-passage-train': MsMarcoTrain,
    **{name: (lambda n=name: BeirDataset(DATA_DIR / n, n)) for name in ('scifact', 'nfcorpus', 'vaswani', 'cranfield', 'nq-dpr-sample')},
}

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
        elif name in DATASETS:
            _CACHE[key] = DATASETS[name]()
        else:
            import difflib
            close = difflib.get_close_matches(name, list(DATASETS), n=1)
            hint = f' (did you mean {close[0]!r}?)' if close else ''
            raise KnowacqError(f'unknown dataset {name!r}{hint}; {_SPEC_HELP}')
    return _CACHE[key]
