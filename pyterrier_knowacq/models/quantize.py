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
    int8_encoder = quantized_copy(bert)                                         # any module, for inference
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
    for sub in module.modules():
        parts = [getattr(sub, n, None) for n in ('query', 'key', 'value')]
        if all(isinstance(p, nn.Linear) and p.bias is not None for p in parts):
            fused = nn.Linear(parts[0].in_features, sum(p.out_features for p in parts))
            with torch.no_grad():
                fused.weight.copy_(torch.cat([p.weight for p in parts]))
                fused.bias.copy_(torch.cat([p.bias for p in parts]))
            sub.knowacq_qkv = fused


def quantized_copy(module: nn.Module, share: Iterable[object] = ()) -> nn.Module:
    """An int8 copy of ``module`` for CPU inference (eval mode); ``module`` itself is left as it was.

    The copy shares every fp32 parameter and buffer it keeps (embeddings, LayerNorms, heads) with ``module``, and the
    objects in ``share`` (e.g. a tokenizer); the transformer layers' linear layers are replaced by dynamically
    quantised int8 ones (see the module docstring). Raises :class:`KnowacqError` when there is nothing to quantise.
    """
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    devices = {t.device.type for t in module.parameters()}
    if devices - {'cpu'}:
        raise KnowacqError(f"quantize='int8' runs on CPU only, but the model is on {sorted(devices)}; load it with "
                           "device='cpu', or use fp32 or bf16 precision on the GPU (drop quantize=)")
    memo = {id(t): t for t in list(module.parameters()) + list(module.buffers())}
    memo.update({id(o): o for o in share})
    out = copy.deepcopy(module, memo)
    _fuse_qkv(out)
    names = _stack_linears(out)
    if not names:
        raise KnowacqError(f'quantize=\'int8\' found no transformer layers with linear projections in '
                           f'{type(module).__name__}; score it in fp32 (drop quantize=)')
    out.eval()
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
