"""Integrated gradients over the feed-forward (FFN) dense layers of an encoder or decoder, with batched alpha steps.

The study's scheme: for one dense layer at a time, scale its weight and bias by ``alpha`` (``steps`` values from
``1/steps`` to 1), take the target ``F = ||pool(last hidden state)||_2``, and integrate the gradient with respect to
the scaled weight: ``IG_ij = W_ij * mean_k dF/dW'_ij |_{W' = alpha_k W}``. A neuron's score is ``sum_j |IG_ij|`` over
its inputs, normalised by the example's maximum over all analysed layers; it is *active* above a threshold (0.1
for encoders, 0.01 for decoders, as in the study).

Batching: scaling ``W`` and ``b`` by ``alpha`` makes the layer output ``alpha * (W x + b)``; the layer's input ``x``
comes from upstream modules, which the scaling does not touch. So one forward runs the model on the text once up to
the layer, a hook replaces the layer's output by copies scaled by each ``alpha`` (the rest of the network broadcasts
over them), and one backward from ``sum_k F_k`` gives ``dF/dy'`` for every alpha; then ``dF/dW' = (dF/dy')^T x``.
Nothing upstream of the layer is recomputed or back-propagated, and no weight gradient is formed. The unscaled row
(``alpha = 1``) is *shared*: it is the last row, the layer's alpha-1 row, and the carrier of every later layer of the
block, whose hook adds its own ``steps - 1`` scaled rows beside it and reads its alpha-1 gradient on that same row
(``retain_grad``; the gradient flows on down to the earlier layer's alpha-1 row, which is the same network state). So
a block's prefix runs once and the rest of the network runs on ``2 * steps - 1`` rows in one batch for a BERT or Llama
block's two dense layers. This stays within the block because the tensors the second layer meets there (the
residual, Llama's ``up_proj`` branch) still have the text's single row and broadcast, exactly as in a one-layer pass.
A later block's pass does not run the blocks below it again: the first pass keeps, from its shared row, the unscaled
output of the block before each later pass's, and the later pass has those blocks return it instead of running.
With ``cls`` pooling on a BERT-style encoder, the last block projects its query and (under SDPA) attends from
``[CLS]`` only, and runs its attention output and FFN on the ``[CLS]`` position only: the target reads nothing else
after that block's attention (LayerNorm and the FFN act per token), so the other positions would carry zero
gradient; this cuts the last block's FFN work by the sequence length and gives the same scores. ``method='loop'``
is the study's plain loop (edit the weights, full forward and backward per alpha), kept as the reference the tests
compare against.

A target that does not move: when scaling a layer from ``alpha = 1/steps`` to 1 changes ``F`` by less than
``FLAT_TOL`` of ``F``, the target does not depend on that layer and its gradients are float rounding, which the
per-example normalisation would blow up into "active" neurons. Both methods set such a layer's scores to 0 for that
text and count it (``IGResult.flat``, the ``flat_texts`` column of :meth:`IGResult.per_layer_counts`). The case that
needs it: ``cls`` pooling on a freshly initialised BERT, whose last LayerNorm (unit gain, zero bias) gives every
``[CLS]`` state the norm ``sqrt(hidden)``, so ``F`` is constant.

Example::

    from pyterrier_knowacq.analysis.attribution import IntegratedGradients
    ig = IntegratedGradients('minilm-l6', pooling='cls')
    res = ig.attribute(['what is a neuron', 'a neuron is a cell'])
    res.per_layer_counts()            # DataFrame: layer, neurons, active per example, ever active, ...
    res.share['encoder.layer.0.intermediate.dense']   # share of examples where each neuron is active
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

from .._util import KnowacqError

__all__ = ['ffn_layers', 'IntegratedGradients', 'IGResult', 'FFN_PATTERNS', 'FLAT_TOL', 'MIN_STEPS']

#: relative change of the target along the alpha path below which a layer counts as one the target does not depend on:
#: 16 float32 ulps. Measured on MiniLM-L6 with cls pooling: the fresh random init moves it by 1-2e-7 (rounding), the
#: random init fine-tuned on DL20 by 1.3e-5 to 8e-5 (small but real: its scores do not change with the order of the
#: float operations), the pre-trained model by 2e-3 to 8e-2
FLAT_TOL = 16 * float(np.finfo(np.float32).eps)

#: fewest alpha steps: one alpha (1) is plain gradient x weight, and a one-point path cannot show whether the target
#: moves (``FLAT_TOL``)
MIN_STEPS = 2

#: FFN dense layers per architecture family: BERT-style (intermediate + output) and Llama-style (gate + down)
FFN_PATTERNS = [
    re.compile(r'^(?:.*\.)?encoder\.layer\.(\d+)\.(intermediate\.dense|output\.dense)$'),
    re.compile(r'^(?:.*\.)?layers\.(\d+)\.mlp\.(gate_proj|down_proj)$'),
]
_ORDER = {'intermediate.dense': 0, 'output.dense': 1, 'gate_proj': 0, 'down_proj': 1}


def ffn_layers(model, layers: Optional[Sequence[int]] = None) -> List[str]:
    """Names of the FFN dense ``nn.Linear`` modules of ``model``, in forward order (optionally only some blocks)."""
    import torch
    found = []
    for name, module in model.named_modules():
        for pat in FFN_PATTERNS:
            m = pat.match(name)
            if m and isinstance(module, torch.nn.Linear):
                found.append((int(m.group(1)), _ORDER[m.group(2)], name))
    if not found:
        raise KnowacqError(f'no FFN dense layers found in {type(model).__name__}; integrated gradients supports BERT-style '
                           '(encoder.layer.N.intermediate/output.dense) and Llama-style (layers.N.mlp.gate_proj/down_proj) models')
    blocks = sorted({b for b, _, _ in found})
    if layers is not None:
        bad = [i for i in layers if not -len(blocks) <= int(i) < len(blocks)]
        if bad:
            raise KnowacqError(f'layer index {bad[0]} is out of range: the model has {len(blocks)} transformer blocks '
                               f'(0..{len(blocks) - 1}); choose indices in that range')
        keep = {blocks[int(i)] for i in layers}
        found = [f for f in found if f[0] in keep]
    return [name for _, _, name in sorted(found)]


def _flat(values) -> bool:
    """Whether target values along one layer's alpha path are constant up to float rounding (see ``FLAT_TOL``)."""
    values = np.asarray(values, dtype=np.float64)
    return bool(values.max() - values.min() <= FLAT_TOL * max(float(np.abs(values).max()), 1e-30))


