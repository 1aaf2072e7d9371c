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

The settings are a :class:`~.train_config.TrainConfig` (``TrainConfig.from_spec`` reads a model spec's, the same
for every family); the helpers (precision, probes, frozen parameters) live in :mod:`.trainer_utils` and the resumable
checkpoints in :mod:`.checkpoints`, and every name stays importable from here.

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
import logging
import math
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

from .._util import KnowacqError, atomic_directory, atomic_write_json
# the settings, the helpers and the checkpoints live in their own modules; every name stays importable from here
from .checkpoints import CheckpointMixin, _flatten_optimizer, _unflatten_optimizer  # noqa: F401
from .train_config import PRECISIONS, TrainConfig, TrainResult  # noqa: F401
from .trainer_utils import (TrainingTask, _autocast, _dist_env, _frozen_digest, _hf_backbones,  # noqa: F401
                            as_texts_of, enable_gradient_checkpointing, freeze_pooler, freeze_unused_parameters,
                            has_adapters, preserved_rng, resolve_precision, seed_everything)

__all__ = ['TrainConfig', 'TrainResult', 'Trainer', 'TrainingTask', 'seed_everything', 'as_texts_of',
           'resolve_precision', 'enable_gradient_checkpointing', 'freeze_unused_parameters', 'freeze_pooler',
           'has_adapters', 'preserved_rng', 'PRECISIONS']

log = logging.getLogger(__name__)


class Trainer(CheckpointMixin):
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
