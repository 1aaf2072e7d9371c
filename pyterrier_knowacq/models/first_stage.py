"""First-stage retrievers: PISA BM25 over any dataset's corpus, Terrier BM25 when Java is present, precomputed runs.

Example::

    bm25 = PisaBM25('msmarco-passage', num_results=100)
    pipeline = bm25 >> get_dataset('msmarco-passage').text_loader() >> cross_encoder
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
from functools import cached_property

import pandas as pd
import pyterrier as pt

from .._util import KnowacqError, atomic_write_text, cache_dir
from ..datasets.core import Dataset, get_dataset

__all__ = ['PisaBM25', 'TerrierBM25', 'pisa_index', 'named_run']


@contextlib.contextmanager
def _quiet_native():
    """PISA's C++ engine logs every step to the process's stdout/stderr; keep the console readable."""
    import sys
    try:
        saved = [os.dup(1), os.dup(2)]
    except OSError:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    with open(os.devnull, 'w') as devnull:
        os.dup2(devnull.fileno(), 1)
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def index_threads() -> int:
    """Threads for building an index: every core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def pisa_index(dataset, verbose: bool = False):
    """The cached PISA index of a dataset's corpus, built on first use (with every core) and rebuilt when the corpus
    changes. One index per corpus content: evaluation (:class:`PisaBM25`), training-time BM25 (:func:`named_run`) and
    the negatives of extra training data (``training.examples``) all use it."""
    from pyterrier_pisa import PisaIndex
    dataset = get_dataset(dataset)
    # keyed by the corpus content, never by the dataset's name: two collections in folders called `beir` get two
    # indexes, and one corpus reached through two names (e.g. irds ids sharing their documents) gets one
    fingerprint = dataset.corpus_fingerprint()
    safe = re.sub(r'[^A-Za-z0-9._-]+', '_', getattr(dataset, 'corpus_name', dataset.name)).strip('_')[-40:] or 'corpus'
    folder = cache_dir('indexes') / f'pisa-{safe}-{fingerprint}'
    stamp = folder / 'knowacq.fingerprint'
    if not (stamp.exists() and stamp.read_text() == fingerprint):
        shutil.rmtree(folder, ignore_errors=True)
        tmp = folder.with_name(folder.name + '.partial')
        shutil.rmtree(tmp, ignore_errors=True)
        docs = ({'docno': d['docno'], 'text': d['text']} for d in dataset.get_corpus_iter())
        with _quiet_native() if not verbose else contextlib.nullcontext():
            PisaIndex(str(tmp), text_field='text', threads=index_threads()).index(docs)
        atomic_write_text(tmp / 'knowacq.fingerprint', fingerprint)
        os.replace(tmp, folder)
    return PisaIndex(str(folder), text_field='text')


class PisaBM25(pt.Transformer):
    """BM25 with the PISA engine over a dataset's corpus (index built once and cached).

    Example::

        PisaBM25('scifact', num_results=100) >> get_dataset('scifact').text_loader() >> reranker

    Args:
        dataset: a dataset name (see :func:`~pyterrier_knowacq.datasets.core.get_dataset`) or object.
        num_results: depth of the ranking.
        k1, b: BM25 parameters (PISA's defaults 0.9 / 0.4, as Anserini).
    """

    def __init__(self, dataset, num_results: int = 1000, k1: float = 0.9, b: float = 0.4):
        self.dataset: Dataset = get_dataset(dataset)
        self.num_results = int(num_results)
        self.k1, self.b = float(k1), float(b)

    @cached_property
    def _retriever(self):
        return pisa_index(self.dataset).bm25(k1=self.k1, b=self.b, num_results=self.num_results)

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        import pyterrier_alpha as pta
        pta.validate.query_frame(inp, extra_columns=['query'])
        if inp.empty:
            return pd.DataFrame(columns=list(inp.columns) + ['docno', 'score', 'rank'])
        with _quiet_native():
            return self._retriever(inp)

    def fuse_rank_cutoff(self, k: int) -> 'PisaBM25':
        """``bm25 % k`` (after ``compile()``) retrieves ``k`` per query from PISA instead of ``num_results`` and then
        cutting; a retriever that already stops at ``k`` or fewer is kept as it is."""
        if k >= self.num_results:
            return self
        return PisaBM25(self.dataset, num_results=k, k1=self.k1, b=self.b)

    def __repr__(self):
        return f'PisaBM25({self.dataset.name!r}, num_results={self.num_results})'

    def _key(self):
        return (self.dataset.name, self.num_results, self.k1, self.b)

    def __eq__(self, other):
        return isinstance(other, PisaBM25) and other._key() == self._key()

    def __hash__(self):
        return hash(('PisaBM25',) + self._key())


def TerrierBM25(dataset, num_results: int = 1000):
    """Terrier's BM25 (needs Java and the Terrier jars, which are downloaded from Maven: not possible offline)."""
    try:
        if not pt.java.started():
            pt.java.init()
        import pyterrier.terrier  # noqa: F401
    except Exception as e:
        raise KnowacqError(f'Terrier BM25 needs Java and the Terrier jars ({type(e).__name__}: {e}); '
                           'offline, use the `bm25` stage (PISA) instead') from e
    dataset = get_dataset(dataset)
    folder = cache_dir('indexes') / f'terrier-{dataset.name.replace("/", "_").replace(":", "_")}-{dataset.corpus_fingerprint()}'
    if not (folder / 'data.properties').exists():
        pt.IterDictIndexer(str(folder), meta={'docno': 64}).index(dataset.get_corpus_iter())
    return pt.terrier.Retriever(str(folder), wmodel='BM25', num_results=num_results)


def named_run(dataset, name: str, split, topics: pd.DataFrame = None, depth: int = 100) -> pd.DataFrame:
    """A first-stage run by name, for training data and validation candidates: a TREC run file path, a run the
    dataset ships (e.g. ``bm25``, ``tas-b``, ``rankgpt-3.5``), or, for ``bm25`` where none ships, PISA BM25 over the
    dataset's corpus for ``topics`` (default: all topics of ``split``), from the one cached index of that corpus
    (:func:`pisa_index`). A query BM25 finds nothing for (e.g. only stopwords, ``the of and``) is absent from the run;
    the training code skips and counts such queries."""
    from pathlib import Path
    from ..datasets.core import read_run
    path = Path(str(name)).expanduser()
    if path.exists():
        return read_run(path)
    try:
        return dataset.get_run(name, split)
    except KnowacqError:
        if name != 'bm25':
            raise
    if topics is None:
        topics = dataset.get_topics(split)
    return PisaBM25(dataset, num_results=depth)(topics[['qid', 'query']])
