"""Querying a :class:`~pyterrier_knowacq.models.colbert_index.ColBERTIndex`: end-to-end retrieval and re-ranking.

:class:`ColBERTRetriever` follows ColBERT's two steps (each query token fetches its nearest document tokens from faiss,
then every candidate document is scored exactly by MaxSim over its stored token matrix); :class:`ColBERTIndexScorer`
re-ranks given ``docno`` s by exact MaxSim against the stored vectors, with no text. Build them from the index
(``index.retriever()``, ``index.scorer()``); :mod:`~pyterrier_knowacq.models.colbert_index` re-exports both.

Example::

    pipeline = ColBERTIndex('msmarco.colbert', model).retriever(num_results=100) >> dataset.text_loader()
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyterrier as pt
import pyterrier_alpha as pta

from .._util import KnowacqError

if TYPE_CHECKING:   # the index imports this module at load time
    from .colbert_index import ColBERTIndex

__all__ = ['ColBERTRetriever', 'ColBERTIndexScorer']


class ColBERTRetriever(pt.Transformer):
    """Retrieves with a :class:`ColBERTIndex`: faiss candidates per query token, then exact MaxSim.

    Example::

        pipeline = ColBERTIndex('msmarco.colbert', model).retriever(num_results=100) >> dataset.text_loader()
    """

    def __init__(self, index: ColBERTIndex, model=None, *, num_results=1000, ncandidates=256, nprobe=32, batch_size=16):
        for key, val in (('num_results', num_results), ('ncandidates', ncandidates), ('nprobe', nprobe), ('batch_size', batch_size)):
            if not isinstance(val, int) or val < 1:
                raise KnowacqError(f'{key} must be a positive integer, got {val!r}')
        self.index, self.num_results, self.ncandidates, self.nprobe, self.batch_size = index, num_results, ncandidates, nprobe, batch_size
        self.model = index._query_model(model)

    def _key(self):
        return (str(self.index.path.resolve()), self.num_results, self.ncandidates, self.nprobe, id(self.model))

    def __eq__(self, other):
        return isinstance(other, ColBERTRetriever) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        pta.validate.query_frame(inp, extra_columns=['query'])
        cols = ['qid', 'query', 'docno', 'score', 'rank']
        if not len(inp):
            return pd.DataFrame({c: pd.Series(dtype='float64' if c == 'score' else 'int64' if c == 'rank' else 'object') for c in cols})
        tokens, offsets, docnos, findex = self.index.payload()
        if hasattr(findex, 'nprobe'):
            findex.nprobe = self.nprobe
        Q = self.index._encode_queries(self.model, inp['query'].astype(str).tolist(), self.batch_size)
        frames = []
        for i, (qid, query) in enumerate(pt.tqdm(list(zip(inp['qid'], inp['query'])), desc='ColBERT retrieve',
                                                 unit='q', disable=not self.index.verbose or len(inp) < 10)):
            _, tok_ids = findex.search(Q[i].numpy(), min(self.ncandidates, len(tokens)))
            tok_ids = tok_ids[tok_ids >= 0]
            cand = np.unique(np.searchsorted(offsets, tok_ids, side='right') - 1)
            scores = self.index._maxsim(Q[i], cand)
            top = np.argsort(-scores, kind='stable')[:self.num_results]
            frames.append(pd.DataFrame({'qid': qid, 'query': query, 'docno': docnos[cand[top]],
                                        'score': scores[top].astype('float64'), 'rank': np.arange(len(top))}))
        return pd.concat(frames, ignore_index=True)[cols]


class ColBERTIndexScorer(pt.Transformer):
    """Re-ranks ``qid, query, docno`` by exact MaxSim against the token vectors stored in a :class:`ColBERTIndex`.

    Example::

        pipeline = bm25 >> ColBERTIndex('msmarco.colbert', model).scorer()
    """

    def __init__(self, index: ColBERTIndex, model=None, batch_size: int = 16):
        self.index, self.batch_size = index, batch_size
        self.model = index._query_model(model)
        self._lookup = None

    def _key(self):
        return (str(self.index.path.resolve()), id(self.model))

    def __eq__(self, other):
        return isinstance(other, ColBERTIndexScorer) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        pta.validate.columns(inp, includes=['qid', 'query', 'docno'])
        if not len(inp):
            return inp.assign(score=pd.Series(dtype='float64'), rank=pd.Series(dtype='int64'))
        _, _, docnos, _ = self.index.payload()
        if self._lookup is None:
            self._lookup = pd.Series(np.arange(len(docnos)), index=docnos)
        missing = ~inp['docno'].isin(self._lookup.index)
        if missing.any():
            raise KnowacqError(f'{int(missing.sum())} docnos are not in the index {self.index.path} (e.g. '
                               f'{inp.loc[missing, "docno"].iloc[0]!r}); index the whole corpus or use the text-based ColBERT re-ranker')
        scores = np.zeros(len(inp), dtype=np.float64)
        for qid, rows in inp.groupby('qid', sort=False).indices.items():
            Q = self.index._encode_queries(self.model, [str(inp['query'].iloc[rows[0]])], 1)[0]
            scores[rows] = self.index._maxsim(Q, self._lookup.loc[inp['docno'].iloc[rows]].to_numpy())
        return pt.model.add_ranks(inp.assign(score=scores))
