"""The shared training loop for every model family (cross-encoders, bi-encoders, ColBERT).

A *task* says what to train; the :class:`Trainer` does the rest (AdamW, warm-up + linear decay, gradient
accumulation, clipping, validation with the best checkpoint kept, resumable safetensors checkpoints, NaN/inf guard,
progress bar, DDP under ``torchrun``, bf16 autocast on capable GPUs, gradient checkpointing, micro-batches sized to
the device).

The task protocol (duck-typed; see :class:`TrainingTask`):

* ``model``: the ``nn.Module`` to train (the trainer moves it to the device and may wrap it in DDP);
* ``batches(epoch, rank, world_size) -> list``: the batches of one epoch as **light specs** (query ids, query texts,
  docnos, targets; no passage texts), **deterministic** for a given epoch (seed an RNG with ``seed + epoch``) and
  already sharded for ``rank`` of ``world_size``. The steps of an epoch are counted from this list, so it must be
  cheap; resuming replays the epoch and skips the batches already consumed, so no iterator state needs saving.
  A batch that is a ``list`` of per-query items can be split into micro-batches (``micro_batch``);
* ``loss(model, batch) -> (loss tensor, logs dict)``: fetches the batch's passage texts (one batched
  ``texts_of(docnos) -> texts`` call, see :func:`as_texts_of`) and computes the loss. ``model`` may be the DDP
  wrapper: call it, don't reach inside. The loss must be a mean over the batch's queries (micro-batches are weighted
  by their share of the batch);
* ``save(folder)``: write the model in its own format (safetensors) into an existing empty folder;
* optional ``validate(model) -> dict`` (e.g. ``{'nDCG@10': 0.61}``), called on rank 0 every ``eval_every`` steps;
* optional ``param_groups(model, config) -> list`` (e.g. a larger learning rate for a fresh head);
* optional ``batch_ids(batch) -> list`` (query ids, named in the NaN error message);
* optional ``split_batch(batch, parts) -> list`` for batches that are not lists.

Parameters that take no part in the loss must be frozen (``requires_grad=False``): tasks freeze what their model
family never uses (e.g. the BERT pooler when the model pools hidden states itself), and under DDP the trainer checks
with one probe step (:func:`freeze_unused_parameters`) and freezes whatever else got no gradient, on every rank
alike, so DDP runs without ``find_unused_parameters``. Micro-batches before the last of each step run under
``DDP.no_sync()``.

Models with LoRA adapters (peft) are checkpointed adapter-only: ``model.safetensors`` holds the trainable weights
(and ``optimizer.safetensors`` their AdamW state), never the frozen base; resuming checks the base is the same.

Output folder layout::

    output_dir/checkpoint/   model.safetensors, optimizer.safetensors, rng.safetensors, state.json (resume point)
    output_dir/best/         task.save() of the best validated model (when validate and keep_best)
    output_dir/final/        task.save() after the last step
    output_dir/history.json  losses and validation metrics per step

Example::

    trainer = Trainer(task, TrainConfig(lr=2e-5, max_steps=200, eval_every=50, checkpoint_every=50), 'out/')
    result = trainer.train()          # resumes from out/checkpoint if present
    result.model_dir                  # out/best or out/final
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Protocol, Union

import numpy as np
import torch

from .._util import KnowacqError, atomic_directory, atomic_write_json

__all__ = ['TrainConfig', 'TrainResult', 'Trainer', 'TrainingTask', 'seed_everything', 'as_texts_of',
           'resolve_precision', 'enable_gradient_checkpointing', 'freeze_unused_parameters', 'freeze_pooler',
           'has_adapters', 'preserved_rng', 'PRECISIONS']

log = logging.getLogger(__name__)

PRECISIONS = ('auto', 'fp32', 'bf16')


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
    in-batch negatives (bi-encoders, ColBERT) come from the micro-batch only.
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

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> 'TrainConfig':
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise KnowacqError(f'unknown training settings {sorted(unknown)}; known: {sorted(names)}')
        return cls(**d)

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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def _dist_env():
    world = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    local = int(os.environ.get('LOCAL_RANK', '0'))
    return world, rank, local


def _flatten_optimizer(state: dict):
    tensors, meta = {}, {'param_groups': state['param_groups'], 'state': {}}
    for idx, st in state['state'].items():
        meta['state'][str(idx)] = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f'{idx}.{k}'] = v.detach().cpu().contiguous()
                meta['state'][str(idx)][k] = '__tensor__'
            else:
                meta['state'][str(idx)][k] = v
    return tensors, meta


def _unflatten_optimizer(tensors: dict, meta: dict) -> dict:
    state = {}
    for idx, st in meta['state'].items():
        state[int(idx)] = {k: (tensors[f'{idx}.{k}'] if v == '__tensor__' else v) for k, v in st.items()}
    return {'state': state, 'param_groups': meta['param_groups']}


class Trainer:
    """Runs a task's training to completion, resuming from ``output_dir/checkpoint`` when it exists.

    Args:
        task: see the module docstring.
        config: a :class:`TrainConfig` (or a dict of its fields).
        output_dir: where checkpoints, ``best/``, ``final/`` and ``history.json`` go.
        callbacks: functions ``cb(trainer, step, logs)`` called after every optimiser step (raise to stop).
    """

    def __init__(self, task, config, output_dir, callbacks: Optional[List[Callable]] = None):
        self.task = task
        self.config = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(dict(config))
        self.output_dir = Path(output_dir)
        self.callbacks = list(callbacks or [])
        self.world_size, self.rank, self.local_rank = _dist_env()
        self.history: List[dict] = []

    # -- set-up
    def _device(self):
        if self.config.device:
            return torch.device(self.config.device)
        if torch.cuda.is_available():
            return torch.device('cuda', self.local_rank)
        return torch.device('cpu')

    def _init_distributed(self):
        if self.world_size <= 1:
            return
        import torch.distributed as dist
        if not dist.is_initialized():
            backend = 'nccl' if self.device.type == 'cuda' else 'gloo'
            if self.device.type == 'cuda':
                torch.cuda.set_device(self.device)
            dist.init_process_group(backend=backend)

    def _barrier(self):
        if self.world_size > 1:
            import torch.distributed as dist
            dist.barrier()

    def _schedule(self, total: int):
        warm = self.config.warmup
        warm = int(round(warm * total)) if warm < 1 else int(warm)

        def factor(step):
            if step < warm:
                return (step + 1) / max(1, warm)
            return max(0.0, (total - step) / max(1, total - warm))
        return factor

    def _optimizer(self, model):
        groups = None
        if hasattr(self.task, 'param_groups'):
            groups = self.task.param_groups(model, self.config)
        if groups is None:
            decay, no_decay = [], []
            for name, p in model.named_parameters():
                if p.requires_grad:
                    (no_decay if p.dim() < 2 or 'LayerNorm' in name or 'norm' in name.lower() else decay).append(p)
            groups = [{'params': decay, 'weight_decay': self.config.weight_decay},
                      {'params': no_decay, 'weight_decay': 0.0}]
        return torch.optim.AdamW(groups, lr=self.config.lr, weight_decay=self.config.weight_decay)

    # -- checkpoints
    @property
    def checkpoint_dir(self) -> Path:
        return self.output_dir / 'checkpoint'

    def _save_checkpoint(self, model, opt, sched, state: dict):
        if self.rank != 0:
            return
        from safetensors.torch import save_file
        tensors, meta = _flatten_optimizer(opt.state_dict())
        if self._adapters:      # LoRA: the trainable weights only, never the frozen base
            weights = {n: p for n, p in model.named_parameters() if p.requires_grad}
            state = {**state, 'adapter_only': True, 'frozen_digest': self._frozen_digest}
        else:
            weights = model.state_dict()
        with atomic_directory(self.checkpoint_dir, overwrite=True) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(tmp / 'model.safetensors'))
            save_file(tensors, str(tmp / 'optimizer.safetensors'))
            rng = {'torch': torch.get_rng_state()}
            if torch.cuda.is_available():
                rng['cuda'] = torch.cuda.get_rng_state()
            save_file(rng, str(tmp / 'rng.safetensors'))
            py_state = random.getstate()
            np_state = np.random.get_state()
            atomic_write_json(tmp / 'state.json', {
                **state, 'optimizer': meta, 'scheduler': sched.state_dict(),
                'python_rng': [py_state[0], list(py_state[1]), py_state[2]],
                'numpy_rng': [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
                'config': dataclasses.asdict(self.config), 'history': self.history})

    def _load_checkpoint(self, model, opt, sched) -> dict:
        from safetensors.torch import load_file
        folder = self.checkpoint_dir
        state = json.loads((folder / 'state.json').read_text())
        weights = load_file(str(folder / 'model.safetensors'))
        if bool(state.get('adapter_only')) != self._adapters:
            raise KnowacqError(f'the checkpoint in {folder} was written {"with" if state.get("adapter_only") else "without"} '
                               'LoRA adapters and this model is not; delete that folder or train into a new output_dir')
        try:
            if self._adapters:
                params = {n: p for n, p in model.named_parameters() if p.requires_grad}
                missing = sorted(set(params) - set(weights))
                unexpected = sorted(set(weights) - set(params))
                if not missing and not unexpected:
                    with torch.no_grad():
                        for n, p in params.items():
                            p.copy_(weights[n])
            else:
                missing, unexpected = model.load_state_dict(weights, strict=False)
        except RuntimeError as e:           # same names, other shapes
            missing, unexpected = [str(e).splitlines()[-1].strip()], []
        if missing or unexpected:
            raise KnowacqError(f'the checkpoint in {folder} does not fit this model (missing {list(missing)[:3]}, '
                               f'unexpected {list(unexpected)[:3]}); delete that folder or train into a new output_dir')
        if self._adapters:
            old, new = state.get('frozen_digest'), self._frozen_digest
            if old is None or old[0] != new[0] or any(abs(a - b) > 1e-6 * max(1.0, abs(a)) for a, b in zip(old[1:], new[1:])):
                raise KnowacqError(f'the adapter checkpoint in {folder} was trained on other base weights than this '
                                   'model has; load the same backbone, or delete that folder to start again')
        opt.load_state_dict(_unflatten_optimizer(load_file(str(folder / 'optimizer.safetensors')), state['optimizer']))
        sched.load_state_dict(state['scheduler'])
        rng = load_file(str(folder / 'rng.safetensors'))
        torch.set_rng_state(rng['torch'])
        if 'cuda' in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng['cuda'])
        v, internal, gauss = state['python_rng']
        random.setstate((v, tuple(internal), gauss))
        kind, keys, pos, has_gauss, cached = state['numpy_rng']
        np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
        self.history = state.get('history', [])
        return state

    # -- the loop
    def _split(self, batch) -> List[tuple]:
        """``[(micro-batch, weight)]``: the batch cut into parts of at most ``self.micro_batch`` queries, each weighted
        by its share of the batch (so the accumulated gradient is the whole batch's)."""
        micro = self.micro_batch
        if micro is None:
            return [(batch, 1.0)]
        if isinstance(batch, (list, tuple)):
            n = len(batch)
            if n <= micro:
                return [(batch, 1.0)]
            parts_n = -(-n // micro)
            bounds = [round(i * n / parts_n) for i in range(parts_n + 1)]
            parts = [batch[bounds[i]:bounds[i + 1]] for i in range(parts_n)]
        elif hasattr(self.task, 'split_batch'):
            parts = list(self.task.split_batch(batch, micro))
        else:
            raise KnowacqError(f'micro_batch {micro} needs batches that are lists of queries, but the task gives '
                               f'{type(batch).__name__}; set micro_batch: auto or give the task split_batch()')
        sizes = [len(q) if hasattr(q, '__len__') else 1 for q in parts]
        return [(q, k / max(1, sum(sizes))) for q, k in zip(parts, sizes)]

    def _resolve_micro_batch(self, model, first_batch) -> Optional[int]:
        """Queries per forward pass (``None``: the task's whole batch)."""
        cfg = self.config
        size = len(first_batch) if isinstance(first_batch, (list, tuple)) else None
        if cfg.micro_batch != 'auto':
            micro = int(cfg.micro_batch)
            return None if size is not None and micro >= size else micro
        if self.device.type != 'cuda' or size is None or size <= 1:
            return None                                     # CPU: the task's own batch
        from .memory import device_budget, fit_micro_batch, measure_step_memory
        measure = measure_step_memory(self.task, cfg, model=model, batch_sizes=(1, 2), dtype=self.dtype)
        micro = fit_micro_batch(measure, device_budget(self.device), max_batch=size)
        if self.world_size > 1:
            import torch.distributed as dist
            t = torch.tensor([micro], device=self.device)
            dist.all_reduce(t, op=dist.ReduceOp.MIN)       # every rank runs the same number of forward passes
            micro = int(t.item())
        if micro < size and self.rank == 0:
            log.info('micro_batch auto: %d of the %d queries per forward pass fit %s', micro, size, self.device)
        return None if micro >= size else micro

    def train(self) -> TrainResult:
        cfg, task = self.config, self.task
        self.device = self._device()
        self.dtype = resolve_precision(cfg.precision, self.device)   # before any work: bf16 on a CPU fails here
        self._init_distributed()
        seed_everything(cfg.seed)
        model = task.model.to(self.device)
        model.train()
        if cfg.gradient_checkpointing:
            enable_gradient_checkpointing(model)

        epoch_batches = {}

        def batches_of(epoch):
            if epoch not in epoch_batches:
                epoch_batches.clear()
                epoch_batches[epoch] = list(task.batches(epoch, self.rank, self.world_size))   # light specs, no texts
                if not epoch_batches[epoch]:
                    raise KnowacqError('the training task produced no batches; check the training examples')
            return epoch_batches[epoch]

        self.micro_batch = self._resolve_micro_batch(model, batches_of(0)[0])
        train_model = model
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP
            if not cfg.find_unused_parameters:
                probe = self._split(batches_of(0)[0])[0][0]

                def probe_loss(m):
                    with _autocast(self.device, self.dtype):
                        return task.loss(m, probe)[0]
                frozen = freeze_unused_parameters(model, probe_loss, device=self.device, world_size=self.world_size)
                if frozen and self.rank == 0:
                    log.warning('froze %d parameters that take no part in the loss (e.g. %s)', len(frozen), frozen[:3])
            train_model = DDP(model, device_ids=[self.device.index] if self.device.type == 'cuda' else None,
                              find_unused_parameters=cfg.find_unused_parameters)
        self._adapters = has_adapters(model)
        self._frozen_digest = _frozen_digest(model) if self._adapters else None

        steps_per_epoch = max(1, len(batches_of(0)) // cfg.grad_accum)
        total = cfg.max_steps if cfg.max_steps is not None else None
        if cfg.epochs is not None:
            by_epochs = int(math.ceil(cfg.epochs * steps_per_epoch))
            total = by_epochs if total is None else min(total, by_epochs)
        opt = self._optimizer(model)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, self._schedule(total))

        step, epoch, pos, best = 0, 0, 0, None
        if (self.checkpoint_dir / 'state.json').exists():
            state = self._load_checkpoint(model, opt, sched)
            step, epoch, pos, best = state['step'], state['epoch'], state['pos'], state.get('best')
        best_dir = self.output_dir / 'best'

        bar = None
        if cfg.progress and self.rank == 0:
            from tqdm.auto import tqdm
            bar = tqdm(total=total, initial=step, desc='train', unit='step')
        ema = None
        while step < total:
            opt.zero_grad(set_to_none=True)
            logs_acc: Dict[str, float] = {}
            loss_sum = 0.0
            work = []                                   # (micro-batch, its share of its batch), in order
            for _ in range(cfg.grad_accum):
                batches = batches_of(epoch)
                if pos >= len(batches):
                    epoch, pos = epoch + 1, 0
                    batches = batches_of(epoch)
                batch = batches[pos]
                pos += 1
                work.extend(self._split(batch))
            for i, (part, share) in enumerate(work):
                last = i == len(work) - 1
                sync = train_model.no_sync() if train_model is not model and not last else contextlib.nullcontext()
                with sync:
                    with _autocast(self.device, self.dtype):
                        loss, logs = task.loss(train_model, part)
                    if not torch.isfinite(loss).all():
                        ids = task.batch_ids(part) if hasattr(task, 'batch_ids') else '?'
                        kept = (f'the last good checkpoint is kept in {self.checkpoint_dir}'
                                if self.checkpoint_dir.exists() else 'no checkpoint had been written yet')
                        raise KnowacqError(f'training diverged: loss is {loss.item()} at step {step + 1} '
                                           f'(batch query ids {ids}); {kept}. Lower the learning rate, clip gradients '
                                           '(max_grad_norm) or check the targets of these queries')
                    (loss.float() * share / cfg.grad_accum).backward()
                loss_sum += loss.item() * share / cfg.grad_accum
                for k, v in (logs or {}).items():
                    logs_acc[k] = logs_acc.get(k, 0.0) + float(v) * share / cfg.grad_accum
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            opt.step()
            sched.step()
            step += 1
            ema = loss_sum if ema is None else 0.9 * ema + 0.1 * loss_sum
            record = {'step': step, 'loss': loss_sum, 'lr': sched.get_last_lr()[0], **logs_acc}
            if cfg.eval_every and hasattr(task, 'validate') and (step % cfg.eval_every == 0 or step == total):
                if self.rank == 0:
                    model.eval()
                    with torch.no_grad():
                        metrics = dict(task.validate(model))
                    model.train()
                    record.update({f'val_{k}': v for k, v in metrics.items()})
                    value = metrics.get(cfg.metric)
                    if value is None and metrics:
                        raise KnowacqError(f'validate() returned {sorted(metrics)} but the metric to keep the best '
                                           f'checkpoint is {cfg.metric!r}; set TrainConfig.metric to one of them')
                    if value is not None and cfg.keep_best and (best is None or value > best):
                        best = float(value)
                        self._save_model(best_dir)
                self._barrier()
            if cfg.log_every and (step % cfg.log_every == 0 or step == total or 'val_' + cfg.metric in record):
                self.history.append(record)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f'{ema:.4f}')
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total:
                self._save_checkpoint(model, opt, sched, {'step': step, 'epoch': epoch, 'pos': pos, 'best': best,
                                                          'total': total})
                self._barrier()
            for cb in self.callbacks:
                cb(self, step, record)
        if bar is not None:
            bar.close()
        final_dir = self.output_dir / 'final'
        self._save_model(final_dir)
        if self.rank == 0:
            import shutil
            shutil.rmtree(self.checkpoint_dir, ignore_errors=True)  # finished: final/ supersedes the resume point
            atomic_write_json(self.output_dir / 'history.json', {'steps': step, 'best': best, 'metric': cfg.metric,
                                                                 'history': self.history})
        self._barrier()
        use_best = best is not None and cfg.keep_best and best_dir.exists()
        return TrainResult(model_dir=best_dir if use_best else final_dir, final_dir=final_dir,
                           best_dir=best_dir if use_best else None, steps=step, history=self.history, best_metric=best)

    def _save_model(self, folder: Path):
        if self.rank != 0:
            return
        with atomic_directory(folder, overwrite=True) as tmp:
            self.task.save(tmp)
