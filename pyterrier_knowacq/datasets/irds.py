"""Any ir_datasets id as a dataset: ``irds:<id>``, its texts looked up in batches in the docstore."""
from __future__ import annotations

from functools import cached_property
from typing import Dict, List, Optional

import pandas as pd

from .._util import KnowacqError
from .base import Dataset

__all__ = ['IrdsDataset']


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
