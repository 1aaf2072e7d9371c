"""int8 inference on CPU: torch dynamic quantisation of the transformer blocks' linear layers, applied at load time.

``quantize='int8'`` on :class:`~pyterrier_knowacq.models.crossencoder.CrossEncoder`,
:class:`~pyterrier_knowacq.models.biencoder.BiEncoder` and ColBERT (:class:`~pyterrier_knowacq.models.colbert.ColBERT`,
:class:`~pyterrier_knowacq.models.colbert_model.ColBERTModel`) scores with an int8 copy made by :func:`quantized_copy`:

* every ``nn.Linear`` inside the transformer's layer stack (the modules of an ``nn.ModuleList``: attention
  projections, attention output, feed-forward) becomes a ``torch.ao.nn.quantized.dynamic.Linear``: int8 weights with
  one scale per output channel, activations quantised per call from their observed range, int32 accumulation
  (fbgemm). Activations use the full 8 bits on CPUs with VNNI (AVX512-VNNI / AVX-VNNI / AMX), whose int8 dot products
  accumulate in int32; elsewhere 7 bits (torch's default ``reduce_range``, which keeps AVX2's int16 pair sums from
  saturating). BERT's outlier hidden dimensions make activations the main error: 8 bits halve it;
* the linear layers that read a LayerNorm's output (query/key/value and the feed-forward's first layer: where BERT's
  outlier dimensions live) are smoothed first (SmoothQuant, Xiao et al. 2023): input channel ``j`` is divided by
  ``s_j = max|x_j| ** alpha / max|W[:, j]| ** (1 - alpha)`` at run time and the weight column multiplied by it (the
  same function in fp32), which moves the outlier dimensions' range from the per-batch activation scale into the
  per-channel weight scales. ``max|x_j|`` comes from fp32 forward passes over the :data:`CALIBRATION_PAIRS` (fixed text
  shipped here, so the copy does not depend on what it scores); ``alpha`` = :data:`SMOOTH_ALPHA`. Query, key and value
  share one ``s`` (one input). With no tokenizer given, :func:`quantized_copy` skips smoothing;
* embeddings, LayerNorms, the pooler, scoring heads and ColBERT's projection stay fp32 (a fraction of a percent of the
  FLOPs) and are *shared* with the fp32 model, not copied;
* each BERT layer gets a fused ``knowacq_qkv`` projection, so the packed (unpadded) inference of
  :mod:`~pyterrier_knowacq.models.packed` runs one int8 matmul for Q, K and V, as it runs one fp32 matmul;
* the fp32 model is untouched: ``save()`` writes fp32 weights, and quantisation is a load option, never stored.

int8 is CPU only (fbgemm kernels); on a GPU use fp32 or bf16 precision. Why torch dynamic quantisation rather than
ONNX Runtime: DESIGN.md, "int8 inference". Effectiveness and speed: ``benchmarks/int8_effectiveness.py``,
``benchmarks/bench_int8.py``.

Example::

    ce = CrossEncoder.from_pretrained('path/to/checkpoint', quantize='int8')     # CPU
    int8_encoder = quantized_copy(bert, tokenizer=tokenizer)                    # any module, for inference
"""
from __future__ import annotations

import copy
import warnings
from typing import Iterable, Optional

import torch
from torch import nn

from .._util import KnowacqError

__all__ = ['QUANTIZE_CHOICES', 'check_quantize', 'quantize_device', 'quantized_copy', 'is_quantized', 'full_range']

#: the accepted values of ``quantize=`` besides ``None`` (fp32)
QUANTIZE_CHOICES = ('int8',)

#: SmoothQuant's migration strength. Mean |int8 - fp32 score| of the multistage C cross-encoder (score std ~2) over
#: the BM25 top-100 of 3 DL20 queries: unsmoothed 0.147; LayerNorm-fed layers smoothed at 0.5 / 0.65 / 0.8: 0.111 /
#: 0.107 / 0.104; every layer smoothed at 0.65: 0.119 (at 0.5: worse than none, on one query)
SMOOTH_ALPHA = 0.65

#: the layers smoothed: those reading a LayerNorm (BERT, ELECTRA, RoBERTa) or RMSNorm (Llama) output
_NORM_FED = ('query', 'key', 'value', 'q_proj', 'k_proj', 'v_proj', 'gate_proj', 'up_proj')

