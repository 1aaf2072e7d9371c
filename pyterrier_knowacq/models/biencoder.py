"""Single-vector bi-encoders (BERT-style or decoder backbones, any pooling) that plug into pyterrier-dr.

Query/document encoders emit pyterrier-dr's ``query_vec`` / ``doc_vec`` columns, so ``FlexIndex`` indexes and
retrieves with them; ``.scorer()`` re-ranks a first stage. Within one call each distinct query and each distinct
document text is encoded once (a document retrieved for several queries is encoded once).

Example::

    import pyterrier_dr
    model = BiEncoder.from_pretrained('minilm-l6')          # pooling read from the sentence-transformers config
    index = pyterrier_dr.FlexIndex('msmarco.flex')
    index.index(model.doc_encoder()(corpus_frame))           # or: (model >> index.indexer()).index(corpus_iter)
    retriever = model.query_encoder() >> index.retriever()
    reranker = bm25 >> dataset.text_loader() >> model.scorer()

The family contract (:mod:`pyterrier_knowacq.models.artifacts`): ``BiEncoder.new(backbone)``,
``BiEncoder.from_pretrained(path_or_id)`` (= ``BiEncoder(path)``, what ``pt.Artifact.load`` calls), ``model.save(path)``,
``model.scorer()``, ``model.query_encoder()`` and ``model.doc_encoder()``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import numpy as np
import pandas as pd
import pyterrier_alpha as pta
import pyterrier_dr
import torch
from pyterrier_dr.biencoder import BiDocEncoder, BiQueryEncoder, BiScorer
from torch import nn

from .artifacts import ModelArtifact, describe_config, is_path
from ._batching import default_device, distinct, pad_batch, require_text, run_sorted, text_fix, tokenize, with_scores
from .._util import KnowacqError, atomic_directory, atomic_write_json
from .backbones import (dpr_role, is_decoder_config, load_encoder, load_pretrained_encoder, load_tokenizer,
                        paired_query_encoder, resolve_model)
from .packed import last_hidden_state
from .pooling import get_pooling
from .quantize import check_quantize, quantize_device, quantized_copy

__all__ = ['BiEncoder']

META = 'knowacq.json'


def _sentence_transformers_pooling(path: Path):
    """(pooling, normalize) declared by a sentence-transformers folder, or (None, False)."""
    modules = path / 'modules.json'
    if not modules.exists():
        return None, False
    pooling, normalize = None, False
    for mod in json.loads(modules.read_text()):
        if mod.get('type', '').endswith('Pooling'):
            cfg = json.loads((path / mod['path'] / 'config.json').read_text())
            for key, name in (('pooling_mode_cls_token', 'cls'), ('pooling_mode_mean_tokens', 'mean'),
                              ('pooling_mode_lasttoken', 'last')):
                if cfg.get(key):
                    pooling = name
        if mod.get('type', '').endswith('Normalize'):
            normalize = True
    return pooling, normalize


def _dpr_query_model(name, path) -> Optional[str]:
    """The question encoder a DPR context encoder named alone pairs with; an error for DPR names that need one."""
    from transformers import AutoConfig
    config = AutoConfig.from_pretrained(path)
    role = dpr_role(config, name)
    if role == 'context':
        pair = paired_query_encoder(str(name))
        if pair is None:
            raise KnowacqError(f'{name} is a DPR context (passage) encoder; its queries need the DPR question encoder it '
                               f'was trained with: BiEncoder.from_pretrained({str(name)!r}, query_model=QUESTION_ENCODER) '
                               '(or backbones.register_dpr_pair(CONTEXT, QUESTION) once)')
        return pair
    if role == 'question':
        raise KnowacqError(f'{name} is a DPR question encoder; a DPR bi-encoder encodes passages with the context encoder: '
                           f'BiEncoder.from_pretrained(CONTEXT_ENCODER, query_model={str(name)!r}) (e.g. '
                           'facebook/dpr-ctx_encoder-single-nq-base; pass query_model=the same name to share it)')
    return None


class BiEncoder(ModelArtifact, pyterrier_dr.BiEncoder):
    """A dense bi-encoder: one (or two, DPR-style) transformer encoders + a pooling.

    Args:
        model: the document encoder (``AutoModel``), also used for queries unless ``query_model`` is given; or a
            folder / hub id (``BiEncoder(path, ...)`` is ``BiEncoder.from_pretrained(path, ...)``, what
            ``pt.Artifact.load`` calls; settings left ``None`` then come from the folder).
        tokenizer: its tokenizer (``None`` with a path).
        pooling: ``cls`` (the default), ``mean`` or ``last`` (see :mod:`pyterrier_knowacq.models.pooling`).
        query_model: a separate query encoder (DPR), or ``None`` for a shared encoder.
        normalize: L2-normalise the vectors (cosine similarity through the dot product); default off.
        name: where the model came from (for ``repr`` and equality).
        max_length: token limit for documents, default 256 (queries: ``query_max_length``, default 64).
        append_eos: add the EOS token to every text (decoders pooled by their last token, as RepLLaMA).
        query_prefix, doc_prefix: strings put before queries/documents (e.g. ``"query: "``).
        dedup: the scorer and doc encoder encode each distinct document text once per call (``False``: every row,
            the same vectors to float rounding). Queries are always encoded once each, as in pyterrier-dr.
        quantize: ``None`` (fp32) or ``'int8'``: the scorer and encoders encode with dynamically quantised copies of
            the encoder(s) made at load time (CPU only; ``device`` defaults to CPU, a GPU device is refused; see
            :mod:`~pyterrier_knowacq.models.quantize`). Training (``encode_torch``) and :meth:`save` use the fp32
            encoders.
    """

    ARTIFACT_TYPE = 'bi_encoder'

    def __init__(self, model: nn.Module, tokenizer=None, pooling: Optional[str] = None,
                 query_model: Optional[nn.Module] = None, normalize: Optional[bool] = None, name: str = '<in-memory>',
                 batch_size: int = 32, max_length: Optional[int] = None, query_max_length: Optional[int] = None,
                 append_eos: Optional[bool] = None, query_prefix: Optional[str] = None, doc_prefix: Optional[str] = None,
                 text_field: str = 'text', verbose: bool = False, device=None, dedup: bool = True,
                 quantize: Optional[str] = None):
        device = quantize_device(quantize, device)
        if is_path(model):
            if tokenizer is not None:
                raise KnowacqError('BiEncoder(path) loads the tokenizer from the folder; pass no tokenizer with a path')
            settings = {k: v for k, v in (('max_length', max_length), ('query_max_length', query_max_length),
                                          ('append_eos', append_eos), ('query_prefix', query_prefix),
                                          ('doc_prefix', doc_prefix)) if v is not None}
            self._adopt(type(self).from_pretrained(model, pooling=pooling, query_model=query_model, normalize=normalize,
                                                   batch_size=batch_size, text_field=text_field, verbose=verbose,
                                                   device=device, dedup=dedup, quantize=quantize, **settings))
            return
        if tokenizer is None:
            raise KnowacqError('BiEncoder(model, tokenizer) needs the tokenizer of an in-memory model; or load a folder '
                               'with BiEncoder(path) / BiEncoder.from_pretrained(path)')
        pooling = pooling or 'cls'
        normalize = bool(normalize)
        max_length = 256 if max_length is None else max_length
        query_max_length = 64 if query_max_length is None else query_max_length
        query_prefix, doc_prefix = query_prefix or '', doc_prefix or ''
        pyterrier_dr.BiEncoder.__init__(self, batch_size=batch_size, text_field=text_field, verbose=verbose)
        self._set_artifact_path(None)
        self.backbone = str(name)
        self.dedup = bool(dedup)
        decoder = is_decoder_config(model.config)
        if pooling == 'cls' and decoder:
            raise KnowacqError(f'pooling "cls" cannot summarise a causal decoder ({name}): its first token sees nothing '
                               'after it; use pooling "last" or "mean"')
        self.model = model
        self.query_model = query_model
        self.tokenizer = tokenizer
        self.pooling_name = pooling
        self.pooling = get_pooling(pooling)
        self.normalize = normalize
        self.name = str(name)
        self.max_length = int(max_length)
        self.query_max_length = int(query_max_length)
        self.append_eos = decoder and pooling == 'last' if append_eos is None else bool(append_eos)
        self.query_prefix, self.doc_prefix = query_prefix, doc_prefix
        self.device = torch.device(device) if device is not None else default_device()
        self.quantize = check_quantize(quantize, self.device)
        for m in (self.model, self.query_model):
            if m is not None:
                m.to(self.device).eval()
        # int8 copies for inference (sharing the fp32 embeddings); the fp32 encoders train and are saved
        self._int8 = {role: quantized_copy(m, tokenizer=tokenizer) for role, m in
                      (('doc', self.model), ('query', self.query_model)) if m is not None} if self.quantize else {}

    # -- construction and IO (the family contract)
    @classmethod
    def new(cls, backbone: str, pooling: Optional[str] = None, query_backbone: Optional[str] = None,
            normalize: bool = False, **kwargs) -> 'BiEncoder':
        """An untrained bi-encoder from a backbone name (the starting point of fine-tuning): every weight from the
        backbone's checkpoint (:func:`~pyterrier_knowacq.models.backbones.load_encoder`), nothing new.

        ``pooling`` defaults to ``cls`` for encoders and ``last`` for decoders; ``query_backbone`` gives queries their
        own encoder (DPR-style), else queries and documents share one.
        """
        model, tokenizer = load_encoder(backbone, dtype=torch.float32)
        qmodel = load_encoder(query_backbone, dtype=torch.float32)[0] if query_backbone else None
        if pooling is None:
            pooling = 'last' if is_decoder_config(model.config) else 'cls'
        bienc = cls(model, tokenizer, pooling=pooling, query_model=qmodel, normalize=normalize, name=str(backbone),
                    **kwargs)
        return bienc

    @classmethod
    def from_pretrained(cls, name: str, pooling: Optional[str] = None, query_model: Optional[str] = None,
                        normalize: Optional[bool] = None, **kwargs) -> 'BiEncoder':
        """Load a folder written by :meth:`save`, a sentence-transformers folder, or any encoder name/hub id.

        Without a ``knowacq.json`` or sentence-transformers config, pooling defaults to ``cls`` for encoders and
        ``last`` for decoders. Every weight comes from the checkpoint (else :class:`KnowacqError`, see
        :func:`~pyterrier_knowacq.models.backbones.load_pretrained`).

        DPR: ``name`` is the context (passage) encoder and ``query_model`` the question encoder; a context encoder
        named alone gets its registered question encoder (``backbones.DPR_PAIRS``, e.g.
        ``facebook/dpr-ctx_encoder-single-nq-base`` -> ``facebook/dpr-question_encoder-single-nq-base``), and one
        without a registered pair, or a question encoder named alone, raises :class:`KnowacqError` asking for
        ``query_model``. Both load as the plain BERT inside (DPR's vectors are its CLS states: ``pooling='cls'``).
        """
        path = resolve_model(name)
        meta_file = Path(path) / META
        st_pool, st_norm = (None, False)
        # the folder reproduces this model only when no argument changed what it encodes
        overridden = any(v is not None for v in (pooling, query_model, normalize)) or \
            any(k in kwargs for k in ('max_length', 'query_max_length', 'append_eos', 'query_prefix', 'doc_prefix'))
        backbone = None
        if meta_file.exists():
            meta = json.loads(meta_file.read_text())
            if meta.get('kind') != 'bi-encoder':
                raise KnowacqError(f'{path} holds a {meta.get("kind")!r} model, not a bi-encoder; load it with the matching transformer')
            pooling = pooling or meta['pooling']
            normalize = meta.get('normalize', False) if normalize is None else normalize
            for key in ('max_length', 'query_max_length', 'append_eos', 'query_prefix', 'doc_prefix'):
                if key in meta and key not in kwargs:
                    kwargs[key] = meta[key]
            if meta.get('query_model') and query_model is None:
                query_model = str(Path(path) / meta['query_model'])
            backbone = meta.get('backbone')
        elif Path(path).is_dir():
            st_pool, st_norm = _sentence_transformers_pooling(Path(path))
        if query_model is None:
            query_model = _dpr_query_model(name, path)
            overridden = overridden or query_model is not None   # a DPR pair: the question encoder lives elsewhere
        model = load_pretrained_encoder(path, name, dtype=torch.float32)
        if pooling is None:
            pooling = st_pool or ('last' if is_decoder_config(model.config) else 'cls')
        normalize = st_norm if normalize is None else normalize
        qmodel = load_pretrained_encoder(resolve_model(query_model), query_model, dtype=torch.float32) if query_model else None
        bienc = cls(model, load_tokenizer(name), pooling=pooling, query_model=qmodel, normalize=normalize, name=str(name),
                    **kwargs)
        bienc.backbone = str(backbone or name)
        bienc._set_artifact_path(None if overridden else path)
        return bienc

    def save(self, folder) -> Path:
        """Write the encoder(s) as safetensors with the tokenizer, ``knowacq.json``, ``pt_meta.json`` (so
        ``pt.Artifact.load`` finds it) and the model card ``README.md``, atomically; returns the folder."""
        folder = Path(folder)
        with atomic_directory(folder, overwrite=True) as tmp:
            self.model.save_pretrained(tmp, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
            if self.query_model is not None:
                self.query_model.save_pretrained(tmp / 'query', safe_serialization=True)
            atomic_write_json(tmp / META, {
                'kind': 'bi-encoder', 'pooling': self.pooling_name, 'normalize': self.normalize,
                'query_model': 'query' if self.query_model is not None else None, 'max_length': self.max_length,
                'query_max_length': self.query_max_length, 'append_eos': self.append_eos,
                'query_prefix': self.query_prefix, 'doc_prefix': self.doc_prefix, 'backbone': self.backbone})
            self._write_artifact_files(tmp, {
                'backbone': self.backbone, 'architecture': describe_config(self.model.config),
                'settings': {'pooling': self.pooling_name, 'normalize': self.normalize,
                             'query encoder': 'separate (query/)' if self.query_model is not None else 'shared',
                             'max_length (document tokens)': self.max_length,
                             'query_max_length': self.query_max_length, 'append_eos': self.append_eos,
                             'query_prefix': self.query_prefix, 'doc_prefix': self.doc_prefix,
                             'similarity': 'dot product'}})
        return folder

    # -- encoding
    def _prepare(self, texts, role):
        prefix = self.query_prefix if role == 'query' else self.doc_prefix
        texts = [prefix + str(t) for t in texts]
        max_length = self.query_max_length if role == 'query' else self.max_length
        if self.append_eos:
            enc = tokenize(self.tokenizer, texts, max_length=max_length - 1)
            eos = self.tokenizer.eos_token_id
            enc['input_ids'] = [ids + [eos] for ids in enc['input_ids']]
            enc['attention_mask'] = [m + [1] for m in enc['attention_mask']]
            return enc
        return tokenize(self.tokenizer, texts, max_length=max_length)

    def _encoder(self, role):
        """The encoder of ``role``: its int8 copy when scoring (no gradients) with ``quantize='int8'``."""
        if self._int8 and not torch.is_grad_enabled():
            return self._int8['query'] if role == 'query' and 'query' in self._int8 else self._int8['doc']
        return self.query_model if role == 'query' and self.query_model is not None else self.model

    def _forward(self, batch, role):
        encoder = self._encoder(role)
        kwargs = {k: v for k, v in batch.items() if k in ('input_ids', 'attention_mask', 'token_type_ids')}
        if 'token_type_ids' in kwargs and getattr(encoder.config, 'type_vocab_size', 0) < 1:
            kwargs.pop('token_type_ids')
        hidden = last_hidden_state(encoder, kwargs['input_ids'], kwargs['attention_mask'], kwargs.get('token_type_ids'),
                                   first_only=getattr(self.pooling, 'name', None) == 'cls')
        vec = self.pooling(hidden, batch['attention_mask'])
        return torch.nn.functional.normalize(vec, dim=-1) if self.normalize else vec

    def encode_torch(self, texts: List[str], role: str = 'doc') -> torch.Tensor:
        """Encode one batch keeping gradients (for training)."""
        enc = self._prepare(texts, role)
        return self._forward(pad_batch(self.tokenizer, enc, np.arange(len(texts)), self.device), role)

    def _encode(self, texts, role, batch_size=None) -> np.ndarray:
        texts = list(texts)
        if not texts:
            dim = self.model.config.hidden_size
            return np.empty((0, dim), dtype=np.float32)
        enc = self._prepare(texts, role)
        return run_sorted(lambda b: self._forward(b, role), self.tokenizer, enc, batch_size or self.batch_size,
                          self.device, verbose=self.verbose, desc=f'encoding {role}s', unit=role)

    def encode_queries(self, texts, batch_size=None) -> np.ndarray:
        return self._encode(texts, 'query', batch_size)

    def encode_queries_torch(self, texts, batch_size=None) -> torch.Tensor:
        return self.encode_torch(list(texts), 'query')

    def encode_docs(self, texts, batch_size=None) -> np.ndarray:
        return self._encode(texts, 'doc', batch_size)

    # -- transformers (pyterrier-dr's, with input checks, dtypes that do not depend on the input size, and dedup)
    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        """The model as a transformer: the query encoder, doc encoder or scorer, as the columns call for (as in
        pyterrier-dr, with the ``qid`` / ``docno`` columns this module's encoders and scorer require)."""
        with pta.validate.any(inp) as v:
            v.query_frame(extra_columns=['query'], mode='query_encoder')
            v.document_frame(extra_columns=[self.text_field], mode='doc_encoder')
            for cols in (['query', self.text_field], ['query_vec', self.text_field], ['query', 'doc_vec'],
                         ['query_vec', 'doc_vec']):
                v.result_frame(extra_columns=cols, mode='scorer')
            v.columns(includes=['qid', 'query'], mode='query_encoder')
            v.columns(includes=['docno', self.text_field], mode='doc_encoder')
        if v.mode == 'scorer':
            return self.scorer()(inp)
        if v.mode == 'query_encoder':
            return self.query_encoder()(inp)
        return self.doc_encoder()(inp)

    def query_encoder(self, verbose=None, batch_size=None) -> BiQueryEncoder:
        return _QueryEncoder(self, verbose=verbose, batch_size=batch_size)

    def doc_encoder(self, verbose=None, batch_size=None) -> BiDocEncoder:
        return _DocEncoder(self, verbose=verbose, batch_size=batch_size)

    def text_scorer(self, verbose=None, batch_size=None, sim_fn=None) -> BiScorer:
        return _Scorer(self, verbose=verbose, batch_size=batch_size, sim_fn=sim_fn)

    def __repr__(self):
        quantize = f', quantize={self.quantize!r}' if self.quantize else ''
        return f'BiEncoder({self.name!r}, pooling={self.pooling_name!r}{quantize})'

    def _key(self):
        return (self.name, self.pooling_name, self.normalize, self.max_length, self.query_max_length, self.append_eos,
                self.query_prefix, self.doc_prefix) + ((self.quantize,) if self.quantize else ())

    def __eq__(self, other):
        return isinstance(other, BiEncoder) and other._key() == self._key() and \
            (self.name != '<in-memory>' or other.model is self.model)

    def __hash__(self):
        return hash(('BiEncoder',) + self._key())


def _vector_column(vectors: np.ndarray, index) -> pd.Series:
    """One array per row, as pyterrier-dr stores vectors; ``object`` dtype also when there are no rows."""
    return pd.Series(list(vectors), index=index, dtype=object)


def _vectors(model: BiEncoder, inp: pd.DataFrame, field: str, role: str, batch_size: int) -> np.ndarray:
    """``[len(inp), dim]`` vectors of ``inp[field]``: each distinct query encoded once, in sorted order as
    pyterrier-dr's query encoder does; each distinct document text once, in order of first appearance (so a frame
    without repeats is encoded exactly as before), or every row when ``model.dedup`` is off."""
    query = role == 'query'
    codes, (texts,) = distinct(inp[field].astype(str).tolist(), enabled=query or model.dedup, sort=query)
    encode = model.encode_queries if query else model.encode_docs
    return encode(texts, batch_size=batch_size)[codes]


class _QueryEncoder(BiQueryEncoder):
    """``qid, query`` -> adds ``query_vec``; ``docno`` may be there (``bm25 >> query_encoder() >> index.scorer()``)."""

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        pta.validate.columns(inp, includes=['qid', 'query'])
        require_text(inp, 'query', 'give every topic a query text')
        vecs = _vectors(self.bi_encoder_model, inp, 'query', 'query', self.batch_size)
        return inp.assign(query_vec=_vector_column(vecs, inp.index))


class _DocEncoder(BiDocEncoder):
    """``docno, text`` -> adds ``doc_vec``; ``qid`` may be there (a result frame)."""

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        pta.validate.columns(inp, includes=['docno', self.text_field])
        require_text(inp, self.text_field, 'give every document a text (dataset.text_loader() adds it by docno)')
        vecs = _vectors(self.bi_encoder_model, inp, self.text_field, 'doc', self.batch_size)
        return inp.assign(doc_vec=_vector_column(vecs, inp.index))


class _Scorer(BiScorer):
    """``qid, docno`` with ``query`` or ``query_vec`` and the text or ``doc_vec`` -> adds ``score`` (the dot product,
    float64) and ``rank``, rows in input order."""

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        with pta.validate.any(inp) as v:   # one check, so pt.inspect reads every accepted set of columns
            for cols in (['query', self.text_field], ['query_vec', self.text_field], ['query', 'doc_vec'],
                         ['query_vec', 'doc_vec']):
                v.result_frame(extra_columns=cols)
        if self.sim_fn != pyterrier_dr.SimFn.dot:
            raise KnowacqError(f'the bi-encoder scorer supports the dot product only, not {self.sim_fn}')
        model = self.bi_encoder_model
        if 'query_vec' not in inp.columns:
            require_text(inp, 'query', 'give every topic a query text')
        if 'doc_vec' not in inp.columns:
            require_text(inp, self.text_field, text_fix('bi-encoder scorer', 'model.scorer()'))
        if not len(inp):
            return with_scores(inp, [])
        Q = np.stack(inp['query_vec'].tolist()) if 'query_vec' in inp.columns else \
            _vectors(model, inp, 'query', 'query', self.batch_size)
        D = np.stack(inp['doc_vec'].tolist()) if 'doc_vec' in inp.columns else \
            _vectors(model, inp, self.text_field, 'doc', self.batch_size)
        # row-wise sum of the products: the same float32 values as pyterrier-dr's per-row np.sum(q * d)
        return with_scores(inp, (Q * D).sum(axis=1))
