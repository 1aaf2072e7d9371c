"""A ColBERT token index: fp16 token vectors on disk (memory-mapped), a faiss index over tokens, exact MaxSim re-scoring.

Retrieval follows ColBERT's two steps: each query token fetches its nearest document tokens from faiss (candidate
generation), then every candidate document is scored exactly by MaxSim over its full stored token matrix.

Example::

    from pyterrier_knowacq.models.colbert import ColBERTModel
    from pyterrier_knowacq.models.colbert_index import ColBERTIndex
    model = ColBERTModel.from_pretrained('path/to/colbert-checkpoint')
    index = ColBERTIndex('msmarco.colbert', model)
    index.index(dataset.get_corpus_iter())                 # the same as the pipeline below
    (model.doc_encoder() >> ColBERTIndex('msmarco.colbert').indexer()).index(dataset.get_corpus_iter())
    pipeline = index.retriever(num_results=100) >> dataset.text_loader() >> cross_encoder
    rerank = bm25 >> index.scorer()                         # re-rank with the stored vectors, no text needed

The index only stores what the model's doc encoder emits (``doc_embs``, as pyterrier-dr's ``FlexIndex`` stores
``doc_vec``): :meth:`ColBERTIndex.index` is ``model.doc_encoder() >> index.indexer()`` run over the corpus. The folder
is a ``pt.Artifact`` (``colbert_index.knowacq``): ``pt.Artifact.load(path)`` opens it.
"""
from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Dict, Iterable, Optional, Union

import numpy as np
import pandas as pd
import pyterrier as pt
import pyterrier_alpha as pta

from .._util import KnowacqError, atomic_directory, atomic_write_json
from .colbert import ColBERTDocEncoder, ColBERTModel, _device  # noqa: F401 - _device re-exported

__all__ = ['ColBERTIndex', 'ColBERTIndexer', 'ColBERTRetriever', 'ColBERTIndexScorer', 'model_signature', 'cached_index']

FORMAT = 'pyterrier_knowacq.models.colbert_index/1'


def model_signature(model: ColBERTModel) -> str:
    """A short hash of the weights that decide token vectors (projection, embeddings, last layer)."""
    h = hashlib.sha1()
    params = dict(model.named_parameters())
    names = ['linear.weight'] + [n for n in params if 'embeddings.word_embeddings' in n] + sorted(params)[-2:]
    for n in names:
        h.update(n.encode())
        h.update(params[n].detach().float().cpu().numpy().tobytes())
    h.update(json.dumps({k: model.config[k] for k in ('dim', 'mask_punctuation', 'query_token_id', 'doc_token_id')},
                        sort_keys=True).encode())
    return h.hexdigest()[:16]


def _as_model(model) -> ColBERTModel:
    if isinstance(model, ColBERTModel):
        return model
    return ColBERTModel.from_pretrained(model)


def cached_index(dataset, model, *, batch_size: int = 32, max_docs: Optional[int] = None) -> 'ColBERTIndex':
    """The ColBERT index of a dataset's corpus for a model, built on first use under ``cache_dir('indexes')``.

    ``max_docs`` indexes only the first documents (dry runs that check the wiring).
    """
    import itertools
    from .._util import cache_dir
    from ..datasets.core import get_dataset
    dataset = get_dataset(dataset) if isinstance(dataset, str) else dataset
    model = _as_model(model)
    fp = dataset.corpus_fingerprint() if hasattr(dataset, 'corpus_fingerprint') else dataset.name
    key = f'{fp}:{model_signature(model)}:{model.config["doc_maxlen"]}' + (f':{max_docs}' if max_docs else '')
    key = hashlib.sha1(key.encode()).hexdigest()[:16]
    path = cache_dir('indexes') / f'colbert-{dataset.name.replace("/", "_").replace(":", "_")}-{key}'
    index = ColBERTIndex(path, model, batch_size=batch_size)
    if not (path / 'meta.json').exists():
        index.index(itertools.islice(dataset.get_corpus_iter(), max_docs))
    return index