#: calibration text (query, passage): generic English, no evaluation data; only the per-dimension activation ranges
#: are read from it, and BERT's outlier dimensions are a property of the model, not of the text
CALIBRATION_PAIRS = (
    ('what is the boiling point of water', 'At sea level, pure water boils at 100 degrees Celsius (212 degrees '
     'Fahrenheit); at higher altitudes the lower air pressure makes it boil at a lower temperature.'),
    ('who wrote pride and prejudice', 'Pride and Prejudice is an 1813 novel of manners by Jane Austen. It follows '
     'Elizabeth Bennet, the second of five daughters of a country gentleman in Hertfordshire.'),
    ('how many bones are in the human body', "An adult human skeleton has 206 bones, while a newborn's has around "
     '270; several of them fuse together during growth, for example in the skull and the pelvis.'),
    ('causes of inflation', 'Inflation is a general rise in prices. Economists point to demand growing faster than '
     'supply, rising production costs such as wages or energy, and expansion of the money supply.'),
    ('symptoms of vitamin d deficiency', 'Low vitamin D can cause fatigue, bone pain, muscle weakness and mood '
     'changes; in children a severe deficiency leads to rickets. Sunlight and fortified foods help.'),
    ('python list comprehension example', 'squares = [x * x for x in range(10) if x % 2 == 0] builds a list of the '
     'squares of the even numbers below ten in one expression, without an explicit loop.'),
    ('capital of australia', 'Canberra, not Sydney, is the capital city of Australia. It was purpose-built as a '
     'compromise between Sydney and Melbourne and became the seat of parliament in 1927.'),
    ('how do vaccines work', 'Vaccines train the immune system by presenting a harmless piece or weakened form of a '
     'pathogen, so that antibodies and memory cells are ready if the real infection occurs.'),
    ('average salary of a nurse', 'Registered nurses in the United States earned a median annual wage of about '
     '$81,000 in 2022, according to the Bureau of Labor Statistics; pay varies widely by state.'),
    ('when did the berlin wall fall', 'The Berlin Wall fell on 9 November 1989, when East German authorities opened '
     'the border crossings; crowds began tearing down sections of the wall in the following days.'),
    ('define photosynthesis', 'Photosynthesis is the process by which green plants, algae and some bacteria use '
     'light energy, water and carbon dioxide to produce glucose and release oxygen.'),
    ('is coffee bad for you', 'Moderate coffee drinking, three to four cups a day, is linked to a lower risk of '
     'several diseases in observational studies, though too much caffeine can disturb sleep.'),
)


def check_quantize(quantize: Optional[str], device=None) -> Optional[str]:
    """``quantize`` when valid for ``device`` (``None``: fp32); else one :class:`KnowacqError` naming the fix."""
    if quantize is None:
        return None
    if not isinstance(quantize, str) or quantize.lower() not in QUANTIZE_CHOICES:
        raise KnowacqError(f'quantize={quantize!r} is not supported; choices: None (fp32, the default) or '
                           f"{', '.join(repr(c) for c in QUANTIZE_CHOICES)} (CPU only)")
    quantize = quantize.lower()
    if device is not None and torch.device(device).type != 'cpu':
        raise KnowacqError(f"quantize={quantize!r} runs on CPU only (torch dynamic quantisation has no "
                           f"{torch.device(device).type} kernels); on a GPU use fp32 or bf16 precision instead: drop "
                           f"quantize={quantize!r}, or pass device='cpu' to score int8 on the CPU")
    engines = torch.backends.quantized.supported_engines
    if not any(e in engines for e in ('x86', 'fbgemm', 'qnnpack')):
        raise KnowacqError(f"quantize={quantize!r} needs a torch build with a quantised CPU engine (x86, fbgemm or "
                           f'qnnpack); this one has {engines}: use fp32 (drop quantize=)')
    return quantize


def quantize_device(quantize: Optional[str], device):
    """The device a model with ``quantize`` runs on: ``device`` when given (checked), else CPU for int8 and ``None``
    (the caller's default) for fp32. int8 never silently picks a GPU: it exists for CPU serving."""
    quantize = check_quantize(quantize, device)
    if quantize is not None and device is None:
        return torch.device('cpu')
    return device


