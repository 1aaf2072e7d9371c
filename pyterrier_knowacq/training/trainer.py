"""The shared training loop for every model family (cross-encoders, bi-encoders, ColBERT).

A *task* says what to train; the :class:`Trainer` does the rest (AdamW, warm-up + linear decay, gradient
accumulation, clipping, validation with the best checkpoint kept, resumable safetensors checkpoints, NaN/inf guard,
progress bar, DDP under ``torchrun``).

The task protocol (duck-typed; see :class:`TrainingTask`):

* ``model``: the ``nn.Module`` to train (the trainer moves it to the device and may wrap it in DDP);
* ``batches(epoch, rank, world_size) -> list``: the micro-batches of one epoch, **deterministic** for a given epoch
  (seed an RNG with ``seed + epoch``) and already sharded for ``rank`` of ``world_size``. Resuming replays the epoch
  and skips the batches already consumed, so no iterator state needs saving;
* ``loss(model, batch) -> (loss tensor, logs dict)``: ``model`` may be the DDP wrapper: call it, don't reach inside;
* ``save(folder)``: write the model in its own format (safetensors) into an existing empty folder;
* optional ``validate(model) -> dict`` (e.g. ``{'nDCG@10': 0.61}``), called on rank 0 every ``eval_every`` steps;
* optional ``param_groups(model, config) -> list`` (e.g. a larger learning rate for a fresh head);
* optional ``batch_ids(batch) -> list`` (query ids, named in the NaN error message).

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

import dataclasses
import json
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Protocol

import numpy as np
import torch

from .._util import KnowacqError, atomic_directory, atomic_write_json

__all__ = ['TrainConfig', 'TrainResult', 'Trainer', 'TrainingTask', 'seed_everything']


class TrainingTask(Protocol):
    model: torch.nn.Module

    def batches(self, epoch: int, rank: int, world_size: int) -> List[Any]: ...

    def loss(self, model, batch) -> tuple: ...

    def save(self, folder: Path) -> None: ...


@dataclass
class TrainConfig:
    """Optimisation settings. ``warmup`` < 1 is a ratio of the total steps, >= 1 a number of steps.

    One *step* is one optimiser update, i.e. ``grad_accum`` micro-batches. Give ``max_steps`` or ``epochs``
    (an epoch = ``len(task.batches(...)) // grad_accum`` steps); with both, the smaller wins.
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
        with atomic_directory(self.checkpoint_dir, overwrite=True) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp / 'model.safetensors'))
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
        try:
            missing, unexpected = model.load_state_dict(weights, strict=False)
        except RuntimeError as e:           # same names, other shapes
            missing, unexpected = [str(e).splitlines()[-1].strip()], []
        if missing or unexpected:
            raise KnowacqError(f'the checkpoint in {folder} does not fit this model (missing {list(missing)[:3]}, '
                               f'unexpected {list(unexpected)[:3]}); delete that folder or train into a new output_dir')
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
    def train(self) -> TrainResult:
        cfg, task = self.config, self.task
        self.device = self._device()
        self._init_distributed()
        seed_everything(cfg.seed)
        model = task.model.to(self.device)
        model.train()
        train_model = model
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP
            train_model = DDP(model, device_ids=[self.device.index] if self.device.type == 'cuda' else None,
                              find_unused_parameters=cfg.find_unused_parameters)

        epoch_batches = {}

        def batches_of(epoch):
            if epoch not in epoch_batches:
                epoch_batches.clear()
                epoch_batches[epoch] = list(task.batches(epoch, self.rank, self.world_size))
                if not epoch_batches[epoch]:
                    raise KnowacqError('the training task produced no batches; check the training examples')
            return epoch_batches[epoch]

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
            for _ in range(cfg.grad_accum):
                batches = batches_of(epoch)
                if pos >= len(batches):
                    epoch, pos = epoch + 1, 0
                    batches = batches_of(epoch)
                batch = batches[pos]
                pos += 1
                loss, logs = task.loss(train_model, batch)
                if not torch.isfinite(loss).all():
                    ids = task.batch_ids(batch) if hasattr(task, 'batch_ids') else '?'
                    last = (f'the last good checkpoint is kept in {self.checkpoint_dir}'
                            if self.checkpoint_dir.exists() else 'no checkpoint had been written yet')
                    raise KnowacqError(f'training diverged: loss is {loss.item()} at step {step + 1} '
                                       f'(batch query ids {ids}); {last}. Lower the learning rate, clip gradients '
                                       '(max_grad_norm) or check the targets of these queries')
                (loss / cfg.grad_accum).backward()
                loss_sum += loss.item() / cfg.grad_accum
                for k, v in (logs or {}).items():
                    logs_acc[k] = logs_acc.get(k, 0.0) + float(v) / cfg.grad_accum
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
