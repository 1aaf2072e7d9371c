"""The cost of one trained model: per stage the measured activations, the peak of a step, the micro-batch that fits,
FLOPs and wall time; the disk its checkpoints take; and, for a step that does not fit, the fix."""
from __future__ import annotations

import hashlib
import json
import math
import time
from typing import Any, Dict, Optional, Tuple

from ..._util import KnowacqError
from .architectures import architecture, param_counts
from .assumptions import BF16_ACTIVATION_FACTOR, BUDGET_FRACTION, DOC_CAP, GIB
from .devices import Device
from .measure import _tokens_per_query, activation_estimate, measure_training
from .sizes import _training_queries
from .specs import _Ctx, _fits, _normalised_spec, _spec_backbone, _stages_of, _worst


def _plan_training(name: str, kind: str, spec: Dict[str, Any], ctx: _Ctx) -> Dict[str, Any]:
    """One trained model: per stage its measured activations, peak, micro-batch, FLOPs; the model's disk."""
    from ...training.memory import fit_micro_batch, peak_bytes
    device = ctx.device
    spec = dict(spec or {})
    processes = spec.pop('processes', 1) or 1   # DDP ranks (training/launch.py): each holds the whole step's batch
    spec = _normalised_spec(kind, spec)
    backbone = _spec_backbone(kind, spec)
    arch = architecture(backbone)
    stages = _stages_of(kind, spec)
    lora = stages[0]['shapes'].get('lora') if kind == 'bi-encoder' else None
    encoders = 2 if kind == 'bi-encoder' and not spec.get('shared', True) else 1
    counts = param_counts(arch, (lora or {}).get('target_modules') if lora else None, int((lora or {}).get('r') or 0))
    total = counts['total'] * encoders
    # a cross-encoder's fresh 1-logit head; ColBERT's projection
    extra = {'cross-encoder': arch.hidden + 1, 'colbert': arch.hidden * int(spec.get('dim', 128))}.get(kind, 0)
    total += extra
    frozen_layers = int(spec.get('freeze_layers') or 0) if kind == 'cross-encoder' else 0
    if lora:
        trainable = counts['lora'] * encoders
    else:
        trainable = total - counts['pooler'] * encoders
        if frozen_layers:
            trainable -= counts['embedding'] + frozen_layers * counts['layer']
    dense_params = (counts['total'] - counts['embedding'] - counts['pooler']) + extra   # matmul FLOPs per token
    row = {'name': name, 'kind': kind, 'backbone': backbone, 'architecture': arch.label(), 'config_source': arch.source,
           'params': int(total), 'trainable_params': int(trainable), 'processes': int(processes), 'stages': [],
           'notes': []}
    if processes > 1:
        row['notes'].append(f'{processes} DDP processes, one GPU each: memory is per GPU, and an epoch takes '
                            f'{processes} times fewer steps')
    measure_layers = max(0, arch.layers - frozen_layers)
    for i, st in enumerate(stages, 1):
        bf16 = device.bf16 and st['precision'] in ('auto', 'bf16')
        if st['precision'] == 'bf16' and not device.bf16:
            row['notes'].append(f'precision bf16 needs a CUDA GPU with bf16; the trainer refuses it on {device.key}')
        docs_measured = min(st['group'], DOC_CAP)
        shapes = {**st['shapes'], 'docs': docs_measured}
        if kind == 'colbert':
            shapes['doc_maxlen'] = st['shapes']['doc_maxlen']
        started = time.perf_counter()
        m = measure_training(kind, arch, shapes, attn_dropout=not device.gpu)
        ctx.measured_s += time.perf_counter() - started
        factor = BF16_ACTIVATION_FACTOR if bf16 else 1.0
        tokens_q = _tokens_per_query(kind, {**shapes, 'docs': st['group']})
        # gradient checkpointing keeps each layer's fp32 input (per measured query) and recomputes one layer
        ckpt = m['tokens_per_query'] * arch.hidden * 4 if st['gradient_checkpointing'] else 0.0
        copies = 2 * counts['linear'] * encoders if bf16 else 0    # autocast's bf16 weight copies
        per_query = activation_estimate(m, measure_layers, 1, docs=st['group'], docs_measured=docs_measured,
                                        factor=factor, checkpoint_bytes_per_query=ckpt) - factor * m['fixed']
        measure = {'params_bytes': 4 * total, 'grad_bytes': 4 * trainable, 'optimizer_bytes': 8 * trainable,
                   'activation_bytes_fixed': int(factor * m['fixed'] + copies),
                   'activation_bytes_per_example': int(round(per_query))}
        qpb = st['queries_per_batch']
        auto = st['micro_batch'] in (None, 'auto')
        if not auto:
            micro = min(int(st['micro_batch']), qpb)
        elif device.gpu:
            try:
                micro = fit_micro_batch(measure, device.budget_bytes, max_batch=qpb)
            except KnowacqError:
                micro = 1
        else:
            micro = qpb        # on a CPU the trainer keeps the task's whole batch
        peak = peak_bytes(measure, micro)
        fits = _fits(peak, device, auto and device.gpu)
        accumulation = math.ceil(qpb / micro) * st['grad_accum']
        steps, steps_note = _steps(st, spec, kind, ctx, int(processes))
        tokens_step = tokens_q * qpb * st['grad_accum']
        seq_len = st['shapes'].get('doc_maxlen') or st['shapes']['max_length']
        # per token: forward (and its recompute under checkpointing), input gradients down to the lowest trained
        # layer, weight gradients of the trained matmuls (LoRA: the adapter's)
        bwd_in = dense_params - frozen_layers * counts['layer']
        w_grad = counts['lora'] if lora else bwd_in
        recompute = 2 * dense_params if st['gradient_checkpointing'] else 0
        flops_tok = 2 * dense_params + recompute + 2 * bwd_in + 2 * w_grad
        attn = 4 * arch.layers * seq_len * arch.hidden * (3 + (1 if st['gradient_checkpointing'] else 0))
        flops_step = tokens_step * (flops_tok + attn)
        rate = device.bf16_flops if bf16 else device.fp32_flops
        seconds = steps * flops_step / rate if steps is not None and rate else None
        stage = {'stage': i, 'loss': st['loss'], 'group': st['group'], 'queries_per_batch': qpb,
                 'sequence_length': seq_len, 'precision': 'bf16' if bf16 else 'fp32',
                 'gradient_checkpointing': st['gradient_checkpointing'],
                 'measured': {**m, 'docs_measured': docs_measured, 'attention_dropout': not device.gpu},
                 'activation_bytes_per_query': int(round(per_query)),
                 'activation_bytes_fixed': measure['activation_bytes_fixed'],
                 'weights_bytes': measure['params_bytes'] + measure['grad_bytes'] + measure['optimizer_bytes'],
                 'peak_bytes': int(peak), 'peak_bytes_full_batch': int(peak_bytes(measure, qpb)),
                 'micro_batch': int(micro), 'accumulation': int(accumulation), 'fits': fits,
                 'steps': steps, 'steps_source': steps_note, 'tokens_per_step': int(tokens_step),
                 'flops_per_step': flops_step, 'seconds': seconds}
        row['stages'].append(stage)
        if fits == 'no':
            row['notes'].append(_training_fix(name, kind, stage, device, spec))
        elif fits == 'tight':
            row['notes'].append(f'stage {i}: {stage["peak_bytes"] / GIB:.1f} GiB is above '
                                f'{int(BUDGET_FRACTION * 100)}% of {device.key} memory; it may run out of memory')
        if kind == 'bi-encoder' or kind == 'colbert':
            if micro < qpb:
                row['notes'].append(f'in-batch negatives come from micro-batches of {micro} queries, not {qpb}')
    worst = max(row['stages'], key=lambda s: s['peak_bytes'])
    row.update(peak_bytes=worst['peak_bytes'], micro_batch=worst['micro_batch'], accumulation=worst['accumulation'],
               fits=_worst(s['fits'] for s in row['stages']),
               seconds=None if any(s['seconds'] is None for s in row['stages'])
               else sum(s['seconds'] for s in row['stages']))
    row.update(_training_disk(kind, spec, total, trainable, lora))
    # what decides a stage's weights besides the data: trained once and cached, so models that share a stage
    # prefix (C and C->D) share its training and its checkpoint
    base = {k: v for k, v in spec.items() if k not in ('stages', 'description')}
    for i, st in enumerate(row['stages']):
        prefix = (spec.get('stages') or [])[:i + 1] if kind == 'cross-encoder' else None
        key = json.dumps([kind, base, prefix], sort_keys=True, default=str)
        st['key'] = hashlib.sha1(key.encode()).hexdigest()[:16]
    return row


