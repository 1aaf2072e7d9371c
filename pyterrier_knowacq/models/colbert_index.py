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
is a ``pt.Artifact`` (``colbert_index.knowacq``): ``pt.Artifact.load(path)`` opens it. The query-side transformers
(:class:`ColBERTRetriever`, :class:`ColBERTIndexScorer`) live in :mod:`~pyterrier_knowacq.models.colbert_search`
and are re-exported here.
"""
from __future__ import annotations

import array
import hashlib
import itertools
import json
from pathlib import Path
from typing import Dict, Iterable, Optional, Union

import numpy as np
import pyterrier as pt
import pyterrier_alpha as pta

from .._util import KnowacqError, atomic_directory, atomic_write_json
from .colbert import ColBERTDocEncoder, ColBERTModel, _device  # noqa: F401 - _device re-exported
from .colbert_faiss import SEGMENT_TOKENS, build_faiss, load_faiss
from .colbert_search import ColBERTIndexScorer, ColBERTRetriever

__all__ = ['ColBERTIndex', 'ColBERTIndexer', 'ColBERTRetriever', 'ColBERTIndexScorer', 'model_signature', 'cached_index',
           'cache_path']

FORMAT = 'pyterrier_knowacq.models.colbert_index/1'
#: an index whose faiss index is in several segments (``colbert_faiss``): older readers refuse it rather than read part
FORMAT_SEGMENTED = 'pyterrier_knowacq.models.colbert_index/2'


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


def cache_path(dataset, model: ColBERTModel, max_docs: Optional[int] = None) -> Path:
    """Where :func:`cached_index` keeps the index of ``dataset``'s corpus for ``model``: keyed by the corpus content,
    the model's weights and ``doc_maxlen`` (a sharded build, :mod:`~pyterrier_knowacq.models.sharding`, writes there too)."""
    from .._util import cache_dir
    fp = dataset.corpus_fingerprint() if hasattr(dataset, 'corpus_fingerprint') else dataset.name
    key = f'{fp}:{model_signature(model)}:{model.config["doc_maxlen"]}' + (f':{max_docs}' if max_docs else '')
    key = hashlib.sha1(key.encode()).hexdigest()[:16]
    return cache_dir('indexes') / f'colbert-{dataset.name.replace("/", "_").replace(":", "_")}-{key}'


def cached_index(dataset, model, *, batch_size: int = 32, max_docs: Optional[int] = None,
                 chunk_docs: int = 2048) -> 'ColBERTIndex':
    """The ColBERT index of a dataset's corpus for a model, built on first use under ``cache_dir('indexes')``.

    ``max_docs`` indexes only the first documents (dry runs that check the wiring). An index built by
    ``torchrun ... -m pyterrier_knowacq.models.sharding colbert`` for the same corpus and model lies at the same
    path (:func:`cache_path`) and is used as it is.
    """
    from ..datasets.core import get_dataset
    dataset = get_dataset(dataset) if isinstance(dataset, str) else dataset
    model = _as_model(model)
    path = cache_path(dataset, model, max_docs)
    index = ColBERTIndex(path, model, batch_size=batch_size, chunk_docs=chunk_docs)
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
        segment_tokens: tokens per faiss segment (:mod:`~.colbert_faiss`: a build holds one segment at a time).
        overwrite: replace an existing index at ``path``.
    """
    ARTIFACT_TYPE = 'colbert_index'
    ARTIFACT_FORMAT = 'knowacq'
    ARTIFACT_PACKAGE_HINT = 'pyterrier-knowacq'

    def __init__(self, path: Union[str, Path], model=None, *, batch_size: int = 32, chunk_docs: int = 2048,
                 faiss_index: str = 'auto', overwrite: bool = False, verbose: bool = True,
                 segment_tokens: int = SEGMENT_TOKENS):
        super().__init__(path)
        if faiss_index not in ('auto', 'flat', 'ivfpq'):
            raise KnowacqError(f"faiss_index must be 'auto', 'flat' or 'ivfpq', got {faiss_index!r}")
        self.path = Path(path)
        self._model_arg = model
        self._model = None
        self.batch_size, self.chunk_docs, self.faiss_index = int(batch_size), int(chunk_docs), faiss_index
        self.overwrite, self.verbose, self.segment_tokens = overwrite, verbose, int(segment_tokens)
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

    # ---------------------------------------------------------------- reading
    def meta(self) -> Dict:
        path = self.path / 'meta.json'
        if not path.exists():
            raise KnowacqError(f'{self.path} is not a ColBERT index (no meta.json); build it with ColBERTIndex(path, model).index(corpus)')
        meta = json.loads(path.read_text())
        if meta.get('format') not in (FORMAT, FORMAT_SEGMENTED):
            raise KnowacqError(f'{self.path} has index format {meta.get("format")!r}, expected {FORMAT}; rebuild it')
        return meta

    def payload(self):
        """``(tokens memmap [T, dim] fp16, offsets [N+1], docnos array, faiss index)``, loaded once (the faiss index:
        a ``faiss.Index``, or a :class:`~.colbert_faiss.SegmentedIndex` searched the same way)."""
        if self._payload is None:
            meta = self.meta()
            tokens = np.memmap(self.path / 'tokens.f16', dtype=np.float16, mode='r', shape=(meta['num_tokens'], meta['dim']))
            doclens = np.load(self.path / 'doclens.npy')
            offsets = np.zeros(len(doclens) + 1, dtype=np.int64)
            np.cumsum(doclens, out=offsets[1:])
            docnos = np.array((self.path / 'docnos.txt').read_text(encoding='utf-8').split('\n')[:-1], dtype=object)
            self._payload = (tokens, offsets, docnos, load_faiss(self.path, meta.get('faiss', {})))
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
            doclens, dim = array.array('q'), None   # 8 bytes a document, not a Python int
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
            doclens = np.frombuffer(doclens, dtype=np.int64).astype(np.int32)
            np.save(tmp / 'doclens.npy', doclens)
            n_tokens = int(doclens.sum(dtype=np.int64))
            kind = index.faiss_index if index.faiss_index != 'auto' else ('flat' if n_tokens < 200_000 else 'ivfpq')
            faiss_meta = build_faiss(tmp, n_tokens, int(dim), kind, verbose=index.verbose,
                                     segment_tokens=index.segment_tokens)
            atomic_write_json(tmp / 'meta.json', {
                'format': FORMAT_SEGMENTED if faiss_meta.get('segments', 1) > 1 else FORMAT, 'dim': int(dim), 'num_docs': len(doclens), 'num_tokens': n_tokens,
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
