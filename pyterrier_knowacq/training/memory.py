"""How much memory a training step needs, measured on a few real steps, and the micro-batch that fits a device.

:func:`measure_step_memory` runs a task's loss and backward at a few small batch sizes (``(1, 2)`` queries) and
counts the bytes autograd keeps for the backward pass (``torch.autograd.graph.saved_tensors_hooks``: every tensor
saved for backward, each storage once, parameters excluded). That count works the same on a CPU and a GPU and grows
linearly with the number of queries, so two sizes give a fixed part and a per-query part. Parameters, their gradients
and AdamW's two moment buffers are counted from the model. :func:`peak_bytes` adds them up for any batch size, and
:func:`fit_micro_batch` picks the largest micro-batch under a byte budget (:func:`device_budget`).

The estimate leaves out short-lived temporaries (attention scores being computed, the loss's logits): keep a margin,
as :func:`device_budget` does (80% of what is free). The per-query part depends on the lengths of the texts of the
measured queries (batches are padded to their longest text).

Example::

    from pyterrier_knowacq.training.memory import measure_step_memory, peak_bytes, fit_micro_batch, device_budget
    m = measure_step_memory(task, config)          # a few real steps at 1 and 2 queries
    peak_bytes(m, 32) / 2**30                      # GiB for 32 queries per forward pass
    fit_micro_batch(m, device_budget('cuda'), max_batch=32)
"""
from __future__ import annotations

import os
from typing import Dict, Optional, Sequence

import torch

from .._util import KnowacqError

__all__ = ['measure_step_memory', 'peak_bytes', 'fit_micro_batch', 'device_budget', 'activation_bytes']


def _tensor_bytes(params) -> int:
    return sum(p.numel() * p.element_size() for p in params)


def _example_batch(task, n: int):
    """A batch of the task's first ``n`` queries (the first batches of epoch 0, joined and cut)."""
    items = []
    for batch in task.batches(0, 0, 1):
        if not isinstance(batch, (list, tuple)):
            raise KnowacqError(f'measuring memory needs batches that are lists of queries, but the task gives '
                               f'{type(batch).__name__}')
        items.extend(batch)
        if len(items) >= n:
            break
    if len(items) < n:
        raise KnowacqError(f'the task has only {len(items)} training queries; measure with fewer than {n}')
    return items[:n]


def activation_bytes(loss_fn, exclude: Sequence[torch.Tensor] = ()):
    """``(bytes, result)``: the bytes autograd saves for the backward of ``result = loss_fn()``.

    Each storage is counted once (views share it); the storages of ``exclude`` (the model's parameters: weights are
    not activations) are not counted."""
    seen: Dict[int, int] = {}
    skip = {t.untyped_storage().data_ptr() for t in exclude}

    def pack(t):
        try:
            storage = t.untyped_storage()
            ptr = storage.data_ptr()
            if ptr and ptr not in skip:
                seen[ptr] = storage.nbytes()
        except (RuntimeError, NotImplementedError):     # sparse, meta, ... tensors: nothing to count
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = loss_fn()
    return sum(seen.values()), out


