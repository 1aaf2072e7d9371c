"""Point-wise cross-encoder re-ranking: any sequence-classification checkpoint, or a backbone with a fresh head.

Example::

    from pyterrier_knowacq import CrossEncoder, get_dataset
    ds = get_dataset('msmarco-passage')
    ce = CrossEncoder.from_pretrained('path/to/checkpoint')     # or pt.Artifact.load('path/to/checkpoint')
    pipeline = ds.run_transformer('bm25') >> ds.text_loader() >> ce.scorer()

The family contract (:mod:`pyterrier_knowacq.models.artifacts`): ``CrossEncoder.new(backbone)``,
``CrossEncoder.from_pretrained(path_or_id)`` (= ``CrossEncoder(path)``, what ``pt.Artifact.load`` calls),
``ce.save(path)`` and ``ce.scorer()``; the cross-encoder is itself the re-ranking transformer, so ``ce(frame)`` and
``ce.scorer()(frame)`` are the same.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import pyterrier as pt
import torch
from torch import nn

from .artifacts import ModelArtifact, describe_config, is_path
from ._batching import default_device, distinct, require_text, run_sorted, text_fix, tokenize, with_scores
from .._util import KnowacqError, atomic_directory, atomic_write_json
from .backbones import is_decoder_config, load_encoder, load_pretrained, load_pretrained_encoder, load_tokenizer, resolve_model
from .packed import classifier_logits, last_hidden_state
from .pooling import get_pooling
from .quantize import check_quantize, quantize_device, quantized_copy

__all__ = ['CrossEncoder', 'CrossEncoderModel']

META = 'knowacq.json'


class CrossEncoderModel(nn.Module):
    """``forward(input_ids, attention_mask, token_type_ids=None) -> logits [B]``: one relevance score per pair.

    Either a backbone (``AutoModel``) + pooling + a fresh linear head, or a loaded ``*ForSequenceClassification``
    checkpoint (one logit: that logit; two logits: their difference, i.e. the log-odds of "relevant").
    """

    def __init__(self, backbone: nn.Module, pooling: Optional[str] = None, head: Optional[nn.Linear] = None,
                 classifier: bool = False):
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier
        self.pooling_name = pooling
        if not classifier:
            self.pooling = get_pooling(pooling)
            hidden = backbone.config.hidden_size
            self.head = head if head is not None else nn.Linear(hidden, 1)

    @property
    def config(self):
        return self.backbone.config

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        kwargs = {'input_ids': input_ids, 'attention_mask': attention_mask}
        if token_type_ids is not None and getattr(self.backbone.config, 'type_vocab_size', 0) > 1:
            kwargs['token_type_ids'] = token_type_ids
        if self.classifier:
            logits = classifier_logits(self.backbone, input_ids, attention_mask, kwargs.get('token_type_ids'))
            return logits[:, 0] if logits.shape[-1] == 1 else logits[:, 1] - logits[:, 0]
        hidden = last_hidden_state(self.backbone, input_ids, attention_mask, kwargs.get('token_type_ids'),
                                   first_only=getattr(self.pooling, 'name', None) == 'cls')
        return self.head(self.pooling(hidden, attention_mask, token_type_ids)).squeeze(-1)


class CrossEncoder(ModelArtifact, pt.Transformer):
    """Scores (query, text) pairs with a cross-encoder and re-ranks them.

    Input columns ``qid, query, docno, text``; adds ``score`` (float64) and ``rank`` (int64), rows in input order.
    Identical (query, text) pairs are scored once per call; pairs are tokenised once and scored in batches of similar
    length (dynamic padding), in fp32 on CPU (``quantize='int8'``: int8 on CPU, see
    :mod:`~pyterrier_knowacq.models.quantize`).

    Example::

        bm25 >> dataset.text_loader() >> CrossEncoder.from_pretrained('cross-encoder/ms-marco-MiniLM-L6-v2')

    Args:
        model: a :class:`CrossEncoderModel`, or a folder / hub id (``CrossEncoder(path)`` is
            ``CrossEncoder.from_pretrained(path)``; ``pt.Artifact.load(path)`` calls it).
        tokenizer: its tokenizer (``None`` with a path).
        name: where the model came from (for ``repr`` and equality).
        batch_size: pairs per forward pass.
        max_length: pair length limit in tokens (the passage is truncated).
        text_field: the column holding the passage text.
        verbose: show a progress bar.
        dedup: score each distinct (query, text) pair once (``False``: every row, the same scores to float rounding).
        quantize: ``None`` (fp32) or ``'int8'``: score with a dynamically quantised copy made at load time (CPU only;
            ``device`` defaults to CPU, a GPU device is refused). ``model`` stays fp32, and so does what :meth:`save`
            writes.
    """

    ARTIFACT_TYPE = 'cross_encoder'

    def __init__(self, model: CrossEncoderModel, tokenizer=None, name: str = '<in-memory>', batch_size: int = 32,
                 max_length: int = 512, text_field: str = 'text', verbose: bool = False, device=None,
                 dedup: bool = True, quantize: Optional[str] = None):
        device = quantize_device(quantize, device)
        if is_path(model):
            if tokenizer is not None:
                raise KnowacqError('CrossEncoder(path) loads the tokenizer from the folder; pass no tokenizer with a path')
            self._adopt(type(self).from_pretrained(model, batch_size=batch_size, max_length=max_length,
                                                   text_field=text_field, verbose=verbose, device=device, dedup=dedup,
                                                   quantize=quantize))
            return
        if tokenizer is None:
            raise KnowacqError('CrossEncoder(model, tokenizer) needs the tokenizer of an in-memory model; or load a '
                               'folder with CrossEncoder(path) / CrossEncoder.from_pretrained(path)')
        self._set_artifact_path(None)
        self.backbone = str(name)
        self.model = model
        self.tokenizer = tokenizer
        self.name = str(name)
        self.batch_size = int(batch_size)
        self.max_length = int(max_length)
        self.text_field = text_field
        self.verbose = verbose
        self.dedup = bool(dedup)
        self.device = torch.device(device) if device is not None else default_device()
        self.quantize = check_quantize(quantize, self.device)
        self.model.to(self.device).eval()
        # the int8 copy scores; self.model (fp32, sharing the copy's embeddings and head) is what save() writes
        self._int8 = quantized_copy(self.model, tokenizer=tokenizer, pairs=True) if self.quantize else None

    # -- construction
    @classmethod
    def new(cls, backbone: str, pooling: str = 'cls', seed: int = 0, **kwargs) -> 'CrossEncoder':
        """A backbone with a fresh, seeded 1-logit head (the starting point of fine-tuning).

        The head is the only new weight: the backbone loads with every weight from its checkpoint (see
        :func:`~pyterrier_knowacq.models.backbones.load_encoder`; e.g. ``google/electra-base-discriminator`` as an
        ``ElectraModel``, ``roberta-base`` as a ``RobertaModel`` without its absent pooler).
        """
        encoder, tokenizer = load_encoder(backbone)
        if pooling == 'cls' and is_decoder_config(encoder.config):
            raise KnowacqError(f'pooling "cls" cannot summarise a causal decoder ({backbone}): its first token sees '
                               'nothing after it; use pooling "last" or "mean"')
        pool = get_pooling(pooling)
        if pool.needs_segments and getattr(encoder.config, 'type_vocab_size', 0) < 2:
            raise KnowacqError(f'pooling {pooling!r} needs segment ids (token_type_ids), which {backbone} does not have; '
                               'use pooling "mean" or "cls"')
        generator = torch.Generator().manual_seed(seed)
        head = nn.Linear(encoder.config.hidden_size, 1)
        with torch.no_grad():
            head.weight.normal_(0.0, 0.02, generator=generator)
            head.bias.zero_()
        pool.init_head(head)
        ce = cls(CrossEncoderModel(encoder, pooling, head), tokenizer, name=f'new:{backbone}:{pooling}', **kwargs)
        ce.backbone = str(backbone)
        return ce

    @classmethod
    def from_pretrained(cls, name: str, **kwargs) -> 'CrossEncoder':
        """Load a checkpoint folder written by :meth:`save`, or any ``*ForSequenceClassification`` checkpoint/hub id.

        Every weight comes from the checkpoint: a classifier checkpoint lacking any weight (its head or BERT pooler
        included) raises :class:`KnowacqError`, as does a saved folder lacking encoder or head weights.
        """
        from transformers import AutoConfig, AutoModelForSequenceClassification
        from safetensors.torch import load_file
        path = resolve_model(name)
        meta_file = Path(path) / META
        meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
        if meta and meta.get('kind') != 'cross-encoder':
            raise KnowacqError(f'{path} holds a {meta.get("kind")!r} model, not a cross-encoder; '
                               'load it with the matching transformer')
        if meta and not meta.get('classifier'):
            encoder = load_pretrained_encoder(path, name, dtype=torch.float32)
            head_file = Path(path) / 'head.safetensors'
            if not head_file.exists():
                raise KnowacqError(f'{path} holds no head.safetensors, so its scoring head would be random; restore it, '
                                   'or re-save the model with CrossEncoder.save()')
            head = nn.Linear(encoder.config.hidden_size, 1)
            state = load_file(str(head_file))
            if set(state) != {'weight', 'bias'} or tuple(state['weight'].shape) != tuple(head.weight.shape):
                raise KnowacqError(f'{head_file} holds {sorted(state)} with shapes {[tuple(v.shape) for v in state.values()]}, '
                                   f'not a 1-logit head over {encoder.config.hidden_size} dims; the folder mixes two models')
            head.load_state_dict(state)
            model = CrossEncoderModel(encoder, meta['pooling'], head)
        else:
            config = AutoConfig.from_pretrained(path)
            archs = getattr(config, 'architectures', None) or []
            if not any(a.endswith('ForSequenceClassification') for a in archs):
                raise KnowacqError(f'{name} is not a cross-encoder checkpoint (architectures {archs}); fine-tune one, or '
                                   f'start from CrossEncoder.new({name!r}) for a fresh head')
            if config.num_labels not in (1, 2):
                raise KnowacqError(f'{name} has {config.num_labels} labels; a relevance cross-encoder needs 1 or 2')
            # no pooler allowance: a BERT classifier's head reads the pooler, so a missing one is an error too
            clf = load_pretrained(AutoModelForSequenceClassification, path, name, dtype=torch.float32, drop_pooler=False)
            model = CrossEncoderModel(clf, classifier=True)
        tokenizer = load_tokenizer(name)
        ce = cls(model, tokenizer, name=str(name), **kwargs)
        ce.backbone = str(meta.get('backbone') or name)
        ce._set_artifact_path(path)
        return ce

    def save(self, folder) -> Path:
        """Write safetensors weights, the tokenizer, ``knowacq.json``, ``pt_meta.json`` (so ``pt.Artifact.load``
        finds it) and the model card ``README.md``, atomically; returns the folder. An int8 scorer writes its fp32
        weights: quantisation is a load option (``from_pretrained(folder, quantize='int8')``), never stored."""
        folder = Path(folder)
        from safetensors.torch import save_file
        with atomic_directory(folder, overwrite=True) as tmp:
            self.model.backbone.save_pretrained(tmp, safe_serialization=True)
            if not self.model.classifier:
                save_file({k: v.detach().cpu().contiguous() for k, v in self.model.head.state_dict().items()},
                          str(tmp / 'head.safetensors'))
                atomic_write_json(tmp / META, {'kind': 'cross-encoder', 'pooling': self.model.pooling_name,
                                               'backbone': self.backbone})
            else:   # a *ForSequenceClassification checkpoint: its own head, loaded as such
                atomic_write_json(tmp / META, {'kind': 'cross-encoder', 'classifier': True, 'backbone': self.backbone})
            self.tokenizer.save_pretrained(tmp)
            head = 'the checkpoint\'s classification head' if self.model.classifier else \
                f'{self.model.pooling_name} pooling + a linear 1-logit head'
            self._write_artifact_files(tmp, {
                'backbone': self.backbone, 'architecture': describe_config(self.model.config),
                'settings': {'scoring': head, 'max_length (pair tokens)': self.max_length}})
        return folder

    # -- the family contract
    def scorer(self, batch_size: Optional[int] = None, verbose: Optional[bool] = None,
               text_field: Optional[str] = None) -> 'CrossEncoder':
        """The re-ranker (``qid, query, docno, text -> score, rank``): this cross-encoder itself, or a copy sharing its
        weights with other batch size / progress / text column."""
        if batch_size is None and verbose is None and text_field is None:
            return self
        import copy
        out = copy.copy(self)
        out.batch_size = int(batch_size) if batch_size is not None else self.batch_size
        out.verbose = self.verbose if verbose is None else verbose
        out.text_field = text_field or self.text_field
        return out

    # -- scoring
    def score_pairs(self, queries: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        """Score of each (query, text) pair as float32, in input order; each distinct pair is scored once."""
        if len(queries) != len(texts):
            raise KnowacqError(f'score_pairs got {len(queries)} queries but {len(texts)} texts; pass one of each per pair')
        if len(queries) == 0:
            return np.empty((0,), dtype=np.float32)
        codes, (queries, texts) = distinct(queries, texts, enabled=self.dedup)
        enc = tokenize(self.tokenizer, queries, texts, max_length=self.max_length)
        model = self._int8 if self._int8 is not None else self.model
        scores = run_sorted(lambda b: model(**b), self.tokenizer, enc, self.batch_size, self.device,
                            verbose=self.verbose, desc='cross-encoder', unit='pair')
        return scores[codes]

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        import pyterrier_alpha as pta
        pta.validate.result_frame(inp, extra_columns=['query', self.text_field])
        require_text(inp, self.text_field, text_fix('cross-encoder', 'cross_encoder'))
        require_text(inp, 'query', 'give every topic a query text')
        return with_scores(inp, self.score_pairs(inp['query'].astype(str).tolist(),
                                                 inp[self.text_field].astype(str).tolist()))

    def __repr__(self):
        return f'CrossEncoder({self.name!r}' + (f', quantize={self.quantize!r})' if self.quantize else ')')

    def _key(self):
        return (self.name, self.max_length, self.text_field) + ((self.quantize,) if self.quantize else ())

    def __eq__(self, other):
        return isinstance(other, CrossEncoder) and other._key() == self._key() and \
            (self.name != '<in-memory>' or other.model is self.model)

    def __hash__(self):
        return hash(('CrossEncoder',) + self._key())