def full_range() -> bool:
    """True when int8 activations may use all 8 bits: an x86 CPU whose int8 dot products accumulate in int32 (VNNI).
    ``KNOWACQ_INT8_REDUCE_RANGE=1`` forces 7 bits (torch's default)."""
    import os
    if os.environ.get('KNOWACQ_INT8_REDUCE_RANGE', '') not in ('', '0'):
        return False
    try:
        with open('/proc/cpuinfo') as f:
            flags = next((line for line in f if line.startswith('flags')), '').split()
    except OSError:
        return False
    return any(f in flags for f in ('avx512_vnni', 'avx_vnni', 'amx_int8'))


def _int8_linear_class():
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    class Int8Linear(DynamicLinear):
        """torch's dynamic int8 linear, with 8-bit activations where the CPU allows (:func:`full_range`)."""
        reduce_range = True

        def forward(self, x):
            y = torch.ops.quantized.linear_dynamic(x, self._packed_params._packed_params,
                                                   reduce_range=self.reduce_range)
            return y.to(x.dtype)

        def extra_repr(self):
            return super().extra_repr() + f', activation_bits={7 if self.reduce_range else 8}'
    return Int8Linear


_INT8_LINEAR = None


def _stack_linears(module: nn.Module) -> Iterable[str]:
    """Qualified names of the ``nn.Linear`` modules inside an ``nn.ModuleList`` (the transformer's layers)."""
    names = set()
    for name, sub in module.named_modules():
        if isinstance(sub, nn.ModuleList):
            for child_name, child in sub.named_modules():
                if isinstance(child, nn.Linear):
                    names.add(f'{name}.{child_name}' if name else child_name)
    return sorted(names)


def _fuse_qkv(module: nn.Module) -> None:
    """Give each BERT self-attention a fused ``knowacq_qkv`` linear (rows: query, key, value), as the packed forward
    concatenates them; quantised per output channel, it holds exactly the rows the three separate int8 layers do."""
    for sub in list(module.modules()):
        parts = [getattr(sub, n, None) for n in ('query', 'key', 'value')]
        if all(isinstance(p, nn.Linear) and p.bias is not None for p in parts):
            sub.knowacq_qkv = _fused(parts)


class _Smoothed(nn.Module):
    """``linear(x * inv_scale)``: a linear layer whose weight columns were multiplied by ``1 / inv_scale``."""

    def __init__(self, linear: nn.Module, inv_scale: torch.Tensor):
        super().__init__()
        self.linear = linear
        self.register_buffer('inv_scale', inv_scale)

    def forward(self, x):
        return self.linear(x * self.inv_scale)


def _base_model(module: nn.Module):
    """The outermost Hugging Face model inside ``module`` (its base model: the encoder or decoder stack)."""
    from transformers import PreTrainedModel
    for sub in module.modules():
        if isinstance(sub, PreTrainedModel):
            return sub.base_model
    return None


def _input_ranges(module: nn.Module, names, tokenizer, pairs: bool):
    """``{name: max |input| per channel}`` of the named linear layers over :data:`CALIBRATION_PAIRS` (fp32, the
    standard forward), or ``None`` when ``module`` holds no Hugging Face model to run."""
    base = _base_model(module)
    if base is None:
        return None
    mods = dict(module.named_modules())
    ranges = {}

    def hook(name):
        def record(_, inputs, __):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).abs().amax(0).float()
            ranges[name] = torch.maximum(ranges[name], x) if name in ranges else x
        return record
    handles = [mods[n].register_forward_hook(hook(n)) for n in names if n in mods]
    # one text (pair) per forward: no padding positions in the ranges, and no pad token needed
    batches = [tokenizer(q, p, return_tensors='pt') for q, p in CALIBRATION_PAIRS] if pairs else \
        [tokenizer(t, return_tensors='pt') for pair in CALIBRATION_PAIRS for t in pair]
    try:
        with torch.no_grad():
            for enc in batches:
                kwargs = {'input_ids': enc['input_ids'], 'attention_mask': enc['attention_mask']}
                if 'token_type_ids' in enc and getattr(base.config, 'type_vocab_size', 0) > 1:
                    kwargs['token_type_ids'] = enc['token_type_ids']
                base(**kwargs)
    finally:
        for h in handles:
            h.remove()
    return ranges