def _training_fix(name: str, kind: str, stage: Dict[str, Any], device: Device, spec: Dict[str, Any]) -> str:
    need = stage['peak_bytes'] / GIB
    have = (device.budget_bytes if device.gpu else device.memory_bytes) / GIB
    what = f'at {stage["micro_batch"]} quer{"y" if stage["micro_batch"] == 1 else "ies"} per forward pass'
    weights = stage['weights_bytes'] / GIB
    # what no batch size changes: weights, gradients, AdamW state and autocast's bf16 weight copies
    fixed = (stage['weights_bytes'] + stage['activation_bytes_fixed']) / GIB
    fixes = []
    if fixed > have:
        lora = kind == 'bi-encoder' and not spec.get('lora')
        fixes.append('train LoRA adapters (lora:) or a smaller backbone' if lora else
                     f'use a smaller backbone or a device with more memory (the weights alone take {fixed:.1f} GiB '
                     'with their gradients, AdamW state and bf16 copies)')
    else:
        if not device.gpu or spec.get('micro_batch', 'auto') != 'auto':
            fixes.append('lower queries_per_batch (or set micro_batch: N)')
        fixes.append('lower max_length or the group size (negatives / list_length)')
        if not stage['gradient_checkpointing']:
            fixes.append('set gradient_checkpointing: true')
    return (f'model {name!r} stage {stage["stage"]} needs about {need:.1f} GiB per training step {what} (weights, '
            f'gradients and AdamW state {weights:.1f} GiB) but {device.key} allows {have:.1f} GiB; '
            + ' or '.join(fixes))


