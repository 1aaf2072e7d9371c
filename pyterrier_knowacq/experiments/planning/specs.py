"""What a plan reads from a model spec (its backbone, and per training stage the shapes that decide memory and the
numbers that decide time), the context a plan is made in, and the fit verdicts."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ..._util import KnowacqError
from .devices import Device


def _normalised_spec(kind: str, spec: Dict[str, Any]) -> Dict[str, Any]:
    spec = copy.deepcopy(dict(spec or {}))
    spec.pop('kind', None)
    if kind == 'colbert':
        from ...training.colbert import validate_colbert_spec
        return validate_colbert_spec(spec)
    return spec


def _stages_of(kind: str, spec: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Per training stage: the shapes that decide memory and the numbers that decide time."""
    common = {'precision': spec.get('precision', 'auto'), 'micro_batch': spec.get('micro_batch', 'auto'),
              'gradient_checkpointing': bool(spec.get('gradient_checkpointing'))}
    if kind == 'cross-encoder':
        out = []
        for st in spec.get('stages') or []:
            data = st.get('data') or {}
            ranknet = st.get('loss') == 'ranknet'
            group = int(data.get('list_length', 20)) if ranknet else int(data.get('negatives', 7)) + 1
            out.append({**common, 'loss': st.get('loss'), 'group': group, 'queries_per_batch':
                        int(st.get('queries_per_batch', spec.get('queries_per_batch', 4))),
                        'grad_accum': int(st.get('grad_accum', 1)), 'steps': st.get('steps'),
                        'epochs': st.get('epochs'), 'data': data, 'validation': bool(spec.get('validation')),
                        'shapes': {'loss': st.get('loss'), 'pooling': spec.get('pooling', 'cls'),
                                   'max_length': int(spec.get('max_length', 128)), 'query_words': 8,
                                   'select': data.get('select') if ranknet else None,
                                   'loss_params': st.get('loss_params')}})
        return out
    if kind == 'bi-encoder':
        lora = spec.get('lora') or None
        return [{**common, 'loss': 'infonce', 'group': 1 + int(spec.get('negatives', 3)),
                 'queries_per_batch': int(spec.get('queries_per_batch', 8)),
                 'grad_accum': int(spec.get('grad_accum', 1)),
                 'steps': spec.get('steps'), 'epochs': spec.get('epochs'), 'data': spec.get('data') or {},
                 'validation': bool(spec.get('validation')),
                 'shapes': {'pooling': spec.get('pooling', 'cls'), 'normalize': bool(spec.get('normalize', False)),
                            'shared': bool(spec.get('shared', True)), 'max_length': int(spec.get('max_length', 128)),
                            'query_max_length': int(spec.get('query_max_length', 32)),
                            'temperature': float(spec.get('temperature', 0.05)),
                            'lora': {k: lora[k] for k in ('r', 'alpha', 'dropout', 'target_modules') if k in lora}
                            if lora else None}}]
    if kind == 'colbert':
        return [{**common, 'loss': spec['loss'], 'group': 1 + int(spec['negatives']),
                 'queries_per_batch': int(spec['queries_per_batch']), 'grad_accum': int(spec.get('grad_accum', 1)),
                 'steps': spec.get('steps'), 'epochs': spec.get('epochs'), 'data': spec.get('data') or {},
                 'validation': False,
                 'shapes': {'dim': int(spec['dim']), 'query_max_length': int(spec['query_maxlen']),
                            'doc_maxlen': int(spec['train_doc_maxlen']), 'loss': spec['loss'],
                            'loss_params': spec.get('loss_params') or None}}]
    raise KnowacqError(f'cannot plan a model of kind {kind!r}')


def _spec_backbone(kind: str, spec: Dict[str, Any]) -> str:
    if kind == 'colbert' and spec.get('init'):
        return str(spec['init'])
    if spec.get('backbone'):
        return str(spec['backbone'])
    if spec.get('init'):
        return str(spec['init'])
    raise KnowacqError('the spec names no backbone')


@dataclass
class _Ctx:
    device: Device
    sizes: bool
    config: Dict[str, Any]
    path: Optional[str] = None
    notes: List[str] = field(default_factory=list)
    datasets: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    measured_s: float = 0.0

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


def _fits(peak: float, device: Device, auto_gpu: bool) -> str:
    """``yes`` (within the share a step may use), ``tight`` (within the memory but above that share) or ``no``."""
    if peak <= device.budget_bytes:
        return 'yes'
    if auto_gpu or peak > device.memory_bytes:
        return 'no'
    return 'tight'


def _worst(values) -> str:
    values = list(values)
    return 'no' if 'no' in values else 'tight' if 'tight' in values else 'yes'
