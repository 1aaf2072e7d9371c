"""Resumable checkpoints of the shared trainer: weights, AdamW state, scheduler and every RNG, in safetensors + JSON.

``output_dir/checkpoint/`` holds ``model.safetensors`` (LoRA: the trainable weights only), ``optimizer.safetensors``
(the AdamW state's tensors; the rest in ``state.json``), ``rng.safetensors`` (torch, CUDA) and ``state.json`` (step,
epoch, position in the epoch, best metric, scheduler, Python and NumPy RNG, config, history). :class:`CheckpointMixin`
gives :class:`~.trainer.Trainer` its ``checkpoint_dir``, ``_save_checkpoint`` and ``_load_checkpoint``.

Example::

    tensors, meta = _flatten_optimizer(opt.state_dict())
    opt.load_state_dict(_unflatten_optimizer(tensors, meta))
"""
from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import torch

from .._util import KnowacqError, atomic_directory, atomic_write_json

__all__ = ['CheckpointMixin']


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


class CheckpointMixin:
    """The checkpoint half of :class:`~.trainer.Trainer` (it needs ``output_dir``, ``rank``, ``config``, ``history``,
    ``_adapters`` and ``_frozen_digest``)."""

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
