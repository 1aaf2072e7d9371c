"""PyTerrier's dataset API over knowacq's collections: ``pt.get_dataset('knowacq:<name>')``.

The ``pyterrier.dataset_provider`` entry point ``knowacq`` serves every embedded collection (``msmarco-passage``,
``msmarco-passage-train``, ``scifact``, ``nfcorpus``, ``vaswani``, ``cranfield``, ``nq-dpr-sample``), any BEIR-layout
folder (``knowacq:beir:/path/to/folder``) and ``irds:`` ids (``knowacq:irds:<id>``) as a real ``pt.datasets.Dataset``:

    import pyterrier as pt
    ds = pt.get_dataset('knowacq:msmarco-passage')
    topics, qrels = ds.get_topics('dl19'), ds.get_qrels('dl19')          # 43 TREC DL 2019 queries
    pipeline = ds.run_transformer('bm25') % 100 >> pt.text.get_text(ds, 'text') >> cross_encoder
    pt.Experiment([pipeline], topics, qrels, ['nDCG@10'])

``variant`` is the split (``dl19``, ``dl20``, ``test``, ...), ``text_loader`` follows ``pyterrier.HasTextLoader``
(``'*'`` or ``'text'``), ``get_results(run)`` is a run the collection ships (e.g. ``bm25``), and every other attribute of
the knowacq :class:`~pyterrier_knowacq.datasets.core.Dataset` (``run_transformer``, ``get_texts``, ``id``,
``fingerprint()``, ...) is reachable on it; ``ds.dataset`` is that knowacq dataset (what ``PisaBM25`` and the
experiment runner take).
"""
from __future__ import annotations

from typing import Iterable, List, Optional, Union

import pandas as pd
import pyterrier as pt

from .._util import KnowacqError

__all__ = ['KnowacqDatasetProvider', 'KnowacqPtDataset']

#: the embedded collections are English
_ENGLISH = {'msmarco-passage', 'msmarco-passage-train', 'scifact', 'nfcorpus', 'vaswani', 'cranfield', 'nq-dpr-sample'}


class KnowacqDatasetProvider(pt.datasets.DatasetProvider):
    """``pt.get_dataset('knowacq:NAME')`` for NAME an embedded collection, ``beir:/path`` or ``irds:<id>``."""

    def get_dataset(self, name: str) -> 'KnowacqPtDataset':
        from .core import get_dataset
        try:
            return KnowacqPtDataset(get_dataset(name), spec=name)
        except KnowacqError as e:
            raise KeyError(str(e)) from e

    def list_dataset_names(self) -> Iterable[str]:
        from .core import DATASETS
        return sorted(DATASETS)


class KnowacqPtDataset(pt.datasets.Dataset):
    """A knowacq :class:`~pyterrier_knowacq.datasets.core.Dataset` as a ``pt.datasets.Dataset`` (``variant`` = split)."""

    def __init__(self, dataset, spec: Optional[str] = None):
        self.dataset = dataset
        self.spec = spec or dataset.name

    # -- pt.datasets.Dataset
    def get_topics(self, variant: Optional[str] = None) -> pd.DataFrame:
        """``qid, query`` of a split (default: the collection's test split)."""
        return self.dataset.get_topics(variant)

    def get_qrels(self, variant: Optional[str] = None) -> pd.DataFrame:
        """``qid, docno, label`` of a split."""
        return self.dataset.get_qrels(variant)

    def get_corpus_iter(self, *, verbose: bool = True):
        """``{'docno', 'text'}`` records of the corpus."""
        it = self.dataset.get_corpus_iter()
        return pt.tqdm(it, desc=f'{self.spec} documents', unit='doc') if verbose else it

    def get_corpus_lang(self) -> Optional[str]:
        return 'en' if self.spec in _ENGLISH else None

    def get_topics_lang(self) -> Optional[str]:
        return self.get_corpus_lang()

    def text_loader(self, fields: Union[List[str], str] = '*', *, verbose: bool = False) -> pt.Transformer:
        """Adds document fields by docno (``pyterrier.HasTextLoader``): ``'*'`` or ``'text'``."""
        return self.dataset.text_loader(fields, verbose=verbose)

    def get_results(self, variant: Optional[str] = None) -> pd.DataFrame:
        """A first-stage run the collection ships (``variant`` = its name, e.g. ``bm25``), over every split."""
        names = self.dataset.run_names()
        if variant is None:
            raise KnowacqError(f'name the run: get_results(NAME) with NAME one of {names or "none (no runs ship)"}')
        return self.dataset.run_transformer(variant)._run

    def info_url(self) -> Optional[str]:
        return 'https://ir-datasets.com' if self.spec.startswith('irds:') else None

    def _describe_component(self, component: str):
        if component in ('topics', 'qrels'):
            return list(self.dataset.splits) or True
        if component == 'corpus':
            return True
        if component == 'results':
            return self.dataset.run_names() or None
        return None

    # -- everything else of the knowacq dataset (run_transformer, get_texts, id, fingerprint(), ...)
    def __getattr__(self, name: str):
        if name.startswith('_') or name in ('dataset', 'spec'):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __repr__(self):
        return f'pt.get_dataset({"knowacq:" + self.spec!r})'
