"""Pooling strategies that turn token states into one vector, as a registry (``cls``, ``mean``, ``last``).

Example::

    from pyterrier_knowacq.pooling import get_pooling
    pooled = get_pooling('last')(hidden_states, attention_mask)
"""
from __future__ import annotations

from typing import Dict, Type

import torch

__all__ = ['Pooling', 'ClsPooling', 'MeanPooling', 'LastTokenPooling', 'POOLINGS', 'get_pooling', 'last_token_index']


class Pooling:
    """Base class: ``__call__(hidden [B,T,H], attention_mask [B,T]) -> [B,H]``."""
    name: str = ''
    #: architectures (``config.model_type`` families) this pooling is meaningful for; ``None`` = any
    causal_ok: bool = True

    def __call__(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

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

    def __call__(self, hidden, attention_mask):
        first = first_token_index(attention_mask)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), first]


class MeanPooling(Pooling):
    """Mean over real (non-padding) tokens; padding never leaks into the average."""
    name = 'mean'

    def __call__(self, hidden, attention_mask):
        mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)


class LastTokenPooling(Pooling):
    """The true last non-padding token (the EOS for decoders), correct under left or right padding."""
    name = 'last'

    def __call__(self, hidden, attention_mask):
        idx = last_token_index(attention_mask)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of the last 1 in each row of the mask, whatever the padding side."""
    length = attention_mask.shape[1]
    flipped = attention_mask.flip(1).to(torch.int64)
    return (length - 1) - flipped.argmax(1)


def first_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of the first 1 in each row (0 under right padding)."""
    return attention_mask.to(torch.int64).argmax(1)


POOLINGS: Dict[str, Type[Pooling]] = {cls.name: cls for cls in (ClsPooling, MeanPooling, LastTokenPooling)}


def get_pooling(name) -> Pooling:
    """Look up a pooling by registry name (or pass a :class:`Pooling` through)."""
    if isinstance(name, Pooling):
        return name
    try:
        return POOLINGS[str(name).lower()]()
    except KeyError:
        raise ValueError(f'unknown pooling {name!r}; choose one of {sorted(POOLINGS)}') from None