def measure_step_memory(task, config=None, batch_sizes: Sequence[int] = (1, 2), *, model=None,
                        dtype: Optional[torch.dtype] = None) -> Dict[str, object]:
    """Memory of one training step of ``task``, measured on real steps at ``batch_sizes`` queries.

    Args:
        task: a trainer task (its batches must be lists of queries).
        config: a :class:`~.trainer.TrainConfig` (its ``precision`` decides autocast) or ``None`` (fp32).
        batch_sizes: at least two sizes; the activation bytes are fitted as ``fixed + per_example * size``.
        model: the module to measure (default ``task.model``, on the device it already is on).
        dtype: autocast dtype (default: from ``config.precision`` on the model's device).

    Returns ``{'params_bytes', 'grad_bytes', 'optimizer_bytes', 'activation_bytes_fixed',
    'activation_bytes_per_example', 'measured': {size: activation bytes}, 'device'}``; the RNGs and gradients are
    left as they were (the steps run under :func:`~.trainer.preserved_rng` and do not update the model).
    """
    from .trainer import _autocast, preserved_rng, resolve_precision
    sizes = sorted(set(int(b) for b in batch_sizes))
    if len(sizes) < 2 or sizes[0] < 1:
        raise KnowacqError(f'batch_sizes needs two or more sizes >= 1 to fit a line, got {list(batch_sizes)}')
    model = task.model if model is None else model
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    device = params[0].device if params else torch.device('cpu')
    if dtype is None and config is not None:
        dtype = resolve_precision(getattr(config, 'precision', 'fp32'), device)
    was_training = model.training
    model.train()
    saved_grads = [p.grad for p in trainable]
    measured: Dict[int, int] = {}
    try:
        for n in sizes:
            batch = _example_batch(task, n)

            def step():
                with _autocast(device, dtype):
                    return task.loss(model, batch)[0]
            with preserved_rng(device):
                for p in trainable:
                    p.grad = None
                nbytes, loss = activation_bytes(step, exclude=params)
                loss.backward()
                del loss
            measured[n] = int(nbytes)
    finally:
        for p, g in zip(trainable, saved_grads):
            p.grad = g
        model.train(was_training)
    lo, hi = sizes[0], sizes[-1]
    per = max(0.0, (measured[hi] - measured[lo]) / (hi - lo))
    fixed = max(0.0, measured[lo] - per * lo)
    trainable_bytes = _tensor_bytes(trainable)
    return {'params_bytes': _tensor_bytes(params), 'grad_bytes': trainable_bytes,
            'optimizer_bytes': 2 * trainable_bytes,            # AdamW: exp_avg and exp_avg_sq per trainable weight
            'activation_bytes_fixed': int(fixed), 'activation_bytes_per_example': int(round(per)),
            'measured': measured, 'device': str(device)}


def peak_bytes(measure: Dict[str, object], batch: int) -> int:
    """Estimated peak bytes of a training step with ``batch`` queries per forward pass: weights, gradients, AdamW
    state and the activations of the batch."""
    return int(measure['params_bytes'] + measure['grad_bytes'] + measure['optimizer_bytes']
               + measure['activation_bytes_fixed'] + measure['activation_bytes_per_example'] * int(batch))


def fit_micro_batch(measure: Dict[str, object], target_bytes: float, max_batch: int) -> int:
    """The largest micro-batch (queries per forward pass, ``1..max_batch``) whose :func:`peak_bytes` fits
    ``target_bytes``; raises :class:`KnowacqError` when not even one query fits."""
    if peak_bytes(measure, 1) > target_bytes:
        gib = 2 ** 30
        raise KnowacqError(f'one training query needs about {peak_bytes(measure, 1) / gib:.1f} GiB but only '
                           f'{target_bytes / gib:.1f} GiB are available; set gradient_checkpointing: true, train LoRA '
                           'adapters (lora:) or lower max_length')
    per = measure['activation_bytes_per_example']
    if per <= 0:
        return int(max_batch)
    room = target_bytes - peak_bytes(measure, 0)
    return int(max(1, min(int(max_batch), room // per)))


def device_budget(device, fraction: float = 0.8) -> float:
    """Bytes a training step may use on ``device``: ``fraction`` of the free GPU memory (plus what this process
    already holds: its weights are counted in :func:`peak_bytes`), or of the available RAM on a CPU."""
    device = torch.device(device)
    if device.type == 'cuda':
        free, _total = torch.cuda.mem_get_info(device)
        return fraction * (free + torch.cuda.memory_reserved(device))
    try:
        available = os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
    except (ValueError, OSError, AttributeError):
        available = 8 * 2 ** 30
    return fraction * available
