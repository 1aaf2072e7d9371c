"""ColBERTv2-compatible late-interaction model and its PyTerrier re-ranker.

The model reproduces ColBERTv2's encoding (stanford-futuredata/ColBERT, ``colbert/modeling``): a BERT encoder plus a
bias-free linear projection to ``dim`` (128) dimensions; ``[unused0]`` / ``[unused1]`` markers after ``[CLS]`` for
queries / documents; queries padded with ``[MASK]`` to ``query_maxlen`` (32) whose positions are not attended to but
are kept as query vectors; documents truncated to ``doc_maxlen`` (180) with punctuation tokens skipped; L2-normalised
token vectors; the score is MaxSim summed over query tokens.

A checkpoint folder has the official layout: ``config.json`` (BERT config), ``model.safetensors`` (or
``pytorch_model.bin``) with ``bert.*`` and ``linear.weight``, the tokenizer files and ``artifact.metadata`` (JSON with
``query_maxlen``, ``doc_maxlen``, ``dim``, ``mask_punctuation``, ``similarity``, ...). ``colbert-ir/colbertv2.0``
loads where the hub is reachable; offline, build one from a local backbone with :meth:`ColBERTModel.new`.

Example::

    from pyterrier_knowacq.models.colbert import ColBERT, ColBERTModel
    colbert = ColBERT('path/to/colbert-checkpoint', batch_size=32)
    pipeline = bm25 >> dataset.text_loader() >> colbert

The family contract (:mod:`pyterrier_knowacq.models.artifacts`) is :class:`ColBERTModel`'s: ``ColBERTModel.new(backbone)``,
``ColBERTModel.from_pretrained(path_or_id)`` (= ``ColBERTModel(path)``, what ``pt.Artifact.load`` calls),
``model.save(path)``, ``model.scorer()`` (a :class:`ColBERT` re-ranker), ``model.query_encoder()`` (adds
``query_embs``) and ``model.doc_encoder()`` (adds ``doc_embs``, the kept token vectors of each document), which a
:class:`~pyterrier_knowacq.models.colbert_index.ColBERTIndex` stores: ``model.doc_encoder() >> index.indexer()``.

The model class and MaxSim live in :mod:`pyterrier_knowacq.models.colbert_model` and are re-exported here; this module
holds the PyTerrier transformers (the re-ranker, the query and doc encoders) and the optional scoring backends.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np
import pandas as pd
import pyterrier as pt
import pyterrier_alpha as pta

from ._batching import distinct, require_text, text_fix, with_scores
from .._util import KnowacqError
# the model and MaxSim, re-exported: callers import them from here
from .colbert_model import DEFAULT_CONFIG, ColBERTModel, maxsim, maxsim_matrix
from .colbert_model import _WEIGHT_FILES, _checkpoint_folder, _read_state_dict, _torch  # noqa: F401 - re-exported
from .quantize import quantize_device

__all__ = ['ColBERTModel', 'ColBERT', 'ColBERTQueryEncoder', 'ColBERTDocEncoder', 'maxsim', 'maxsim_matrix',
           'DEFAULT_CONFIG', 'BACKENDS']


def _array_column(arrays, index) -> pd.Series:
    """One array per row (as pyterrier-dr stores vectors), ``object`` dtype also when there are no rows."""
    return pd.Series(list(arrays), index=index, dtype=object)


class ColBERTQueryEncoder(pt.Transformer):
    """``qid, query`` -> adds ``query_embs``: each query's ColBERT token vectors (float32 ``[query_maxlen, dim]``,
    ``[MASK]`` augmentation included), each distinct query encoded once. ``docno`` may be there (a result frame).

    Example::

        model.query_encoder() >> ColBERTIndex('corpus.colbert').scorer()
    """
    schematic = {'label': 'ColBERT query enc'}

    def __init__(self, model: 'ColBERTModel', batch_size: int = 128, verbose: bool = False):
        self.model, self.batch_size, self.verbose = model, int(batch_size), verbose

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        pta.validate.columns(inp, includes=['qid', 'query'])
        require_text(inp, 'query', 'give every topic a query text')
        codes, (uniq,) = distinct(inp['query'].astype(str).tolist(), sort=True)
        Q = self.model.query_embeddings(uniq, self.batch_size)
        return inp.assign(query_embs=_array_column(Q[codes], inp.index))

    def __repr__(self):
        return f'ColBERTModel({self.model.name!r}).query_encoder()'

    def subtransformers(self):
        return {}


class ColBERTDocEncoder(pt.Transformer):
    """``docno, text`` -> adds ``doc_embs``: each document's kept ColBERT token vectors (float32 ``[n, dim]``: no
    padding, no punctuation; what :class:`~pyterrier_knowacq.models.colbert_index.ColBERTIndex` stores). Each distinct text is
    encoded once per call (``dedup=False``: every row). As the left side of ``>> index.indexer()`` it hands the index
    the model (recorded in the index's ``meta.json``).

    Example::

        (model.doc_encoder() >> ColBERTIndex('corpus.colbert').indexer()).index(dataset.get_corpus_iter())
    """
    schematic = {'label': 'ColBERT doc enc'}

    def __init__(self, model: 'ColBERTModel', batch_size: int = 32, verbose: bool = False, text_field: str = 'text',
                 dedup: bool = True):
        self.model, self.batch_size, self.verbose = model, int(batch_size), verbose
        self.text_field, self.dedup = text_field, bool(dedup)

    def _embeddings(self, texts: List[str]) -> List[np.ndarray]:
        codes, (uniq,) = distinct(texts, enabled=self.dedup)
        embs = self.model.doc_embeddings(uniq, self.batch_size, verbose=self.verbose)
        return [embs[c] for c in codes]

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        pta.validate.columns(inp, includes=['docno', self.text_field])
        require_text(inp, self.text_field, 'give every document a text (dataset.text_loader() adds it by docno)')
        return inp.assign(doc_embs=_array_column(self._embeddings(inp[self.text_field].astype(str).tolist()), inp.index))

    def transform_iter(self, inp):
        """Records in, records out (``index()`` of a pipeline streams the corpus through this in chunks)."""
        records = list(inp)
        for rec in records:
            if not isinstance(rec.get('docno'), str) or not isinstance(rec.get(self.text_field), str):
                raise KnowacqError(f'the ColBERT doc encoder needs records with a string docno and a string text '
                                   f'({self.text_field!r}); got {rec!r:.200}')
        embs = self._embeddings([rec[self.text_field] for rec in records])
        return [{**rec, 'doc_embs': e} for rec, e in zip(records, embs)]

    def fuse_rank_cutoff(self, k: int):
        return pt.RankCutoff(k) >> self

    def __rshift__(self, right):
        # doc_encoder() >> index.indexer(): the index records which model made the vectors it stores
        if callable(getattr(right, 'bind_model', None)) and getattr(right, 'model', None) is None:
            right = right.bind_model(self.model)
        return super().__rshift__(right)

    def __repr__(self):
        return f'ColBERTModel({self.model.name!r}).doc_encoder()'

    def subtransformers(self):
        return {}


BACKENDS = ('native', 'pylate', 'pyterrier_colbert')


def _device(device):
    torch = _torch()
    return torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))


class ColBERT(pt.Transformer):
    """Re-ranks candidates by ColBERT MaxSim, with no index (input: qid, query, docno, text -> adds score, rank).

    Each distinct query and each distinct document text is encoded once per call (a document retrieved for several
    queries too); documents are tokenised once, sorted by length and encoded in batches. fp32 on CPU (or int8 with
    ``quantize='int8'``), half precision only on a GPU.

    Example::

        colbert = ColBERT('path/to/colbert-checkpoint')        # or ColBERT(ColBERTModel.new('minilm-l6'))
        pipeline = bm25 % 100 >> dataset.text_loader() >> colbert >> cross_encoder

    Args:
        model: a checkpoint folder, hub id (``colbert-ir/colbertv2.0``) or a :class:`ColBERTModel`.
        batch_size: documents per forward pass.
        query_maxlen / doc_maxlen: override the checkpoint's lengths (the study uses doc_maxlen=300).
        device: ``cpu`` / ``cuda``; default: cuda when available.
        backend: ``native`` (this module), ``pylate`` or ``pyterrier_colbert`` (used only when importable).
        text_field: the column holding the document text.
        dedup: encode each distinct document text once (``False``: once per row, the same scores to float rounding);
            the native backend only.
        quantize: ``None`` (the model's own setting; fp32 by default) or ``'int8'``: encode with an int8 copy of the
            encoder (CPU only; ``device`` defaults to CPU, a GPU device is refused; the native backend only). A
            :class:`ColBERTModel` passed in is not changed: the re-ranker uses an int8 view of it.
    """

    def __init__(self, model: Union[str, Path, ColBERTModel] = 'colbert-ir/colbertv2.0', *, batch_size: int = 32,
                 query_maxlen: Optional[int] = None, doc_maxlen: Optional[int] = None, device: Optional[str] = None,
                 backend: str = 'native', text_field: str = 'text', verbose: bool = False, dedup: bool = True,
                 quantize: Optional[str] = None):
        if backend not in BACKENDS:
            raise KnowacqError(f'unknown ColBERT backend {backend!r}; use one of {BACKENDS}')
        device = quantize_device(quantize, device)
        if device is None and getattr(model, 'quantize', None):
            device = 'cpu'      # an int8 ColBERTModel scores on the CPU
        if quantize is not None and backend != 'native':
            raise KnowacqError(f"quantize={quantize!r} needs backend='native' (the {backend} backend runs its own "
                               "fp32 model); drop quantize= or use the native backend")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise KnowacqError(f'batch_size must be a positive integer, got {batch_size!r}')
        for key, val in (('query_maxlen', query_maxlen), ('doc_maxlen', doc_maxlen)):
            if val is not None and (not isinstance(val, int) or val < 4 or val > 512):
                raise KnowacqError(f'{key} must be an integer in [4, 512], got {val!r}')
        self.batch_size, self.backend, self.text_field, self.verbose = batch_size, backend, text_field, verbose
        self.dedup = bool(dedup)
        self.device = _device(device)
        self.query_maxlen, self.doc_maxlen = query_maxlen, doc_maxlen
        self._adapter = None
        if isinstance(model, ColBERTModel):
            self.model, self.checkpoint = (model.quantized(quantize) if quantize else model), None
            for key, val in (('query_maxlen', query_maxlen), ('doc_maxlen', doc_maxlen)):
                if val is not None:
                    model.config[key] = val
        else:
            self.checkpoint = str(model)
            if backend == 'native':
                self.model = ColBERTModel.from_pretrained(model, query_maxlen=query_maxlen, doc_maxlen=doc_maxlen,
                                                          quantize=quantize)
            else:
                self.model = None
                self._adapter = _load_adapter(backend, self.checkpoint, self)
        if self.model is not None:
            if getattr(self.model, 'quantize', None) and self.device.type != 'cpu':
                quantize_device(self.model.quantize, self.device)      # an int8 model on a GPU: the one error
            self.model.eval().to(self.device)
            if self.device.type == 'cuda':
                self.model.half()
        elif self._adapter is None:
            raise KnowacqError(f'backend {backend!r} needs a checkpoint name, not an in-memory ColBERTModel')

    @property
    def quantize(self) -> Optional[str]:
        return getattr(self.model, 'quantize', None) if self.model is not None else None

    def __repr__(self):
        quantize = f', quantize={self.quantize!r}' if self.quantize else ''
        return f'ColBERT({self.checkpoint or self.model.name!r}, backend={self.backend!r}{quantize})'

    def _key(self):
        return (self.checkpoint if self.checkpoint is not None else id(self.model), self.batch_size, self.query_maxlen,
                self.doc_maxlen, self.backend, self.text_field, str(self.device)) + \
            ((self.quantize,) if self.quantize else ())

    def __eq__(self, other):
        return isinstance(other, ColBERT) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def score_pairs(self, queries: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        """MaxSim score of each (query, text) pair, as float32."""
        if len(queries) != len(texts):
            raise KnowacqError(f'score_pairs got {len(queries)} queries but {len(texts)} texts; pass one of each per pair')
        if self._adapter is not None:
            return np.asarray(self._adapter(list(queries), list(texts)), dtype=np.float32)
        torch = _torch()
        out = np.zeros(len(texts), dtype=np.float32)
        if not len(texts):
            return out
        q_index, (uniq,) = distinct(queries, sort=True)
        doc_of, (docs,) = distinct(texts, enabled=self.dedup)
        # the rows of each distinct document: rows_by_doc[starts[j]:starts[j + 1]]
        rows_by_doc = np.argsort(doc_of, kind='stable')
        starts = np.searchsorted(doc_of[rows_by_doc], np.arange(len(docs) + 1))
        slot = np.zeros(len(docs), dtype=np.int64)   # position of a distinct document in its encoded batch
        m = self.model
        with torch.inference_mode():
            qs = []
            for i in range(0, len(uniq), 128):
                ids, mask = m.tokenize_queries(uniq[i:i + 128])
                qs.append(m.encode_queries(ids.to(self.device), mask.to(self.device)))
            Q = torch.cat(qs)
            toks = m.doc_token_ids(docs)
            order = np.argsort([-len(t) for t in toks], kind='stable')
            batches = range(0, len(order), self.batch_size)
            for start in pt.tqdm(batches, desc='ColBERT', unit='batch', disable=not self.verbose):
                sel = order[start:start + self.batch_size]
                ids, mask = m.pad_docs([toks[j] for j in sel])
                D, keep = m.encode_docs(ids.to(self.device), mask.to(self.device))
                slot[sel] = np.arange(len(sel))
                rows = np.concatenate([rows_by_doc[starts[j]:starts[j + 1]] for j in sel])
                # MaxSim in chunks of batch_size rows, so memory does not grow with how often a document repeats
                for r in range(0, len(rows), self.batch_size):
                    chunk = rows[r:r + self.batch_size]
                    at = torch.as_tensor(slot[doc_of[chunk]], device=self.device)
                    scores = maxsim(Q[torch.as_tensor(q_index[chunk], device=self.device)], D[at], keep[at])
                    out[chunk] = scores.float().cpu().numpy()
        return out

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        pta.validate.result_frame(inp, extra_columns=['query', self.text_field])
        require_text(inp, self.text_field, text_fix('ColBERT scorer', 'colbert'))
        require_text(inp, 'query', 'give every topic a query text')
        return with_scores(inp, self.score_pairs(inp['query'].astype(str).tolist(),
                                                 inp[self.text_field].astype(str).tolist()))


def _load_adapter(backend: str, checkpoint: str, owner: 'ColBERT'):
    """A ``score(queries, texts) -> scores`` function backed by an optional peer library."""
    if backend == 'pylate':
        try:
            from pylate import models
        except ImportError:
            raise KnowacqError("backend='pylate' needs pylate: pip install --no-deps pylate (see ECOSYSTEM.md), "
                               "or use backend='native'") from None
        kwargs = {k: v for k, v in (('query_length', owner.query_maxlen), ('document_length', owner.doc_maxlen)) if v}
        model = models.ColBERT(model_name_or_path=str(_checkpoint_folder(checkpoint)), device=str(owner.device), **kwargs)

        def score(queries, texts):
            torch = _torch()
            qv = model.encode(queries, is_query=True, batch_size=owner.batch_size, convert_to_tensor=False)
            dv = model.encode(texts, is_query=False, batch_size=owner.batch_size, convert_to_tensor=False)
            return [float(torch.einsum('qh,dh->qd', torch.as_tensor(q), torch.as_tensor(d)).max(1).values.sum())
                    for q, d in zip(qv, dv)]
        return score
    try:
        from pyterrier_colbert.ranking import ColBERTModelOnlyFactory
    except ImportError:
        raise KnowacqError("backend='pyterrier_colbert' needs pyterrier_colbert (pip install "
                           "git+https://github.com/terrierteam/pyterrier_colbert), or use backend='native'") from None
    # its defaults are gpu=True and mask_punctuation=False (ColBERTv1); ask for the device and ColBERTv2's skip-list
    factory = ColBERTModelOnlyFactory(str(_checkpoint_folder(checkpoint)), gpu=owner.device.type == 'cuda',
                                      mask_punctuation=True)
    scorer = factory.text_scorer(doc_attr=owner.text_field)

    def score(queries, texts):
        qid_of = {}
        frame = pd.DataFrame({'qid': [qid_of.setdefault(q, str(len(qid_of))) for q in queries], 'query': list(queries),
                              'docno': [str(i) for i in range(len(texts))], owner.text_field: list(texts)})
        # it returns each query's documents ranked; put the scores back in input order
        out = scorer(frame).astype({'docno': int}).set_index('docno')['score']
        return out.reindex(range(len(texts))).to_numpy()
    return score