class ColBERTIndex(pta.Artifact, pt.Indexer):
    """A folder holding token vectors (``tokens.f16``), document lengths, docnos and a faiss index over tokens.

    Args:
        path: the index folder.
        model: the :class:`ColBERTModel` (or checkpoint folder) that encodes documents and, later, queries.
        batch_size: documents per forward pass while indexing.
        chunk_docs: documents held in memory at once while indexing (memory stays flat in corpus size).
        faiss_index: ``auto`` (exact ``flat`` below 200k tokens, else ``ivfpq``), ``flat`` or ``ivfpq``.
        overwrite: replace an existing index at ``path``.
    """
    ARTIFACT_TYPE = 'colbert_index'
    ARTIFACT_FORMAT = 'knowacq'
    ARTIFACT_PACKAGE_HINT = 'pyterrier-knowacq'

    def __init__(self, path: Union[str, Path], model=None, *, batch_size: int = 32, chunk_docs: int = 2048,
                 faiss_index: str = 'auto', overwrite: bool = False, verbose: bool = True):
        super().__init__(path)
        if faiss_index not in ('auto', 'flat', 'ivfpq'):
            raise KnowacqError(f"faiss_index must be 'auto', 'flat' or 'ivfpq', got {faiss_index!r}")
        self.path = Path(path)
        self._model_arg = model
        self._model = None
        self.batch_size, self.chunk_docs, self.faiss_index = int(batch_size), int(chunk_docs), faiss_index
        self.overwrite, self.verbose = overwrite, verbose
        self._payload = None

    # ---------------------------------------------------------------- model handling
    @property
    def model(self) -> ColBERTModel:
        if self._model is None:
            if self._model_arg is None:
                meta = self.meta()
                if not meta.get('checkpoint') or not Path(meta['checkpoint']).is_dir():
                    raise KnowacqError(f'index {self.path} needs its ColBERT model; pass model=ColBERTModel or the checkpoint folder')
                self._model_arg = meta['checkpoint']
            self._model = _as_model(self._model_arg).eval()
        return self._model

    def _check_model(self, model: ColBERTModel):
        meta = self.meta()
        if model.config['dim'] != meta['dim']:
            raise KnowacqError(f'index {self.path} holds {meta["dim"]}-dim token vectors but the model makes '
                               f'{model.config["dim"]}-dim vectors; use the model the index was built with ({meta["checkpoint"]})')
        if meta.get('model_signature') is None:   # built by an indexer that was not told the model: dims only
            return
        if model_signature(model) != meta['model_signature']:
            raise KnowacqError(f'index {self.path} was built with another model ({meta["checkpoint"]}, signature '
                               f'{meta["model_signature"]}); query it with that model or rebuild the index with this one')

    # ---------------------------------------------------------------- building
    def index(self, inp: Iterable[Dict]) -> 'ColBERTIndex':
        """Encode and store every ``{'docno', 'text'}`` record of ``inp``; the folder appears only when complete.

        The same as ``(model.doc_encoder() >> index.indexer()).index(inp)``: ``chunk_docs`` documents at a time are
        encoded (longest first, ``batch_size`` per forward pass) and stored, so memory stays flat in corpus size."""
        model = self.model
        encoder = model.doc_encoder(batch_size=self.batch_size)
        return (encoder >> self.indexer(model=model)).index(inp, batch_size=self.chunk_docs)

    def indexer(self, model=None, *, overwrite: Optional[bool] = None) -> 'ColBERTIndexer':
        """The transformer that stores ``docno, doc_embs`` records (what ``model.doc_encoder()`` emits) in this index.

        ``model`` (the one that made the vectors) is recorded in ``meta.json`` so that queries are checked against it
        and ``ColBERTIndex(path)`` finds it again; ``model.doc_encoder() >> index.indexer()`` passes it on its own,
        and an index built with ``ColBERTIndex(path, model)`` uses its model."""
        if model is None and self._model_arg is not None:
            model = self.model
        return ColBERTIndexer(self, None if model is None else _as_model(model),
                              overwrite=self.overwrite if overwrite is None else overwrite)

    def _build_faiss(self, folder: Path, tokens: np.memmap, kind: str) -> Dict:
        import faiss
        n, dim = tokens.shape
        step = 65536
        if kind == 'flat':
            index = faiss.IndexFlatIP(dim)
            meta = {'type': 'flat'}
        else:
            nlist = int(min(max(2 ** int(np.log2(max(4 * np.sqrt(n), 64))), 64), 16384))
            m = next(c for c in (16, 32, 8, 4, 2, 1) if dim % c == 0)
            index = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
            rng = np.random.default_rng(0)
            sample = np.sort(rng.choice(n, size=min(n, 40 * nlist), replace=False))
            if len(sample) < max(nlist, 256):
                raise KnowacqError(f'only {n} tokens: too few for an ivfpq index with {nlist} lists; use faiss_index="flat"')
            index.train(np.ascontiguousarray(tokens[sample], dtype=np.float32))
            meta = {'type': 'ivfpq', 'nlist': nlist, 'm': m, 'nbits': 8}
        for s in pt.tqdm(range(0, n, step), desc='faiss add', unit='chunk', disable=not self.verbose):
            index.add(np.ascontiguousarray(tokens[s:s + step], dtype=np.float32))
        faiss.write_index(index, str(folder / 'tokens.faiss'))
        return meta

    # ---------------------------------------------------------------- reading
    def meta(self) -> Dict:
        path = self.path / 'meta.json'
        if not path.exists():
            raise KnowacqError(f'{self.path} is not a ColBERT index (no meta.json); build it with ColBERTIndex(path, model).index(corpus)')
        meta = json.loads(path.read_text())
        if meta.get('format') != FORMAT:
            raise KnowacqError(f'{self.path} has index format {meta.get("format")!r}, expected {FORMAT}; rebuild it')
        return meta

    def payload(self):
        """``(tokens memmap [T, dim] fp16, offsets [N+1], docnos array, faiss index)``, loaded once."""
        if self._payload is None:
            import faiss
            meta = self.meta()
            tokens = np.memmap(self.path / 'tokens.f16', dtype=np.float16, mode='r', shape=(meta['num_tokens'], meta['dim']))
            doclens = np.load(self.path / 'doclens.npy')
            offsets = np.zeros(len(doclens) + 1, dtype=np.int64)
            np.cumsum(doclens, out=offsets[1:])
            docnos = np.array((self.path / 'docnos.txt').read_text(encoding='utf-8').split('\n')[:-1], dtype=object)
            self._payload = (tokens, offsets, docnos, faiss.read_index(str(self.path / 'tokens.faiss')))
        return self._payload

    def __len__(self):
        return self.meta()['num_docs']

    def __repr__(self):
        return f'ColBERTIndex({str(self.path)!r})'

    def retriever(self, model=None, *, num_results: int = 1000, ncandidates: int = 256, nprobe: int = 32,
                  batch_size: int = 16) -> 'ColBERTRetriever':
        """End-to-end retrieval: ``qid, query -> qid, query, docno, score, rank`` (``num_results`` per query)."""
        return ColBERTRetriever(self, model, num_results=num_results, ncandidates=ncandidates, nprobe=nprobe,
                                batch_size=batch_size)

    def scorer(self, model=None) -> 'ColBERTIndexScorer':
        """Re-rank ``qid, query, docno`` with the stored token vectors (no text needed)."""
        return ColBERTIndexScorer(self, model)

    def _query_model(self, model) -> ColBERTModel:
        model = self.model if model is None else _as_model(model)
        self._check_model(model)
        return model

    def _maxsim(self, Q, doc_ids: np.ndarray):
        """Exact MaxSim of one query [Lq, dim] against the stored tokens of ``doc_ids`` -> float32 [len(doc_ids)]."""
        import torch
        tokens, offsets, _, _ = self.payload()
        if not len(doc_ids):
            return np.zeros(0, dtype=np.float32)
        starts, ends = offsets[doc_ids], offsets[doc_ids + 1]
        lens = ends - starts
        rows = np.repeat(starts - np.cumsum(np.r_[0, lens[:-1]]), lens) + np.arange(lens.sum())
        D = torch.from_numpy(np.asarray(tokens[rows], dtype=np.float32))
        sim = Q.float().cpu() @ D.T                                               # [Lq, T]
        seg = torch.from_numpy(np.repeat(np.arange(len(doc_ids)), lens))
        best = torch.full((sim.shape[0], len(doc_ids)), -9999.0).scatter_reduce(1, seg.expand(sim.shape[0], -1), sim, 'amax')
        return best.sum(0).numpy()

    def _encode_queries(self, model: ColBERTModel, queries, batch_size: int):
        import torch
        device = next(model.parameters()).device
        out = []
        with torch.inference_mode():
            for s in range(0, len(queries), batch_size):
                ids, mask = model.tokenize_queries(list(queries[s:s + batch_size]))
                out.append(model.encode_queries(ids.to(device), mask.to(device)).float().cpu())
        return torch.cat(out) if out else None


