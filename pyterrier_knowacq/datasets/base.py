"""The :class:`Dataset` base class every collection derives from, and the two transformers it gives:
:class:`TextLoader` (``dataset.text_loader()``) and :class:`RunTransformer` (``dataset.run_transformer('bm25')``).

Example::

    pipeline = ds.run_transformer('bm25') >> ds.text_loader() >> cross_encoder
"""
from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pandas as pd
import pyterrier as pt

from .._util import KnowacqError

__all__ = ['Dataset', 'TextLoader', 'RunTransformer']


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
