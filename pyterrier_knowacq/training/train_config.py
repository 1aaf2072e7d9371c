"""The trainer's settings (:class:`TrainConfig`), read from a model spec by one :meth:`TrainConfig.from_spec` for every
family, and what a training returns (:class:`TrainResult`).

Every model family (the cross-encoder stages, bi-encoders, ColBERT) writes its optimisation settings with the same
spec keys, :data:`SPEC_KEYS`: ``lr``, ``steps`` or ``epochs``, ``warmup``, ``weight_decay``, ``grad_accum``,
``max_grad_norm``, ``queries_per_batch``, ``checkpoint_every``, ``precision``, ``gradient_checkpointing``,
``micro_batch`` and, where a family validates, ``eval_every`` and ``keep_best``. They are checked by one
:func:`check_spec` (an unknown key, with the closest allowed one; a value of the wrong type) and read by one
:meth:`TrainConfig.from_spec`. The keys only one family reads (``temperature``, ``dim``, ``loss``, ``lora``, ``stages``,
...) stay with that family.

Example::

    check_spec(spec, DENSE_KEYS, 'unknown bi-encoder spec keys')          # one error for a bad key or value
    cfg = TrainConfig.from_spec(spec, seed=42, validating=True, defaults={'queries_per_batch': 8}, log_every=5)
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Union

from .._util import KnowacqError, check_keys

__all__ = ['TrainConfig', 'TrainResult', 'PRECISIONS', 'SPEC_KEYS', 'TRAIN_KEYS', 'SELECTION_KEYS', 'SPEC_DEFAULTS',
           'check_spec', 'check_spec_values', 'check_numbers']

PRECISIONS = ('auto', 'fp32', 'bf16')

#: the spec keys every family reads the same way: key -> the kind of value it takes
SPEC_KEYS: Dict[str, str] = {
    'lr': 'number', 'weight_decay': 'number', 'warmup': 'number', 'epochs': 'number', 'max_grad_norm': 'number',
    'steps': 'whole', 'grad_accum': 'whole', 'queries_per_batch': 'whole', 'eval_every': 'whole',
    'checkpoint_every': 'count', 'keep_best': 'bool', 'gradient_checkpointing': 'bool', 'precision': 'precision',
    'micro_batch': 'micro_batch',
}
#: the keys that choose the kept checkpoint: only families with ``validation:`` take them
SELECTION_KEYS = frozenset({'eval_every', 'keep_best'})
#: the shared keys every family takes
TRAIN_KEYS = frozenset(SPEC_KEYS) - SELECTION_KEYS
#: a spec's settings when it leaves them out (a family may give its own, e.g. ``queries_per_batch``)
SPEC_DEFAULTS: Dict[str, Any] = {
    'lr': 2e-5, 'weight_decay': 0.01, 'warmup': 0.1, 'steps': None, 'epochs': None, 'grad_accum': 1,
    'max_grad_norm': 1.0, 'queries_per_batch': None, 'eval_every': None, 'checkpoint_every': 50, 'keep_best': True,
    'precision': 'auto', 'gradient_checkpointing': False, 'micro_batch': 'auto',
}
_FIXES = {'number': 'a number such as 2.0e-5', 'whole': 'a whole number >= 1 such as 100',
          'count': 'a whole number >= 0 such as 50 (0: never)', 'bool': 'true or false',
          'precision': f'one of {list(PRECISIONS)}', 'micro_batch': 'auto or a whole number of queries >= 1 such as 4'}


def _number(value) -> Optional[float]:
    """``value`` as a float (``2e-5`` reads as text in YAML and is accepted), or ``None`` when it is no number."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return None if math.isnan(number) else number


def _fits(rule: str, value) -> bool:
    if rule == 'bool':
        return isinstance(value, bool)
    if rule == 'precision':
        return value in PRECISIONS
    if rule == 'micro_batch':
        return value == 'auto' or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)
    number = _number(value)
    if number is None or (rule != 'number' and (math.isinf(number) or number != int(number))):
        return False
    return rule == 'number' or number >= (1 if rule == 'whole' else 0)


def _where(where: str) -> str:
    return f'{where}: ' if where else ''


def check_numbers(mapping: Mapping[str, Any], keys: Iterable[str], where: str = '', whole: bool = False) -> None:
    """The values at ``keys`` (when given) must be numbers, or with ``whole`` integers (``2e-5`` reads as text in YAML
    and is accepted): a family's own numeric keys (``max_length``, ``head_lr``, ...)."""
    for key in keys:
        value = mapping.get(key)
        if value is None:
            continue
        number = _number(value)
        if number is None or (whole and (math.isinf(number) or number != int(number))):
            kind = 'an integer' if whole else 'a number'
            raise KnowacqError(f'{_where(where)}{key} is {value!r:.40}; write {kind} such as {"100" if whole else "2.0e-5"}')


def check_spec_values(mapping: Mapping[str, Any], where: str = '') -> None:
    """The shared keys of ``mapping`` (:data:`SPEC_KEYS`) that are given hold values of their kind; the first that
    does not is one :class:`~pyterrier_knowacq.KnowacqError` (``<where>: lr is 'fast'; write a number such as ...``)."""
    for key, rule in SPEC_KEYS.items():
        value = mapping.get(key)
        if value is not None and not _fits(rule, value):
            raise KnowacqError(f'{_where(where)}{key} is {value!r:.40}; write {_FIXES[rule]}')