def _chunks(records, size: int):
    chunk = []
    for rec in records:
        chunk.append(rec)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class ColBERTIndexer(pt.Indexer):
    """Stores ``docno, doc_embs`` records in a :class:`ColBERTIndex` (fp16 token vectors, docnos, document lengths, a
    faiss index over tokens, ``meta.json`` and ``pt_meta.json``); the folder appears only when complete.

    Example::

        (model.doc_encoder() >> ColBERTIndex('corpus.colbert').indexer()).index(dataset.get_corpus_iter())
    """

    def __init__(self, index: ColBERTIndex, model: Optional[ColBERTModel] = None, overwrite: bool = False):
        self.index_ref, self.model, self.overwrite = index, model, bool(overwrite)

    def bind_model(self, model: ColBERTModel) -> 'ColBERTIndexer':
        """This indexer, recording ``model`` as the one that made the vectors (``doc_encoder() >> indexer()``)."""
        return ColBERTIndexer(self.index_ref, model, overwrite=self.overwrite)

    def fuse_left(self, left):
        """``compile()`` hands the doc encoder's model to the indexer, as ``>>`` does."""
        if self.model is None and isinstance(left, ColBERTDocEncoder):
            return left >> self.bind_model(left.model)
        return None

    def index_inputs(self):
        return [['docno', 'doc_embs']]

    def __repr__(self):
        return f'{self.index_ref!r}.indexer()'

    def index(self, inp: Iterable[Dict]) -> ColBERTIndex:
        index, model = self.index_ref, self.model
        inp = iter(inp)
        first = next(inp, None)
        records = itertools.chain([first], inp) if first is not None else iter(())
        if isinstance(first, dict) and 'doc_embs' not in first and 'text' in first:
            # the old index.indexer() took text records (it was the index itself): encode them, for one release
            import warnings
            warnings.warn('ColBERTIndex.indexer() stores the doc_embs a doc encoder emits; giving it text records is '
                          'deprecated: use (model.doc_encoder() >> index.indexer()).index(docs), or index.index(docs)',
                          DeprecationWarning, stacklevel=2)
            model = model if model is not None else index.model
            encoder = model.doc_encoder(batch_size=index.batch_size)
            records = (rec for chunk in _chunks(records, index.chunk_docs) for rec in encoder.transform_iter(chunk))
        inp = records
        if model is not None:
            model_dim = int(model.config['dim'])
        with atomic_directory(index.path, overwrite=self.overwrite) as tmp:
            doclens, dim = [], None
            with open(tmp / 'tokens.f16', 'wb') as f_tok, open(tmp / 'docnos.txt', 'w', encoding='utf-8') as f_docno, \
                    pt.tqdm(desc='ColBERT indexing', unit='doc', disable=not index.verbose) as bar:
                for rec in inp:
                    docno, embs = rec.get('docno'), rec.get('doc_embs')
                    if not isinstance(docno, str) or not docno or '\n' in docno:
                        raise KnowacqError(f'indexing needs records with a string docno (no newline) and doc_embs; '
                                           f'got {rec!r:.200}')
                    if embs is None:
                        raise KnowacqError(f'record {docno!r} has no doc_embs; put the model\'s doc encoder before the '
                                           'indexer: model.doc_encoder() >> index.indexer()')
                    embs = np.asarray(embs)
                    if dim is None:
                        dim = embs.shape[-1] if embs.ndim == 2 else None
                        if model is not None and dim != model_dim:
                            raise KnowacqError(f'doc_embs of {docno!r} have {dim} dims but the model makes '
                                               f'{model_dim}-dim vectors; index with that model\'s doc encoder')
                    if embs.ndim != 2 or embs.shape[1] != dim:
                        raise KnowacqError(f'doc_embs of {docno!r} has shape {embs.shape}; every document needs a '
                                           f'[tokens, {dim}] matrix (model.doc_encoder() makes them)')
                    f_tok.write(embs.astype(np.float16).tobytes())
                    f_docno.write(docno + '\n')
                    doclens.append(len(embs))
                    bar.update(1)
            if not doclens:
                raise KnowacqError('nothing to index: the corpus iterator yielded no documents')
            doclens = np.asarray(doclens, dtype=np.int32)
            np.save(tmp / 'doclens.npy', doclens)
            n_tokens = int(doclens.sum())
            kind = index.faiss_index if index.faiss_index != 'auto' else ('flat' if n_tokens < 200_000 else 'ivfpq')
            tokens = np.memmap(tmp / 'tokens.f16', dtype=np.float16, mode='r', shape=(n_tokens, dim))
            faiss_meta = index._build_faiss(tmp, tokens, kind)
            atomic_write_json(tmp / 'meta.json', {
                'format': FORMAT, 'dim': int(dim), 'num_docs': len(doclens), 'num_tokens': n_tokens,
                'checkpoint': model.name if model is not None else None,
                'model_signature': model_signature(model) if model is not None else None,
                'doc_maxlen': model.config['doc_maxlen'] if model is not None else None,
                'query_maxlen': model.config['query_maxlen'] if model is not None else None, 'faiss': faiss_meta})
            atomic_write_json(tmp / 'pt_meta.json', {'type': index.ARTIFACT_TYPE, 'format': index.ARTIFACT_FORMAT,
                                                      'package_hint': index.ARTIFACT_PACKAGE_HINT})
        index._payload = None
        if index._model_arg is None and model is not None:
            index._model_arg = model
        return index


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
