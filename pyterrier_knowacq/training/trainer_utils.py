"""The shared trainer's helpers: the task protocol, batched text look-ups, precision and autocast, RNG-neutral probes,
gradient checkpointing, parameters that take no part in the loss, LoRA adapters, seeding and the DDP environment.

They are used by :class:`~.trainer.Trainer` and by the families' tasks (``as_texts_of``, ``freeze_pooler``), and stay
importable from :mod:`.trainer` under their old names.

Example::

    with preserved_rng(device):       # a probe step that leaves the training run bit-identical
        loss = task.loss(model, batch)[0]
"""
from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path
from typing import Any, Callable, List, Optional, Protocol

import numpy as np
import torch

from .._util import KnowacqError
from .train_config import PRECISIONS

__all__ = ['TrainingTask', 'as_texts_of', 'resolve_precision', 'preserved_rng', 'enable_gradient_checkpointing',
           'freeze_pooler', 'has_adapters', 'freeze_unused_parameters', 'seed_everything']


class TrainingTask(Protocol):
    model: torch.nn.Module

    def batches(self, epoch: int, rank: int, world_size: int) -> List[Any]: ...

    def loss(self, model, batch) -> tuple: ...

    def save(self, folder: Path) -> None: ...


def as_texts_of(text_of: Optional[Callable[[str], str]] = None,
                texts_of: Optional[Callable[[List[str]], List[str]]] = None) -> Callable[[List[str]], List[str]]:
    """A batched lookup ``texts_of(docnos) -> texts``: ``texts_of`` itself, or a single-docno ``text_of`` wrapped.

    Tasks fetch the passage texts of a batch with one call (``dataset.get_texts`` looks a whole batch up in the
    docstore at once); an old ``text_of(docno)`` (e.g. ``dict.__getitem__``) still works through this adapter.
    """
    if texts_of is not None:
        return texts_of
    if text_of is None:
        raise KnowacqError('a training task needs passage texts: give texts_of(docnos) -> texts (e.g. dataset.get_texts) '
                           'or text_of(docno) -> text')
    return lambda docnos: [text_of(d) for d in docnos]


def resolve_precision(precision: str, device) -> Optional[torch.dtype]:
    """The autocast dtype of ``precision`` on ``device``: ``torch.bfloat16`` or ``None`` (fp32).

    ``auto`` is bf16 on a CUDA GPU that supports it and fp32 everywhere else; ``bf16`` elsewhere is an error (bf16 on a
    CPU is hundreds of times slower than fp32).
    """
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise KnowacqError(f'precision must be one of {list(PRECISIONS)}, got {precision!r}')
    capable = device.type == 'cuda' and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if precision == 'bf16' and not capable:
        raise KnowacqError(f'precision bf16 needs a CUDA GPU with bf16 support, but this run is on {device} (bf16 on a '
                           'CPU is hundreds of times slower); set precision: auto or fp32')
    if precision == 'bf16' or (precision == 'auto' and capable):
        return torch.bfloat16
    return None


def _autocast(device, dtype):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


@contextlib.contextmanager
def preserved_rng(device=None):
    """Run a block without moving any RNG (torch, CUDA, Python, NumPy): probe and measurement steps leave the
    training run bit-identical to one without them."""
    device = torch.device(device) if device is not None else torch.device('cpu')
    py, npy = random.getstate(), np.random.get_state()
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == 'cuda' else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)


def _hf_backbones(model) -> List[torch.nn.Module]:
    from transformers import PreTrainedModel
    out, covered = [], set()
    for m in model.modules():
        if isinstance(m, PreTrainedModel) and getattr(m, 'supports_gradient_checkpointing', False) and id(m) not in covered:
            out.append(m)
            covered.update(id(x) for x in m.modules())
    return out


def enable_gradient_checkpointing(model) -> int:
    """Turn on (non-reentrant) gradient checkpointing in every Hugging Face backbone inside ``model``; returns how
    many. Non-reentrant: it works under DDP, with frozen embeddings (LoRA) and gives the same values as without."""
    backbones = _hf_backbones(model)
    if not backbones:
        raise KnowacqError(f'gradient_checkpointing: no Hugging Face backbone in {type(model).__name__} supports it; '
                           'set gradient_checkpointing: false')
    for m in backbones:
        kwargs = {'use_reentrant': False}
        if hasattr(m, 'activation_checkpointing_enable'):     # transformers >= 5.x (the old name is deprecated)
            m.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            m.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return len(backbones)


def freeze_pooler(encoder) -> None:
    """Freeze a BERT-style pooler (dense + tanh over [CLS]) of a model that pools hidden states itself: it takes no
    part in the loss, and DDP refuses parameters that get no gradient."""
    pooler = getattr(encoder, 'pooler', None)
    if isinstance(pooler, torch.nn.Module):
        pooler.requires_grad_(False)


def has_adapters(model) -> bool:
    """True when ``model`` holds peft adapters (LoRA): checkpoints then keep the trainable weights only."""
    return any(type(m).__module__.startswith('peft.') for m in model.modules())


def freeze_unused_parameters(model, loss_of: Callable[[torch.nn.Module], torch.Tensor], *, device=None,
                             world_size: int = 1) -> List[str]:
    """Freeze the trainable parameters that get no gradient from one probe step; returns their names.

    ``loss_of(model)`` computes a loss (e.g. ``task.loss(model, first_batch)[0]``). A parameter whose ``.grad`` stays
    ``None`` after its backward is exactly what DDP calls "not used in producing loss". Under DDP the used-sets of all
    ranks are combined (used anywhere = kept), so every rank freezes the same parameters. The probe moves no RNG and
    leaves no gradient behind.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        return []
    saved = [p.grad for _, p in named]
    for _, p in named:
        p.grad = None
    try:
        with preserved_rng(device):
            loss = loss_of(model)
            loss.backward()
        used = torch.tensor([p.grad is not None for _, p in named], dtype=torch.int32)
    finally:
        for (_, p), g in zip(named, saved):
            p.grad = g
    if world_size > 1:
        import torch.distributed as dist
        used = used.to(named[0][1].device)
        dist.all_reduce(used, op=dist.ReduceOp.MAX)
        used = used.cpu()
    frozen = []
    for (n, p), u in zip(named, used.tolist()):
        if not u:
            p.requires_grad_(False)
            frozen.append(n)
    return frozen


def _frozen_digest(model) -> List[float]:
    """``[count, sum, sum of |x|]`` over the frozen parameters: a cheap check that a resumed adapter-only checkpoint
    sits on the same base weights."""
    n, s, a = 0, 0.0, 0.0
    with torch.no_grad():
        for p in model.parameters():
            if not p.requires_grad:
                n += p.numel()
                s += float(torch.sum(p, dtype=torch.float64))
                a += float(torch.sum(p.abs(), dtype=torch.float64))
    return [n, s, a]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def _dist_env():
    world = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    local = int(os.environ.get('LOCAL_RANK', '0'))
    return world, rank, local