def _training_disk(kind: str, spec: Dict[str, Any], total: int, trainable: int, lora) -> Dict[str, Any]:
    model_bytes = 4 * total
    final = 4 * trainable if lora and (spec.get('lora') or {}).get('save') == 'adapter' else model_bytes
    stages = len(spec.get('stages') or [None]) if kind == 'cross-encoder' else 1
    checkpoint = (4 * trainable if lora else model_bytes) + 8 * trainable
    best = final if spec.get('validation') else 0
    peak = max(checkpoint + best + final, best + 2 * final)
    return {'disk_bytes': stages * final, 'disk_peak_bytes': (stages - 1) * final + peak, 'checkpoint_bytes': final}


def _steps(st: Dict[str, Any], spec: Dict[str, Any], kind: str, ctx: _Ctx,
           processes: int = 1) -> Tuple[Optional[int], str]:
    if st.get('steps') and not st.get('epochs'):
        return int(st['steps']), 'steps'
    if not ctx.sizes:
        return (int(st['steps']) if st.get('steps') else None), 'steps' if st.get('steps') else 'not counted'
    queries, source = _training_queries(st, spec, ctx)
    if queries is None:
        return (int(st['steps']) if st.get('steps') else None), source
    per_step = st['queries_per_batch'] * st['grad_accum'] * processes
    batches = max(1, queries // (st['queries_per_batch'] * processes))
    by_epochs = max(1, int(math.ceil(float(st['epochs']) * batches / st['grad_accum'])))
    steps = min(int(st['steps']), by_epochs) if st.get('steps') else by_epochs
    return steps, f'{st["epochs"]} epoch(s) of {queries:,} training queries ({source}) / {per_step} per step'
