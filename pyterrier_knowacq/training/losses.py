"""Ranking losses as a registry of small classes (ir_measures style): ``get_loss('lce')(scores, targets)``.

Every loss is called as ``loss(scores, targets) -> scalar tensor`` where ``scores`` are the model's logits shaped
``[B, n]`` (``B`` queries, ``n`` candidates each; ``[B]`` for point-wise BCE) and ``targets`` depend on the loss:

============  ==========================================================  =================================
name          targets                                                     reference
============  ==========================================================  =================================
``lce``       ``[B, n]`` relevance labels (>0 = positive; usually one-hot  Gao et al., ECIR 2021 (LCE)
              at column 0), or ``None`` = the positive is column 0
``ranknet``   ``[B, n]`` teacher labels, higher = better (the study uses   Burges et al., ICML 2005;
              ``list_length + 1 - rank``); pairs with equal labels and     Pezzuti et al., ECIR 2025
              labels ``<= 0`` (padding) are ignored
``kl``        ``[B, n]`` teacher scores; KL(teacher || student) of the    Hinton et al. 2015
              temperature-scaled softmaxes, times ``T**2``
``margin_mse`` ``[B, n]`` teacher scores; MSE between student and teacher  Hofstätter et al. 2020
              margins of column 0 over every other column
``bce``       ``[B]`` or ``[B, n]`` binary labels                          point-wise baseline
``infonce``   ``[B]`` index of the positive column of a similarity matrix  Oord et al. 2018
              ``[B, N]`` (in-batch negatives), temperature ``tau``
============  ==========================================================  =================================

Example::

    from pyterrier_knowacq.training.losses import get_loss
    loss = get_loss('ranknet')(student_scores, teacher_labels)
"""
from __future__ import annotations

from typing import Optional, Type

import torch
import torch.nn.functional as F

from .._registry import Registry
from .._util import KnowacqError

__all__ = ['Loss', 'LCE', 'RankNet', 'KLDiv', 'MarginMSE', 'BCE', 'InfoNCE', 'LOSSES', 'register_loss', 'get_loss']

#: every loss by name (a :class:`~pyterrier_knowacq._registry.Registry`: ``get_entry`` names the closest)
LOSSES: Registry[Type['Loss']] = Registry('loss', hint='set `loss:` to one of them')


def register_loss(name: str):
    """``@register_loss('name')``: add a :class:`Loss` subclass to :data:`LOSSES` (its ``name`` is set)."""
    def wrap(cls):
        cls.name = name
        return LOSSES.register(name, cls)
    return wrap


class Loss:
    """Base class: ``__call__(scores, targets)`` -> scalar loss (mean over the batch)."""
    name = 'loss'
    #: what the training examples must provide as targets: 'labels', 'teacher_ranks', 'teacher_scores', 'index'
    target_kind = 'labels'

    def __call__(self, scores: torch.Tensor, targets: Optional[torch.Tensor] = None) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self):
        params = ', '.join(f'{k}={v!r}' for k, v in vars(self).items())
        return f'{type(self).__name__}({params})'

    def __eq__(self, other):
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self):
        return hash((type(self).__name__, tuple(sorted(vars(self).items()))))


def _2d(scores: torch.Tensor, name: str) -> torch.Tensor:
    if scores.dim() != 2:
        raise KnowacqError(f'{name} needs scores shaped [queries, candidates], got {tuple(scores.shape)}; '
                           'reshape the logits with .view(num_queries, group_size)')
    return scores


@register_loss('lce')
class LCE(Loss):
    """Localised contrastive estimation: softmax cross-entropy over each group (1 positive + n-1 negatives).

    With several positives in a row the target distribution is uniform over them.
    """

    def __call__(self, scores, targets=None):
        scores = _2d(scores, 'lce')
        if targets is None:
            return F.cross_entropy(scores, torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device))
        targets = (targets > 0).to(scores.dtype)
        if (targets.sum(1) == 0).any():
            raise KnowacqError('lce: a group has no positive candidate; build groups with at least one relevant text')
        dist = targets / targets.sum(1, keepdim=True)
        return -(dist * F.log_softmax(scores, dim=1)).sum(1).mean()