def _block(name: str):
    """``(index, module name of block j)`` for an FFN dense layer's name: ``encoder.layer.3.output.dense`` ->
    ``(3, j -> 'encoder.layer.<j>')``."""
    m = next(m for pat in FFN_PATTERNS for m in [pat.match(name)] if m)
    return int(m.group(1)), lambda j: f'{name[:m.start(1)]}{j}'


def _by_block(names: Sequence[str]) -> List[List[str]]:
    """``names`` (forward order) split into runs of consecutive layers of the same transformer block."""
    runs, last = [], None
    for name in names:
        block = _block(name)[0]
        if block != last:
            runs.append([])
            last = block
        runs[-1].append(name)
    return runs


_CLS_QUERY_ATTENTION = 'knowacq_cls_query'


def _cls_query_attention(module, query, key, value, attention_mask, **kwargs):
    """SDPA from the first query position only, broadcast back over the sequence (the [CLS] cut reads position 0
    alone): the last block's attention runs one query row instead of the sequence length."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    n = query.shape[2]
    if attention_mask is not None and attention_mask.dim() == 4 and attention_mask.shape[2] == n:
        attention_mask = attention_mask[:, :, :1]
    out, weights = sdpa_attention_forward(module, query[:, :, :1], key, value, attention_mask, **kwargs)
    return out.expand(-1, n, *out.shape[2:]), weights


def _register_cls_query_attention() -> bool:
    """Register :func:`_cls_query_attention` with transformers (once); False where it has no attention registry."""
    try:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface
        from transformers.integrations.sdpa_attention import sdpa_attention_forward  # noqa: F401
    except ImportError:
        return False
    if _CLS_QUERY_ATTENTION not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(_CLS_QUERY_ATTENTION, _cls_query_attention)
    return True


class _Restore:
    """A hook-like handle that puts an attribute back on ``remove()``."""

    def __init__(self, obj, name, value):
        self.obj, self.name, self.value = obj, name, value

    def remove(self):
        setattr(self.obj, self.name, self.value)


@dataclass
class IGResult:
    """Normalised neuron scores per analysed layer: ``scores[layer] -> [n_texts, neurons]`` in [0, 1];
    ``flat[layer] -> [n_texts]`` marks the texts whose target did not move with that layer (scores 0)."""
    scores: Dict[str, np.ndarray]
    threshold: float
    flat: Optional[Dict[str, np.ndarray]] = None

    @property
    def active(self) -> Dict[str, np.ndarray]:
        return {k: v > self.threshold for k, v in self.scores.items()}

    @property
    def share(self) -> Dict[str, np.ndarray]:
        """Per neuron, the share of examples in which it is active."""
        return {k: a.mean(0) for k, a in self.active.items()}

    def per_layer_counts(self) -> pd.DataFrame:
        rows = []
        for i, (name, act) in enumerate(self.active.items()):
            rows.append({'layer': name, 'order': i, 'neurons': act.shape[1],
                         'active_per_example': float(act.sum(1).mean()) if len(act) else 0.0,
                         'ever_active': int(act.any(0).sum()), 'majority_active': int((act.mean(0) > 0.5).sum()),
                         'mean_score': float(self.scores[name].mean()) if len(act) else 0.0,
                         'flat_texts': int(self.flat[name].sum()) if self.flat is not None else 0})
        return pd.DataFrame(rows)

    def neuron_table(self) -> pd.DataFrame:
        """Long table: layer, neuron, share of examples active, mean normalised score."""
        frames = [pd.DataFrame({'layer': name, 'neuron': np.arange(s.shape[1]), 'share': (s > self.threshold).mean(0),
                                'mean_score': s.mean(0)}) for name, s in self.scores.items()]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=['layer', 'neuron', 'share', 'mean_score'])


class IntegratedGradients:
    """Integrated gradients over FFN dense layers (see the module docstring).

    Args:
        model: a model name (alias, folder, hub id, ``random:``, adapter folder), loaded by
            :func:`~pyterrier_knowacq.models.backbones.load_encoder` (a DPR encoder as the BERT inside it), or an
            ``(nn.Module, tokenizer)`` pair.
        pooling: pooling of the target embedding (``cls``, ``mean``, ``last``).
        steps: number of alpha values (``1/steps .. 1``), at least 2.
        threshold: activity threshold on normalised scores (default 0.1; 0.01 for decoders).
        layers: block indices to analyse (default all).
        max_length: tokens per text.
        method: ``batched`` (default) or ``loop`` (the study's plain loop, for reference).
    """

    def __init__(self, model, pooling: str = 'cls', *, steps: int = 20, threshold: Optional[float] = None,
                 layers: Optional[Sequence[int]] = None, max_length: int = 128, method: str = 'batched',
                 append_eos: Optional[bool] = None):
        from ..models.backbones import is_decoder_config, load_encoder
        from .representations import check_pooling
        if isinstance(model, tuple):
            self.model, self.tokenizer = model
            self.model_name = getattr(self.model, 'name_or_path', type(self.model).__name__)
            if getattr(self.model.config, 'model_type', None) == 'dpr':   # a DPR wrapper: attribute the BERT inside
                from ..models.backbones import _dpr_bert
                self.model = _dpr_bert(self.model, self.model_name)
        else:
            self.model_name = str(model)
            self.model, self.tokenizer = load_encoder(self.model_name)   # strict: no weight left at initialisation
        self.model.eval()
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        check_pooling(pooling, self.model.config, self.model_name)
        self.pooling = pooling
        self.is_decoder = is_decoder_config(self.model.config)
        self.append_eos = (self.is_decoder and pooling == 'last') if append_eos is None else bool(append_eos)
        if not isinstance(steps, int) or steps < MIN_STEPS:
            raise KnowacqError(f'steps must be an integer >= {MIN_STEPS} (the study uses 20), got {steps!r}')
        self.steps = steps
        self.threshold = float(threshold if threshold is not None else (0.01 if self.is_decoder else 0.1))
        if method not in ('batched', 'loop'):
            raise KnowacqError(f'method must be "batched" or "loop", got {method!r}')
        self.method = method
        self.max_length = max_length
        self.layer_names = ffn_layers(self.model, layers)
        self._modules = dict(self.model.named_modules())
        self._cls_cut_name = self._last_attention_output() if pooling == 'cls' else None
        self._cls_cut = self._modules[self._cls_cut_name] if self._cls_cut_name else None

    def _last_attention_output(self) -> Optional[str]:
        """Name of the last BERT block's ``attention.output`` (called as ``(attention_states, block_input)``), or None."""
        found = [(int(m.group(1)), name) for name in self._modules
                 for m in [re.match(r'^(?:.*\.)?encoder\.layer\.(\d+)\.attention\.output$', name)] if m]
        return max(found)[1] if found else None

    @property
    def alphas(self):
        import torch
        return torch.arange(1, self.steps + 1, dtype=torch.float32) / self.steps

    def _inputs(self, text: str):
        import torch
        ids = self.tokenizer(text, truncation=True, max_length=self.max_length - (1 if self.append_eos else 0))['input_ids']
        if self.append_eos and (not ids or ids[-1] != self.tokenizer.eos_token_id):
            ids = ids + [self.tokenizer.eos_token_id]
        ids = torch.tensor([ids])
        return {'input_ids': ids, 'attention_mask': torch.ones_like(ids)}

    def _target(self, out, mask):
        from ..models.pooling import get_pooling
        hidden = out.last_hidden_state
        mask = mask.expand(hidden.shape[0], -1)
        return get_pooling(self.pooling)(hidden, mask).norm(dim=-1)  # [rows]

    # -------------------------------------------------------------- batched
    def _raw_batched(self, inputs, names: Sequence[str], states: dict, keep: Sequence[int] = ()):
        """One pass for the dense layers ``names`` of one block, in forward order: ``{layer: (scores, target values
        per alpha)}`` (see the module docstring). ``states`` maps a block index to that block's unscaled output for
        this text: the blocks up to the one before this pass's are not run again but return it; the pass adds the
        outputs of the blocks ``keep`` (taken from the shared row) for later passes."""
        import torch
        alphas = self.alphas[:-1]          # alpha = 1 is the shared row
        store, handles, patched = {}, [], []
        first, block_name = _block(names[0])

        def hooks(name):
            def pre(mod, args):            # the last row is always the unscaled text: the layer's true input
                store['x', name] = args[0][-1].detach()

            def post(mod, args, output):
                shared = output[-1:]       # alpha = 1 of this layer, and the carrier of every later one
                if shared.requires_grad:   # below an earlier layer's rows: read dF/dy' here, let it flow on down
                    shared.retain_grad()
                else:
                    shared = shared.detach().requires_grad_(True)
                scaled = (shared.detach() * alphas.view(-1, *([1] * (output.dim() - 1)))).requires_grad_(True)
                store['y', name] = scaled, shared
                return torch.cat([output[:-1], scaled, shared], 0)
            return pre, post

        def cls_only(mod, args):           # the last block from its attention output on: [CLS] row only
            return tuple(a[:, :1] for a in args)

        def keep_state(j):                 # a block's output, its shared row; a block returning more (older
            def hook(mod, args, output):   # transformers: a tuple) is simply run again by the later pass
                if isinstance(output, torch.Tensor):
                    states[j] = output[-1:].detach()
            return hook

        def cached(*args, **kwargs):
            return states[first - 1]
        try:
            if first - 1 in states:        # the prefix is known: the blocks below return it instead of running
                for j in range(first):
                    blk = self._modules[block_name(j)]
                    blk.forward = cached
                    patched.append(blk)
            for j in keep:
                handles.append(self._modules[block_name(j)].register_forward_hook(keep_state(j)))
            for name in names:
                pre, post = hooks(name)
                module = self._modules[name]
                handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
            if self._cls_cut is not None:
                handles.append(self._cls_cut.register_forward_pre_hook(cls_only))
                handles += self._cls_query_hooks()
            with torch.enable_grad():
                out = self.model(**inputs)
                target = self._target(out, inputs['attention_mask'])
                target.sum().backward()
        finally:
            for h in handles:
                h.remove()
            for blk in patched:
                del blk.forward            # the instance attribute: the class's forward is back
        # rows: each layer's alphas below 1, in forward order, then the shared row (alpha = 1 for every layer)
        values = target.detach().numpy()
        k, out = self.steps - 1, {}
        for i, name in enumerate(names):
            scaled, shared = store['y', name]
            g = torch.cat([scaled.grad, shared.grad], 0).mean(0)    # [T, out]  mean over alphas of dF/dy'
            ig = self._modules[name].weight.detach() * (g.transpose(0, 1) @ store['x', name])   # [out, in]
            out[name] = (ig.abs().sum(1).numpy(), np.append(values[i * k:(i + 1) * k], values[-1]))
        return out

    def _cls_query_hooks(self):
        """With the [CLS] cut, the last block's attention needs its query at [CLS] only: project that position and
        broadcast it back to the sequence length BERT's attention reshapes by, and (under SDPA, the default) attend
        from that one query (:func:`_cls_query_attention`). The other positions' outputs are cut away unread, so
        their gradient is zero either way. Returns handles to remove."""
        import copy
        import torch
        attention = self._modules.get(self._cls_cut_name.replace('attention.output', 'attention.self'))
        query = getattr(attention, 'query', None)
        if not isinstance(query, torch.nn.Linear):
            return []
        length, handles = {}, []

        def pre(mod, args):
            length['n'] = args[0].shape[1]
            return (args[0][:, :1],) + tuple(args[1:])

        def post(mod, args, output):
            return output.expand(-1, length['n'], -1)
        handles += [query.register_forward_pre_hook(pre), query.register_forward_hook(post)]
        config = getattr(attention, 'config', None)
        if getattr(config, '_attn_implementation', None) == 'sdpa' and _register_cls_query_attention():
            own = copy.copy(config)          # this module only: the model's shared config (and its masks) stay as is
            own._attn_implementation = _CLS_QUERY_ATTENTION
            attention.config = own
            handles.append(_Restore(attention, 'config', config))
        return handles

    # -------------------------------------------------------------- loop
    def _raw_loop(self, inputs, name: str):
        """``(scores, target values per alpha)`` of one layer by the study's loop."""
        import torch
        module = self._modules[name]
        w0 = module.weight.detach().clone()
        b0 = module.bias.detach().clone() if module.bias is not None else None
        total = torch.zeros_like(w0)
        values = []
        try:
            for a in self.alphas:
                with torch.no_grad():
                    module.weight.copy_(w0 * a)
                    if b0 is not None:
                        module.bias.copy_(b0 * a)
                self.model.zero_grad(set_to_none=True)
                with torch.enable_grad():
                    out = self.model(**inputs)
                    target = self._target(out, inputs['attention_mask'])
                    target.sum().backward()
                values.append(float(target.detach()[0]))
                total += module.weight.grad
        finally:
            with torch.no_grad():
                module.weight.copy_(w0)
                if b0 is not None:
                    module.bias.copy_(b0)
            self.model.zero_grad(set_to_none=True)
        return (w0 * total / self.steps).abs().sum(1).numpy(), values

    def raw_scores(self, text: str) -> Dict[str, np.ndarray]:
        """Un-normalised neuron scores ``sum_j |IG_ij|`` of every analysed layer for one text (0 for a layer the
        target does not move with, see the module docstring)."""
        return self._raw(text)[0]

    def _raw(self, text: str):
        """``(scores, flat)``: :meth:`raw_scores` and the set of layers whose target stayed constant."""
        inputs = self._inputs(text)
        grads = {n: p.requires_grad for n, p in self.model.named_parameters()}
        raw = {}   # layer -> (scores, target values along its alpha path)
        try:
            for p in self.model.parameters():
                p.requires_grad_(self.method == 'loop')
            if self.method == 'loop':
                raw = {name: self._raw_loop(inputs, name) for name in self.layer_names}
            else:
                # one pass per block (of the layers asked); the first keeps the unscaled output of the block before
                # each later pass's, so those passes start at their block (MiniLM, blocks 0 and 5: 4% of the time)
                runs, states = _by_block(self.layer_names), {}
                keep = [_block(names[0])[0] - 1 for names in runs[1:]]
                for i, names in enumerate(runs):
                    raw.update(self._raw_batched(inputs, names, states, keep if i == 0 else ()))
            flat = {name for name in self.layer_names if _flat(raw[name][1])}
            scores = {name: np.zeros_like(raw[name][0]) if name in flat else raw[name][0] for name in self.layer_names}
            return scores, flat
        finally:
            for n, p in self.model.named_parameters():
                p.requires_grad_(grads[n])

    def attribute(self, texts: Sequence[str]) -> IGResult:
        """Normalised neuron scores (per example, divided by its maximum over all analysed layers)."""
        per_layer = {name: [] for name in self.layer_names}
        flat = {name: [] for name in self.layer_names}
        for text in texts:
            raw, flat_here = self._raw(str(text))
            top = max(float(v.max()) for v in raw.values())
            for name, v in raw.items():
                per_layer[name].append(v / top if top > 0 else np.zeros_like(v))
                flat[name].append(name in flat_here)
        scores = {k: (np.stack(v).astype(np.float32) if v else np.zeros((0, self._modules[k].out_features), np.float32))
                  for k, v in per_layer.items()}
        return IGResult(scores, self.threshold, {k: np.array(v, dtype=bool) for k, v in flat.items()})

    def __repr__(self):
        return (f'IntegratedGradients({self.model_name!r}, pooling={self.pooling!r}, steps={self.steps}, '
                f'threshold={self.threshold}, method={self.method!r})')