def check_spec(mapping: Mapping[str, Any], allowed: Iterable[str], label: str, where: str = '') -> None:
    """One check of a spec (or a cross-encoder stage): a key outside ``allowed`` is ``<label> [key] (did you mean
    ...); allowed: [...]``, a shared key's value of the wrong kind ``<where>: <key> is ...; write ...``."""
    check_keys(mapping, set(allowed), label)
    check_spec_values(mapping, where)


@dataclass
class TrainConfig:
    """Optimisation settings. ``warmup`` < 1 is a ratio of the total steps, >= 1 a number of steps.

    One *step* is one optimiser update, i.e. ``grad_accum`` batches of the task. Give ``max_steps`` or ``epochs``
    (an epoch = ``len(task.batches(...)) // grad_accum`` steps); with both, the smaller wins.

    ``precision``: ``auto`` (bf16 autocast on a CUDA GPU that supports it, fp32 elsewhere), ``fp32`` or ``bf16``
    (CUDA only). ``gradient_checkpointing``: recompute activations in the backward pass (less memory, ~30% slower).
    ``micro_batch``: queries per forward pass. ``auto`` keeps the task's batch on a CPU and, on a GPU, splits it into
    the largest micro-batches that fit the device (measured, see :mod:`.memory`); a number N splits each batch into
    micro-batches of at most N queries. The effective batch per step is unchanged (gradients are accumulated), but
    in-batch negatives (bi-encoders, ColBERT) come from the micro-batch only. ``queries_per_batch``: the task's
    batch in queries (the family builds its task with it; the trainer only splits batches).

    A model spec's settings are read with :meth:`from_spec`, the same for every family.
    """
    lr: float = 2e-5
    weight_decay: float = 0.01
    warmup: float = 0.1
    max_steps: Optional[int] = None
    epochs: Optional[float] = None
    grad_accum: int = 1
    max_grad_norm: Optional[float] = 1.0
    seed: int = 42
    eval_every: int = 0
    metric: str = 'nDCG@10'
    keep_best: bool = True
    checkpoint_every: int = 0
    log_every: int = 10
    progress: bool = True
    device: Optional[str] = None
    find_unused_parameters: bool = False
    precision: str = 'auto'
    gradient_checkpointing: bool = False
    micro_batch: Union[str, int, None] = 'auto'
    queries_per_batch: Optional[int] = None

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> 'TrainConfig':
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise KnowacqError(f'unknown training settings {sorted(unknown)}; known: {sorted(names)}')
        return cls(**d)

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], *, seed: int = 42, validating: bool = False,
                  defaults: Optional[Mapping[str, Any]] = None, where: str = '', **settings) -> 'TrainConfig':
        """The trainer settings a model spec writes with the shared keys (:data:`SPEC_KEYS`; other keys are the
        family's and are not read here). A cross-encoder stage is read merged over its spec (``{**spec, **stage}``).

        ``defaults`` replaces :data:`SPEC_DEFAULTS` for this family (e.g. ``{'queries_per_batch': 8}``); a key given
        as ``null`` takes its default (``max_grad_norm: null``: no clipping). ``validating``: the family validates
        (``validation:``), so ``eval_every`` applies (default: a quarter of the steps); else it is 0. ``settings``
        are the fields no spec writes (``log_every``, ``progress``, ``device``). A value of the wrong kind is one
        error naming ``where`` and the key.
        """
        check_spec_values(spec, where)
        values = {**SPEC_DEFAULTS, **(defaults or {})}
        values.update({k: v for k, v in spec.items() if k in SPEC_KEYS and (v is not None or k == 'max_grad_norm')})
        steps, epochs, norm, qpb = values['steps'], values['epochs'], values['max_grad_norm'], values['queries_per_batch']
        every = 0
        if validating:
            every = int(float(values['eval_every'] or max(1, int(float(steps or 100)) // 4)))
        return cls(lr=float(values['lr']), weight_decay=float(values['weight_decay']), warmup=float(values['warmup']),
                   max_steps=int(float(steps)) if steps else None, epochs=float(epochs) if epochs is not None else None,
                   grad_accum=int(float(values['grad_accum'])), max_grad_norm=None if norm is None else float(norm),
                   seed=seed, eval_every=every, keep_best=bool(values['keep_best']),
                   checkpoint_every=int(float(values['checkpoint_every'])), precision=str(values['precision']),
                   gradient_checkpointing=bool(values['gradient_checkpointing']), micro_batch=values['micro_batch'],
                   queries_per_batch=None if qpb is None else int(float(qpb)), **settings)

    def __post_init__(self):
        if self.max_steps is None and self.epochs is None:
            raise KnowacqError('TrainConfig needs max_steps or epochs')
        if self.lr <= 0 or self.grad_accum < 1:
            raise KnowacqError(f'bad TrainConfig: lr={self.lr}, grad_accum={self.grad_accum}; lr > 0 and grad_accum >= 1')
        if self.precision not in PRECISIONS:
            raise KnowacqError(f'precision must be one of {list(PRECISIONS)}, got {self.precision!r}')
        mb = self.micro_batch
        if mb is None:
            self.micro_batch = 'auto'
        elif not (mb == 'auto' or (isinstance(mb, int) and not isinstance(mb, bool) and mb >= 1)):
            raise KnowacqError(f'micro_batch must be auto or a whole number of queries >= 1, got {mb!r}')


@dataclass
class TrainResult:
    model_dir: Path
    final_dir: Path
    best_dir: Optional[Path]
    steps: int
    history: List[dict] = field(default_factory=list)
    best_metric: Optional[float] = None