@register_loss('ranknet')
class RankNet(Loss):
    """RankNet over every ordered pair (i, j) with ``label_i > label_j > 0``.

    The loss of a pair is ``log(1 + exp(-(s_i - s_j)))`` (``sigma`` scales the difference); the batch loss is the mean
    over all valid pairs of all queries. Labels ``<= 0`` mark padding and take no part.
    """
    target_kind = 'teacher_ranks'

    def __init__(self, sigma: float = 1.0):
        self.sigma = float(sigma)

    def __call__(self, scores, targets=None):
        scores = _2d(scores, 'ranknet')
        if targets is None:
            raise KnowacqError('ranknet needs teacher labels (list_length + 1 - rank) as targets')
        targets = targets.to(scores.dtype)
        diff = scores.unsqueeze(2) - scores.unsqueeze(1)            # [B, n, n]: s_i - s_j
        valid = (targets.unsqueeze(2) > targets.unsqueeze(1)) & (targets.unsqueeze(2) > 0) & (targets.unsqueeze(1) > 0)
        if not valid.any():
            raise KnowacqError('ranknet: no pair of candidates has different teacher labels; check the teacher lists')
        return F.softplus(-self.sigma * diff[valid]).mean()


@register_loss('kl')
class KLDiv(Loss):
    """``T**2 * KL(softmax(teacher/T) || softmax(student/T))``, averaged over queries."""
    target_kind = 'teacher_scores'

    def __init__(self, temperature: float = 1.0):
        if temperature <= 0:
            raise KnowacqError(f'kl temperature must be > 0, got {temperature}')
        self.temperature = float(temperature)

    def __call__(self, scores, targets=None):
        scores = _2d(scores, 'kl')
        t = self.temperature
        teacher = F.log_softmax(targets.to(scores.dtype) / t, dim=1)
        student = F.log_softmax(scores / t, dim=1)
        return (teacher.exp() * (teacher - student)).sum(1).mean() * t * t


@register_loss('margin_mse')
class MarginMSE(Loss):
    """Mean squared error between the student's and the teacher's margins ``s_0 - s_j`` for every ``j >= 1``."""
    target_kind = 'teacher_scores'

    def __call__(self, scores, targets=None):
        scores = _2d(scores, 'margin_mse')
        if scores.shape[1] < 2:
            raise KnowacqError('margin_mse needs at least 2 candidates per query (a positive and a negative)')
        targets = targets.to(scores.dtype)
        student = scores[:, :1] - scores[:, 1:]
        teacher = targets[:, :1] - targets[:, 1:]
        return F.mse_loss(student, teacher)


@register_loss('bce')
class BCE(Loss):
    """Point-wise binary cross-entropy on the logits (labels > 0 count as relevant)."""

    def __call__(self, scores, targets=None):
        if targets is None:
            raise KnowacqError('bce needs binary labels as targets')
        return F.binary_cross_entropy_with_logits(scores, (targets > 0).to(scores.dtype))


@register_loss('infonce')
class InfoNCE(Loss):
    """Cross-entropy of a similarity matrix ``[B, N]`` divided by ``tau`` against the index of each row's positive."""
    target_kind = 'index'

    def __init__(self, tau: float = 1.0):
        if tau <= 0:
            raise KnowacqError(f'infonce tau must be > 0, got {tau}')
        self.tau = float(tau)

    def __call__(self, scores, targets=None):
        scores = _2d(scores, 'infonce')
        if targets is None:
            targets = torch.arange(scores.shape[0], device=scores.device)
        return F.cross_entropy(scores / self.tau, targets.long())


def get_loss(name, **params) -> Loss:
    """A loss instance from its registry name (or pass a :class:`Loss` through)."""
    if isinstance(name, Loss):
        return name
    cls = LOSSES.get_entry(name)    # an unknown name: one error with the closest
    try:
        return cls(**params)
    except TypeError as e:
        raise KnowacqError(f'bad parameters {params} for loss {name!r}: {e}') from None