def _smooth(out: nn.Module, names, ranges, alpha: float) -> None:
    """Wrap the LayerNorm-fed linear layers among ``names`` in :class:`_Smoothed` (query/key/value of one attention:
    one scale)."""
    mods = dict(out.named_modules())
    groups, seen = [], set()
    for name in names:
        parent, attr = name.rsplit('.', 1) if '.' in name else ('', name)
        if attr not in _NORM_FED and not parent.endswith('intermediate'):
            continue
        if attr in ('query', 'key', 'value'):
            group = [f'{parent}.{a}' for a in ('query', 'key', 'value')]
            if all(g in ranges for g in group) and group[0] not in seen:
                seen.update(group)
                groups.append(group)
            continue
        if name in ranges:
            groups.append([name])
    for group in groups:
        linears = [mods[n] for n in group]
        w = torch.stack([lin.weight.detach().abs().amax(0) for lin in linears]).amax(0).clamp(min=1e-5)
        s = (ranges[group[0]].clamp(min=1e-5) ** alpha / w ** (1 - alpha)).clamp(min=1e-5)
        for name, lin in zip(group, linears):
            # a new weight in the copy: the fp32 one stays shared with (and unchanged in) the model
            lin.weight = nn.Parameter(lin.weight.detach() * s[None, :], requires_grad=False)
            parent, attr = name.rsplit('.', 1) if '.' in name else ('', name)
            setattr(mods[parent] if parent else out, attr, _Smoothed(lin, 1.0 / s))
        if len(group) == 3:    # the packed forward's fused projection: built from the smoothed rows, same scale
            att = mods[group[0].rsplit('.', 1)[0]]
            att.knowacq_qkv = _Smoothed(_fused(linears), 1.0 / s)


def _fused(parts):
    fused = nn.Linear(parts[0].in_features, sum(p.out_features for p in parts))
    with torch.no_grad():
        fused.weight.copy_(torch.cat([p.weight for p in parts]))
        fused.bias.copy_(torch.cat([p.bias for p in parts]))
    return fused


def quantized_copy(module: nn.Module, share: Iterable[object] = (), tokenizer=None, pairs: bool = False,
                   alpha: float = SMOOTH_ALPHA) -> nn.Module:
    """An int8 copy of ``module`` for CPU inference (eval mode); ``module`` itself is left as it was.

    The copy shares every fp32 parameter and buffer it keeps (embeddings, LayerNorms, heads) with ``module``, and the
    objects in ``share`` (e.g. a tokenizer); the transformer layers' linear layers are replaced by dynamically
    quantised int8 ones (see the module docstring), smoothed first when ``tokenizer`` is given (calibrated on
    :data:`CALIBRATION_PAIRS`, tokenised as pairs when ``pairs``, as a cross-encoder reads them). Raises
    :class:`KnowacqError` when there is nothing to quantise.
    """
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    devices = {t.device.type for t in module.parameters()}
    if devices - {'cpu'}:
        raise KnowacqError(f"quantize='int8' runs on CPU only, but the model is on {sorted(devices)}; load it with "
                           "device='cpu', or use fp32 or bf16 precision on the GPU (drop quantize=)")
    memo = {id(t): t for t in list(module.parameters()) + list(module.buffers())}
    memo.update({id(o): o for o in share})
    out = copy.deepcopy(module, memo)
    names = _stack_linears(out)
    if not names:
        raise KnowacqError(f'quantize=\'int8\' found no transformer layers with linear projections in '
                           f'{type(module).__name__}; score it in fp32 (drop quantize=)')
    out.eval()
    ranges = _input_ranges(module, names, tokenizer, pairs) if tokenizer is not None and alpha else None
    if ranges:
        _smooth(out, names, ranges, alpha)
    else:
        _fuse_qkv(out)
    names = _stack_linears(out)
    global _INT8_LINEAR
    _INT8_LINEAR = _INT8_LINEAR or _int8_linear_class()
    with warnings.catch_warnings():
        # torch.ao.quantization announces its move to torchao; the eager dynamic path is what runs here (DESIGN.md)
        warnings.filterwarnings('ignore', category=DeprecationWarning)
        warnings.filterwarnings('ignore', message='.*quantiz.*deprecated.*')
        quantize_dynamic(out, {name: per_channel_dynamic_qconfig for name in names}, dtype=torch.qint8,
                         mapping={nn.Linear: _INT8_LINEAR}, inplace=True)
    reduce = not full_range()
    for m in out.modules():
        if isinstance(m, _INT8_LINEAR):
            m.reduce_range = reduce
    return out


def is_quantized(module: nn.Module) -> bool:
    """True when ``module`` holds dynamically quantised linear layers."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
    return any(isinstance(m, DynamicLinear) for m in module.modules())
