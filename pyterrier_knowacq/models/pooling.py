"""Pooling strategies that turn token states into one vector, as a registry (``cls``, ``mean``, ``last``).

Example::

    from pyterrier_knowacq.models.pooling import get_pooling
    pooled = get_pooling('last')(hidden_states, attention_mask)
"""
from __future__ import annotations

from typing import Type

import torch

from .._registry import Registry

__all__ = ['Pooling', 'ClsPooling', 'MeanPooling', 'LastTokenPooling', 'SegmentProductPooling', 'POOLINGS',
           'get_pooling', 'last_token_index']


class Pooling:
    """Base class: ``__call__(hidden [B,T,H], attention_mask [B,T], token_type_ids=None) -> [B,H]``."""
    name: str = ''
    #: whether a causal decoder can use it
    causal_ok: bool = True
    #: whether it needs the pair's segment ids (``token_type_ids``): cross-encoder heads only
    needs_segments: bool = False

    def __call__(self, hidden: torch.Tensor, attention_mask: torch.Tensor, token_type_ids=None) -> torch.Tensor:
        raise NotImplementedError

    def init_head(self, head: torch.nn.Linear) -> None:
        """Initialise a fresh linear head on this pooling (``None``-op: callers keep their own random init)."""

    def __repr__(self):
        return f'{type(self).__name__}()'

    def __eq__(self, other):
        return type(self) is type(other)

    def __hash__(self):
        return hash(type(self).__name__)


class ClsPooling(Pooling):
    """The first token's state (BERT's ``[CLS]``). Meaningless for causal decoders, whose first token sees nothing."""
    name = 'cls'
    causal_ok = False

    def __call__(self, hidden, attention_mask, token_type_ids=None):
        first = first_token_index(attention_mask)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), first]


class MeanPooling(Pooling):
    """Mean over real (non-padding) tokens; padding never leaks into the average."""
    name = 'mean'

    def __call__(self, hidden, attention_mask, token_type_ids=None):
        mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)


class LastTokenPooling(Pooling):
    """The true last non-padding token (the EOS for decoders), correct under left or right padding."""
    name = 'last'

    def __call__(self, hidden, attention_mask, token_type_ids=None):
        idx = last_token_index(attention_mask)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]


class SegmentProductPooling(Pooling):
    """Cross-encoder head pooling: the element-wise product of the query-segment and passage-segment means.

    Both segment means come from the *joint* encoding of ``[CLS] q [SEP] p [SEP]`` (every layer attends across the
    pair), are L2-normalised, and multiplied per dimension (scaled by ``H`` so each feature is O(1)). A linear head on
    this vector can express the cosine of the two means (all weights equal), which is what a sentence-embedding
    backbone such as all-MiniLM-L6-v2 was trained to make meaningful; :meth:`init_head` starts the head there
    (``scale * cos``), so fine-tuning starts from the backbone's similarity instead of a random score.
    Needs ``token_type_ids`` (BERT-style pair encodings).
    """
    name = 'segment-product'
    causal_ok = False
    needs_segments = True
    #: logit scale of the initial head (a softmax temperature of 1/20, as in contrastive sentence-embedding training)
    scale = 20.0

    def __call__(self, hidden, attention_mask, token_type_ids=None):
        if token_type_ids is None:
            raise ValueError('pooling "segment-product" needs token_type_ids to tell the query from the passage; '
                             'use a BERT-style backbone (or pooling "mean")')
        mask = attention_mask.to(hidden.dtype)
        passage = mask * token_type_ids.to(hidden.dtype)
        query = mask - passage
        q = (hidden * query.unsqueeze(-1)).sum(1) / query.sum(1, keepdim=True).clamp_min(1e-9)
        p = (hidden * passage.unsqueeze(-1)).sum(1) / passage.sum(1, keepdim=True).clamp_min(1e-9)
        q = torch.nn.functional.normalize(q, dim=-1)
        p = torch.nn.functional.normalize(p, dim=-1)
        return q * p * hidden.shape[-1]

    def init_head(self, head):
        with torch.no_grad():
            head.weight.fill_(self.scale / head.weight.shape[1])
            head.bias.zero_()


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of the last 1 in each row of the mask, whatever the padding side."""
    length = attention_mask.shape[1]
    flipped = attention_mask.flip(1).to(torch.int64)
    return (length - 1) - flipped.argmax(1)


def first_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of the first 1 in each row (0 under right padding)."""
    return attention_mask.to(torch.int64).argmax(1)


#: pooling name -> :class:`Pooling` class (``@POOLINGS.register('name')`` adds one)
POOLINGS: Registry[Type[Pooling]] = Registry('pooling')
for _cls in (ClsPooling, MeanPooling, LastTokenPooling, SegmentProductPooling):
    POOLINGS.register(_cls.name, _cls)
del _cls


def get_pooling(name) -> Pooling:
    """Look up a pooling by registry name (or pass a :class:`Pooling` through); an unknown name raises the registry's
    one-line :class:`~pyterrier_knowacq.KnowacqError` (a ``ValueError``) naming the choices and the closest one."""
    if isinstance(name, Pooling):
        return name
    return POOLINGS.get_entry(str(name).lower())()
