"""``knowacq plan FILE [--gpu h100|h200|a100-40g|cpu]``: what an experiment file will cost before it runs.

Per trained model: the peak memory of one training step, the micro-batch x accumulation that fits the device, the
estimated wall time, and the disk its checkpoints take. Per system: the memory of its models at inference, the wall
time over every test collection it runs on, and the indexes it builds (dense, ColBERT, PISA). The corpus and query
counts come from a small table of well-known ``irds:`` ids (:data:`KNOWN_SIZES`), else ir_datasets' own metadata,
else the dataset itself (counted). ``knowacq run`` computes the memory part for this machine's device before any
work and refuses a file with a model or a system that cannot fit (:func:`check_plan`; ``--force`` runs it anyway).

How the numbers are made (the assumptions):

* **Architectures** are read with ``AutoConfig`` where that works without the hub (a local folder, a packaged alias,
  the local Hugging Face cache); otherwise from :data:`KNOWN_CONFIGS`, the configs of the seed models
  (bert-base-uncased, ELECTRA-base, RoBERTa-base, Contriever, DPR, ColBERTv2, Llama-2-7B, RepLLaMA's LoRA adapter,
  SmolLM2-135M, all-MiniLM-L6-v2). Parameter counts come from the full model built on the ``meta`` device (exact,
  no memory).
* **Activations are measured**, never guessed: the real model class is built from the config with 1 and 2
  transformer layers (fp32, CPU; constant weights, since what is saved does not depend on them, and an embedding
  table cut to the token ids used) and the real training task of its family (``CrossEncoderTask``,
  ``BiEncoderTask``, ``ColBERTTask``, with LoRA applied by peft as the trainer does) computes its loss on synthetic
  texts long enough to fill the spec's sequence lengths (``max_length``, ``query_max_length``, ``train_doc_maxlen``:
  the peak of a step is a batch padded to the limit; one passage per group is short, so the padded attention-mask
  path runs as in real batches) at 1 and 2 queries of the spec's group size, with the BERT (MiniLM) or SmolLM2
  tokenizer standing in for the family's own. :func:`~.training.memory.activation_bytes` counts what autograd saves
  for the backward (on real MS MARCO passages a real step of the same task saved 0-2% less, all-MiniLM-L6's 6
  layers scaled from 1 and 2 included; ``tests/test_plan.py`` holds it within 2x). Three measurements (1
  layer x 1 query, 1 layer x 2 queries, 2 layers x 1 query) give a batch-independent part, a per-query part and a
  per-layer-per-query part, scaled linearly to the real number of layers and the spec's batch. Groups of more than
  :data:`DOC_CAP` passages (a cross-encoder's 1 + 99 negatives) are measured at :data:`DOC_CAP` and the per-query
  part is scaled by the group size (every passage is its own sequence). Only the forward pass is run: the backward
  would not change what is saved, and it triples the time. Results are cached under ``$KNOWACQ_CACHE/plan/``,
  keyed by the architecture, the shapes and the library versions.
* **GPU precision**: ``precision: auto`` trains under bf16 autocast on all three GPUs. Activations are then
  ``BF16_ACTIVATION_FACTOR`` (0.65) of the fp32 measurement, not a plain half: autocast keeps LayerNorm/RMSNorm, the
  residual stream, softmax and the losses in fp32 (the same steps measured under CPU bf16 autocast saved 0.62 (BERT)
  and 0.70 (Llama) of their fp32 bytes, without weight copies), and dropout masks are 1 byte either way. Autocast
  also keeps a bf16 copy of every matmul weight for the backward: 2 bytes per linear weight, the frozen base of a
  LoRA model included. On a GPU the measurement runs without attention dropout, because CUDA's fused attention
  kernels keep no ``T x T`` attention matrix (CPU training with dropout does, and the ``cpu`` plan measures that).
* **Weights**: master weights fp32 (4 bytes per parameter, as knowacq loads every model, a LoRA model's frozen base
  included), fp32 gradients (4 bytes) and AdamW's two fp32 moments (8 bytes) per *trainable* parameter (LoRA: the
  adapter only; frozen poolers, ``freeze_layers`` and bases take none). ``gradient_checkpointing: true`` keeps each
  layer's fp32 input plus one layer's activations. A step may use :data:`BUDGET_FRACTION` (80%) of the device
  memory, the share the trainer's ``micro_batch: auto`` fits into (:func:`~.training.memory.device_budget`); a GPU
  step that needs more at one query per forward pass does not fit (the trainer would refuse too), and anything else
  above the whole memory does not fit. On a CPU the trainer keeps the whole batch (no automatic micro-batches).
* **Inference** runs as the transformers do: cross-encoders and bi-encoders in fp32, ColBERT in fp16 on a GPU. The
  working memory of a batch is one layer's activations for ``batch_size`` sequences at the stage's ``max_length``
  (measured the same way, no gradients kept between layers), plus, for the analysis, every layer's hidden states.
* **Wall time** from FLOPs: training ``(2 x forward + 2 x input-gradient + 2 x weight-gradient params) x tokens``
  per step (6 x params x tokens for full fine-tuning, 4 x for LoRA, plus a forward again with gradient
  checkpointing; attention ``T^2`` terms added), at the spec's sequence limits, times the steps (``steps:``, or
  ``epochs:`` x training queries / batch). Inference ``2 x params x tokens`` over each system's candidates x queries
  at the corpus' mean passage length, and the corpus encoded once per (corpus, model) for dense and ColBERT
  indexes. Divided by a sustained rate: 400 TFLOP/s bf16 on an H100 (40% MFU of its 989 dense), 450 on an H200,
  150 on an A100-40G (48% of 312); fp32 inference 40 / 40 / 12 TFLOP/s (60% of the 67 / 67 / 19.5 fp32 peaks:
  TF32 matmuls are off by default in PyTorch); on a CPU, half (MFU 0.5) of this machine's measured fp32 matmul
  rate. Not included: data preparation (first-stage runs of training queries, teacher files, text look-ups),
  validation, checkpoint writes, index search and PISA (CPU work).
* **Disk**: dense indexes ``docs x dim x 4`` bytes (FlexIndex, fp32); ColBERT ``tokens x (dim x 2 + 24)`` (fp16
  vectors, IVF-PQ codes and ids) + doc lengths; PISA about 35% of the corpus text; checkpoints: each stage's final
  model in fp32 (LoRA with ``save: adapter``: the adapter only), the peak while training adding the resume
  checkpoint (weights + AdamW state) and the best/final copies.

Example::

    plan = make_plan('experiments/knowacq-full.yaml', gpu='h100')
    print(format_plan(plan))            # or json.dumps(plan)
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .._util import KnowacqError

__all__ = ['GPUS', 'KNOWN_CONFIGS', 'KNOWN_SIZES', 'Device', 'Arch', 'PlanRefused', 'device_spec', 'architecture',
           'measure_training', 'measure_encoder', 'activation_estimate', 'make_plan', 'format_plan', 'check_plan',
           'BUDGET_FRACTION', 'BF16_ACTIVATION_FACTOR', 'DOC_CAP']

FORMAT = 'pyterrier_knowacq.plan/1'
MEASURE_VERSION = 3
GIB = 2 ** 30
MIB = 2 ** 20
#: the share of the device memory a training step may use (the trainer's micro_batch: auto fits into 80% of it)
BUDGET_FRACTION = 0.8
#: bf16-autocast activations relative to the fp32 measurement (see the module docstring)
BF16_ACTIVATION_FACTOR = 0.65
#: passages per query that are measured; larger groups are scaled linearly (each passage is its own sequence)
DOC_CAP = 16
#: model FLOP utilisation of a CPU relative to its measured fp32 matmul rate
CPU_MFU = 0.5
#: BERT word pieces (and Llama sentence pieces) per whitespace word of English text
TOKENS_PER_WORD = 1.3
#: tokens of a typical MS MARCO / NQ question with its special tokens
QUERY_TOKENS = 12
#: a PISA index takes about this share of the raw corpus text
PISA_FRACTION = 0.35
#: ColBERT's IVF-PQ index: 16 code bytes + an 8-byte id per token
COLBERT_TOKEN_OVERHEAD = 24
_WORDS = ('river', 'stone', 'light', 'house', 'green', 'water', 'paper', 'music', 'table', 'north')


# ----------------------------------------------------------------------------------------------------------- devices
@dataclass
class Device:
    """A device to plan for: memory, whether training runs in bf16, and sustained FLOP rates."""
    key: str
    name: str
    memory_bytes: int
    bf16: bool
    bf16_flops: float
    fp32_flops: float
    gpu: bool = True

    @property
    def budget_bytes(self) -> float:
        return BUDGET_FRACTION * self.memory_bytes


#: the GPUs knowacq plans for: memory as the driver reports it (MiB), sustained (not peak) dense FLOP rates
GPUS: Dict[str, Device] = {
    'h100': Device('h100', 'NVIDIA H100 80GB', 81559 * MIB, True, 400e12, 40e12),
    'h200': Device('h200', 'NVIDIA H200 141GB', 143771 * MIB, True, 450e12, 40e12),
    'a100-40g': Device('a100-40g', 'NVIDIA A100 40GB', 40960 * MIB, True, 150e12, 12e12),
}

_CPU_GFLOPS: Optional[float] = None


def cpu_gflops() -> float:
    """This machine's fp32 matmul rate in GFLOP/s (a few 1024 x 1024 products, best of five; measured once)."""
    global _CPU_GFLOPS
    if _CPU_GFLOPS is None:
        import torch
        a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
        torch.mm(a, b)
        best = math.inf
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(4):
                torch.mm(a, b)
            best = min(best, (time.perf_counter() - t0) / 4)
        _CPU_GFLOPS = 2 * 1024 ** 3 / best / 1e9
    return _CPU_GFLOPS


def _ram_bytes() -> int:
    try:
        return int(os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE'))
    except (ValueError, OSError, AttributeError):
        return 8 * GIB


def device_spec(gpu: Optional[str] = 'auto', *, flops: bool = True) -> Device:
    """The :class:`Device` of ``gpu``: ``h100``, ``h200``, ``a100-40g``, ``cpu`` (this machine: its RAM and measured
    matmul rate) or ``auto`` (this machine's first CUDA GPU, else its CPU)."""
    key = (gpu or 'auto').lower()
    if key in GPUS:
        return GPUS[key]
    if key == 'auto':
        import torch
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            name = torch.cuda.get_device_name(0)
            known = next((d for k, d in GPUS.items() if k.split('-')[0] in name.lower()), None)
            bf16 = torch.cuda.is_bf16_supported()
            return Device('cuda', name, int(props.total_memory), bf16, known.bf16_flops if known else 100e12,
                          known.fp32_flops if known else 10e12)
        key = 'cpu'
    if key == 'cpu':
        rate = cpu_gflops() * 1e9 * CPU_MFU if flops else 0.0
        return Device('cpu', 'this machine\'s CPU', _ram_bytes(), False, rate, rate, gpu=False)
    raise KnowacqError(f'unknown --gpu {gpu!r}; choose one of {", ".join(list(GPUS) + ["cpu"])}')


# ----------------------------------------------------------------------------------------------------- architectures
_BERT_BASE = {'model_type': 'bert', 'vocab_size': 30522, 'hidden_size': 768, 'num_hidden_layers': 12,
              'num_attention_heads': 12, 'intermediate_size': 3072, 'max_position_embeddings': 512,
              'type_vocab_size': 2}
_LLAMA2_7B = {'model_type': 'llama', 'vocab_size': 32000, 'hidden_size': 4096, 'num_hidden_layers': 32,
              'num_attention_heads': 32, 'num_key_value_heads': 32, 'intermediate_size': 11008,
              'max_position_embeddings': 4096, 'rms_norm_eps': 1e-5}
_LORA_ALL = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']

#: configs of the seed models, used when a config cannot be read locally (the hub is not asked). ``colbert_dim``: a
#: ColBERT projection; ``adapter``: a LoRA adapter ``{base, r, target_modules}`` merged into its base.
KNOWN_CONFIGS: Dict[str, Dict[str, Any]] = {
    'bert-base-uncased': _BERT_BASE,
    'google-bert/bert-base-uncased': _BERT_BASE,
    'google/electra-base-discriminator': {'model_type': 'electra', 'vocab_size': 30522, 'embedding_size': 768,
                                          'hidden_size': 768, 'num_hidden_layers': 12, 'num_attention_heads': 12,
                                          'intermediate_size': 3072, 'max_position_embeddings': 512,
                                          'type_vocab_size': 2},
    'roberta-base': {'model_type': 'roberta', 'vocab_size': 50265, 'hidden_size': 768, 'num_hidden_layers': 12,
                     'num_attention_heads': 12, 'intermediate_size': 3072, 'max_position_embeddings': 514,
                     'type_vocab_size': 1, 'pad_token_id': 1, 'bos_token_id': 0, 'eos_token_id': 2},
    'facebook/contriever': _BERT_BASE,
    'facebook/contriever-msmarco': _BERT_BASE,
    # DPR checkpoints load as the plain BERT inside (backbones._dpr_bert)
    'facebook/dpr-ctx_encoder-single-nq-base': _BERT_BASE,
    'facebook/dpr-question_encoder-single-nq-base': _BERT_BASE,
    'facebook/dpr-ctx_encoder-multiset-base': _BERT_BASE,
    'facebook/dpr-question_encoder-multiset-base': _BERT_BASE,
    'colbert-ir/colbertv2.0': {**_BERT_BASE, 'colbert_dim': 128, 'colbert_doc_maxlen': 180},
    'meta-llama/Llama-2-7b-hf': _LLAMA2_7B,
    'castorini/repllama-v1-7b-lora-passage': {'adapter': {'base': 'meta-llama/Llama-2-7b-hf', 'r': 32,
                                                          'target_modules': _LORA_ALL}},
    'HuggingFaceTB/SmolLM2-135M': {'model_type': 'llama', 'vocab_size': 49152, 'hidden_size': 576,
                                   'num_hidden_layers': 30, 'num_attention_heads': 9, 'num_key_value_heads': 3,
                                   'intermediate_size': 1536, 'max_position_embeddings': 8192,
                                   'tie_word_embeddings': True},
    'sentence-transformers/all-MiniLM-L6-v2': {'model_type': 'bert', 'vocab_size': 30522, 'hidden_size': 384,
                                               'num_hidden_layers': 6, 'num_attention_heads': 12,
                                               'intermediate_size': 1536, 'max_position_embeddings': 512,
                                               'type_vocab_size': 2},
}
KNOWN_CONFIGS['FacebookAI/roberta-base'] = KNOWN_CONFIGS['roberta-base']
KNOWN_CONFIGS['smollm2-135m'] = KNOWN_CONFIGS['HuggingFaceTB/SmolLM2-135M']
KNOWN_CONFIGS['HuggingFaceTB/SmolLM2-135M-Instruct'] = KNOWN_CONFIGS['HuggingFaceTB/SmolLM2-135M']
KNOWN_CONFIGS['minilm-l6'] = KNOWN_CONFIGS['sentence-transformers/all-MiniLM-L6-v2']
#: aliases whose folder is built by a slow conversion: read only when already converted, else from KNOWN_CONFIGS
_COSTLY_ALIASES = {'smollm2-135m'}
_DROP_CONFIG_KEYS = ('architectures', '_name_or_path', 'transformers_version', 'auto_map', 'torch_dtype', 'dtype',
                     'quantization_config', 'id2label', 'label2id', '_attn_implementation_autoset')


@dataclass
class Arch:
    """A model's architecture: the HF config (with ``model_type``), where it was read, and what sits on top."""
    name: str
    source: str                                  # folder | alias | cache | registry
    config: Dict[str, Any]
    colbert_dim: Optional[int] = None
    adapter: Optional[Dict[str, Any]] = None     # a LoRA adapter merged into the base: {r, target_modules}
    stored_dtype_bytes: int = 4

    @property
    def decoder(self) -> bool:
        from ..models.backbones import DECODER_TYPES
        return self.config.get('model_type') in DECODER_TYPES or bool(self.config.get('is_decoder'))

    @property
    def hidden(self) -> int:
        return int(self.config.get('hidden_size') or self.config.get('d_model') or self.config.get('dim'))

    @property
    def layers(self) -> int:
        return int(self.config.get('num_hidden_layers') or self.config.get('n_layers') or self.config.get('num_layers'))

    def key(self) -> Dict[str, Any]:
        """What decides the measurements (not where the config came from)."""
        return {k: v for k, v in sorted(self.config.items()) if k not in _DROP_CONFIG_KEYS}

    def label(self) -> str:
        return f'{self.config.get("model_type")} {self.layers}x{self.hidden}'


def _config_dict(cfg) -> Dict[str, Any]:
    d = cfg.to_dict() if hasattr(cfg, 'to_dict') else dict(cfg)
    if d.get('model_type') == 'dpr':   # knowacq loads DPR encoders as the plain BERT inside
        d = {k: v for k, v in d.items() if k not in ('projection_dim',)}
        d['model_type'] = 'bert'
    return {k: v for k, v in d.items() if k not in _DROP_CONFIG_KEYS}


def _registry(name: str) -> Optional[Arch]:
    entry = KNOWN_CONFIGS.get(name)
    if entry is None:
        entry = next((v for k, v in KNOWN_CONFIGS.items() if k.lower() == name.lower()), None)
    if entry is None:
        return None
    if 'adapter' in entry:
        base = architecture(entry['adapter']['base'])
        return Arch(name, 'registry', base.config, adapter=dict(entry['adapter']))
    config = {k: v for k, v in entry.items() if not k.startswith('colbert_')}
    return Arch(name, 'registry', dict(config), colbert_dim=entry.get('colbert_dim'))


def _folder_arch(name: str, path: Path, source: str) -> Arch:
    from transformers import AutoConfig
    if (path / 'adapter_config.json').exists() and not (path / 'config.json').exists():
        cfg = json.loads((path / 'adapter_config.json').read_text())
        base = architecture(str(cfg.get('base_model_name_or_path')))
        return Arch(name, source, base.config, adapter={'r': int(cfg.get('r', 8)),
                                                        'target_modules': list(cfg.get('target_modules') or [])})
    config = _config_dict(AutoConfig.from_pretrained(str(path)))
    dim = None
    for meta in ('knowacq.json', 'artifact.metadata'):
        try:
            info = json.loads((path / meta).read_text())
        except (OSError, ValueError):
            continue
        if info.get('kind') == 'colbert' or 'dim' in info and meta == 'artifact.metadata':
            dim = int(info.get('dim') or 128)
    return Arch(name, source, config, colbert_dim=dim)


_ARCHS: Dict[str, Arch] = {}


def architecture(name) -> Arch:
    """The :class:`Arch` of a model name, without the hub: a local folder (or PEFT adapter folder), a packaged alias,
    the local Hugging Face cache, else :data:`KNOWN_CONFIGS`. ``random:NAME[@SEED]`` has NAME's architecture.

    Raises:
        KnowacqError: the name is none of these (its size cannot be known offline).
    """
    name = str(name).strip()
    if name in _ARCHS:
        return _ARCHS[name]
    base = name[len('random:'):].partition('@')[0] if name.startswith('random:') else name
    path = Path(base).expanduser()
    arch = None
    if path.is_dir() and ((path / 'config.json').exists() or (path / 'adapter_config.json').exists()):
        arch = _folder_arch(name, path, 'folder')
    else:
        from ..models.backbones import ALIASES
        if base in ALIASES:
            if base in _COSTLY_ALIASES:
                from .._util import cache_dir
                folder = cache_dir('models') / base
                arch = _folder_arch(name, folder, 'alias') if (folder / 'config.json').exists() else None
            else:
                from ..models.backbones import resolve_model
                arch = _folder_arch(name, Path(resolve_model(base)), 'alias')
        if arch is None:
            arch = _hf_cache_arch(name, base)
        if arch is None:
            arch = _registry(base)
    if arch is None:
        raise KnowacqError(f'model {name!r} is not a local folder, an alias, in the local Hugging Face cache or among '
                           f'the known configs ({", ".join(sorted(KNOWN_CONFIGS))}); its size cannot be planned '
                           'offline')
    arch.name = name
    if arch.source != 'folder':   # a folder may be rewritten in place; the others are fixed
        _ARCHS[name] = arch
    return arch


def _hf_cache_arch(name: str, repo: str) -> Optional[Arch]:
    if not re.match(r'^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$', repo):
        return None
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        return None
    for fname in ('config.json', 'adapter_config.json'):
        try:
            found = Path(hf_hub_download(repo, fname, local_files_only=True))
        except Exception:  # noqa: BLE001 - not cached (or offline): the registry decides
            continue
        return _folder_arch(name, found.parent, 'cache')
    return None


def _hf_config(arch: Arch, layers: Optional[int] = None, vocab: int = 0, attn_dropout: bool = True):
    from transformers import AutoConfig
    d = dict(arch.config)
    model_type = d.pop('model_type')
    cfg = AutoConfig.for_model(model_type, **d)
    if layers is not None:
        cfg.num_hidden_layers = int(layers)
        if isinstance(getattr(cfg, 'layer_types', None), list):
            cfg.layer_types = cfg.layer_types[:int(layers)]
    if vocab and int(getattr(cfg, 'vocab_size', 0) or 0) < vocab:
        cfg.vocab_size = int(vocab)
    if not attn_dropout:
        for key in ('attention_probs_dropout_prob', 'attention_dropout'):
            if hasattr(cfg, key):
                setattr(cfg, key, 0.0)
    return cfg


_COUNTS: Dict[str, Dict[str, int]] = {}


def param_counts(arch: Arch, lora_targets: Optional[List[str]] = None, lora_r: int = 0) -> Dict[str, int]:
    """Parameter counts of the full model (built on the ``meta`` device): ``total``, ``embedding`` (lookup tables),
    ``linear`` (matmul weights), ``pooler``, ``layer`` (one transformer layer), ``lora`` (for the targets given)."""
    key = json.dumps([arch.key(), sorted(lora_targets or []), lora_r], sort_keys=True, default=str)
    if key in _COUNTS:
        return _COUNTS[key]
    import torch
    from transformers import AutoModel
    with torch.device('meta'):
        model = AutoModel.from_config(_hf_config(arch))
    out = {'total': 0, 'embedding': 0, 'linear': 0, 'pooler': 0, 'layer': 0, 'lora': 0}
    out['total'] = sum(p.numel() for p in model.parameters())
    targets = set(lora_targets or [])
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Embedding):
            out['embedding'] += module.weight.numel()
        elif isinstance(module, torch.nn.Linear):
            out['linear'] += module.weight.numel()
            if targets and name.rsplit('.', 1)[-1] in targets:
                out['lora'] += lora_r * (module.in_features + module.out_features)
        if name.endswith('pooler') and isinstance(module, torch.nn.Module):
            out['pooler'] += sum(p.numel() for p in module.parameters())
    out['layer'] = (out['total'] - out['embedding'] - out['pooler']) // max(1, arch.layers)
    _COUNTS[key] = out   # (a LoRA adapter merged into its base adds no parameters)
    return out


# ------------------------------------------------------------------------------------------------------ measurement
_MEMO: Dict[str, Dict[str, Any]] = {}
_TOKENIZERS: Dict[bool, Any] = {}


def _tokenizer(decoder: bool):
    """A stand-in tokenizer of the family (lengths are forced by the texts, so only the family matters): the MiniLM
    BERT vocabulary (= bert-base-uncased's) for encoders, SmolLM2's for decoders."""
    if decoder not in _TOKENIZERS:
        from ..models.backbones import load_tokenizer
        _TOKENIZERS[decoder] = load_tokenizer('tiny-llama' if decoder else 'tiny-bert')
    return _TOKENIZERS[decoder]


def _text(tokens: int) -> str:
    return ' '.join(itertools.islice(itertools.cycle(_WORDS), int(tokens) + 8))


def _cache_file(key: str) -> Path:
    from .._util import cache_dir
    return cache_dir('plan') / f'{key}.json'


def _cached(payload: Dict[str, Any], compute) -> Dict[str, Any]:
    import torch
    import transformers
    payload = {'version': MEASURE_VERSION, 'torch': torch.__version__.split('+')[0],
               'transformers': transformers.__version__, **payload}
    key = hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]
    if key in _MEMO:
        return _MEMO[key]
    path = _cache_file(key)
    try:
        found = json.loads(path.read_text())
        if found.get('payload') == json.loads(json.dumps(payload, sort_keys=True, default=str)):
            _MEMO[key] = found['result']
            return found['result']
    except (OSError, ValueError, KeyError):
        pass
    result = compute()
    from .._util import atomic_write_json
    try:
        atomic_write_json(path, {'payload': payload, 'result': result})
    except OSError:
        pass
    _MEMO[key] = result
    return result


def _vocab_needed(tok) -> int:
    """One more than the largest token id the synthetic texts can produce (words, punctuation, special and ColBERT
    marker tokens): the measured models' embedding tables stop there (a lookup saves its indices, whatever the
    table's size; the real size counts in :func:`param_counts`)."""
    ids = set(tok(_text(3 * len(_WORDS)) + ' . , ; : ! ?')['input_ids']) | set(tok.all_special_ids)
    for marker in ('[unused0]', '[unused1]'):
        i = tok.convert_tokens_to_ids(marker)
        if isinstance(i, int) and i != tok.unk_token_id:
            ids.add(i)
    return max(ids) + 1


def _build_encoder(arch: Arch, layers: int, tok, attn_dropout: bool):
    """The real model class of ``arch`` with ``layers`` layers, fp32 on the CPU. Its weights are a constant (the
    saved activations do not depend on them; skipping the random init saves seconds per billion weights)."""
    import contextlib
    import torch
    from transformers import AutoModel
    try:
        from transformers.initialization import no_init_weights
    except ImportError:   # transformers 4.x
        try:
            from transformers.modeling_utils import no_init_weights
        except ImportError:
            no_init_weights = contextlib.nullcontext
    cfg = _hf_config(arch, layers, 0, attn_dropout)
    vocab = _vocab_needed(tok)
    pad = getattr(cfg, 'pad_token_id', None)
    cfg.vocab_size = max(vocab, int(pad) + 1 if isinstance(pad, int) else 0)
    with no_init_weights():
        model = AutoModel.from_config(cfg)
    with torch.no_grad():
        for param in model.parameters():
            param.fill_(0.02)
    return model


def _apply_lora(model, lora: Dict[str, Any]):
    """LoRA as the bi-encoder trainer applies it (``training.dense``): peft, ``bias='none'``."""
    from peft import LoraConfig, get_peft_model
    cfg = LoraConfig(r=int(lora.get('r', 8)), lora_alpha=int(lora.get('alpha', 16)),
                     lora_dropout=float(lora.get('dropout', 0.0)),
                     target_modules=list(lora.get('target_modules', ['q_proj', 'v_proj'])), bias='none')
    return get_peft_model(model, cfg)


def _training_task(kind: str, arch: Arch, shapes: Dict[str, Any], layers: int, attn_dropout: bool):
    """The family's real training task around a ``layers``-layer model built from ``arch``'s config, on two
    synthetic queries whose texts fill the sequence limits."""
    import torch
    from ..training.examples import Group, TeacherList
    tok = _tokenizer(arch.decoder)
    docs = int(shapes['docs'])
    long_text = _text(2 * max(int(shapes.get('max_length', 0)), int(shapes.get('doc_maxlen', 0)), 64))
    # a cross-encoder truncates the passage only: its query is a typical one; separate query encodings fill their limit
    query = _text(int(shapes['query_words'])) if 'query_words' in shapes else _text(2 * int(shapes['query_max_length']))

    short_text = _text(max(8, int(shapes.get('max_length') or shapes.get('doc_maxlen') or 64) // 2))
    docnos = [f'd{j}' for j in range(docs)]

    def texts_of(asked):
        # the group's last passage is short: real batches are padded, which takes the attention-mask path
        return [short_text if d == docnos[-1] and docs > 1 else long_text for d in asked]
    enc = _build_encoder(arch, layers, tok, attn_dropout)
    if kind == 'cross-encoder':
        from ..models.crossencoder import CrossEncoder, CrossEncoderModel
        from ..training.crossencoder_task import CrossEncoderTask
        head = torch.nn.Linear(enc.config.hidden_size, 1)
        ce = CrossEncoder(CrossEncoderModel(enc, shapes.get('pooling', 'cls'), head), tok, name='plan', device='cpu')
        loss = shapes['loss']
        if loss == 'ranknet':
            items = [TeacherList(f'q{i}', query, list(docnos)) for i in range(2)]
        else:
            items = [Group(f'q{i}', query, [docnos[0]], docnos[1:] or [docnos[0]]) for i in range(2)]
        targets = {f'q{i}': {d: float(-j) for j, d in enumerate(docnos)} for i in range(2)}
        task = CrossEncoderTask(ce, loss, items, texts_of=texts_of, group_size=docs, queries_per_batch=2,
                                max_length=int(shapes['max_length']), targets=targets,
                                select=shapes.get('select') or 'random', loss_params=shapes.get('loss_params'))
        return task
    if kind == 'bi-encoder':
        from ..models.biencoder import BiEncoder
        from ..training.dense import BiEncoderTask
        qenc = None if shapes.get('shared', True) else _build_encoder(arch, layers, tok, attn_dropout)
        bienc = BiEncoder(enc, tok, pooling=shapes.get('pooling', 'cls'), query_model=qenc,
                          normalize=bool(shapes.get('normalize')), name='plan', max_length=int(shapes['max_length']),
                          query_max_length=int(shapes['query_max_length']), device='cpu')
        if shapes.get('lora'):
            bienc.model = _apply_lora(bienc.model, shapes['lora'])
            if bienc.query_model is not None:
                bienc.query_model = _apply_lora(bienc.query_model, shapes['lora'])
        groups = [Group(f'q{i}', query, [docnos[0]], docnos[1:] or [docnos[0]]) for i in range(2)]
        return BiEncoderTask(bienc, groups, texts_of=texts_of, negatives=docs - 1, queries_per_batch=2,
                             temperature=float(shapes.get('temperature', 0.05)))
    if kind == 'colbert':
        from ..models.colbert import ColBERTModel
        from ..training.colbert import ColBERTTask
        model = ColBERTModel(enc, tok, {'dim': int(shapes['dim']), 'query_maxlen': int(shapes['query_max_length']),
                                        'doc_maxlen': int(shapes['doc_maxlen'])})
        groups = [Group(f'q{i}', query, [docnos[0]], docnos[1:] or [docnos[0]]) for i in range(2)]
        teacher = {f'q{i}': {d: float(-j) for j, d in enumerate(docnos)} for i in range(2)}
        return ColBERTTask(model, groups, texts_of=texts_of, negatives=docs - 1, queries_per_batch=2,
                           loss=shapes.get('loss', 'infonce'), loss_params=shapes.get('loss_params'),
                           teacher=teacher, train_doc_maxlen=int(shapes['doc_maxlen']))
    raise KnowacqError(f'cannot plan a model of kind {kind!r}')


def _first_items(task, n: int) -> list:
    items = []
    for batch in task.batches(0, 0, 1):
        items.extend(batch)
        if len(items) >= n:
            break
    return items[:n]


def _task_activations(task, n: int) -> int:
    """Bytes autograd saves in the forward of ``task.loss`` on ``n`` queries (the backward is not run)."""
    from ..training.memory import activation_bytes
    from ..training.trainer import preserved_rng
    model = task.model
    model.train()
    batch = _first_items(task, n)
    params = list(model.parameters())
    with preserved_rng():
        nbytes, loss = activation_bytes(lambda: task.loss(model, batch)[0], exclude=params)
    del loss
    return int(nbytes)


def _quiet(fn):
    """Run ``fn`` without library warnings (deprecations of peft/transformers say nothing about the plan)."""
    import warnings
    from transformers.utils import logging as hf_logging
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            return fn()
    finally:
        hf_logging.set_verbosity(verbosity)


def measure_training(kind: str, arch: Arch, shapes: Dict[str, Any], *, attn_dropout: bool = True) -> Dict[str, Any]:
    """Saved-activation bytes of the family's real training task at (1 layer, 1 query), (1 layer, 2 queries) and
    (2 layers, 1 query), fp32 on this CPU, with ``shapes['docs']`` passages per query (cached).

    Returns ``{'a11', 'a12', 'a21', 'fixed', 'per_query', 'per_layer_query', 'tokens_per_query', 'seconds'}``:
    the batch-independent part, the per-query part of a 1-layer model and what each further layer adds per query.
    """
    def compute():
        started = time.perf_counter()
        task1 = _training_task(kind, arch, shapes, 1, attn_dropout)
        a11, a12 = _task_activations(task1, 1), _task_activations(task1, 2)
        del task1
        a21 = _task_activations(_training_task(kind, arch, shapes, 2, attn_dropout), 1)
        per_query = max(0, a12 - a11)
        return {'a11': a11, 'a12': a12, 'a21': a21, 'fixed': max(0, a11 - per_query), 'per_query': per_query,
                'per_layer_query': max(0, a21 - a11), 'tokens_per_query': _tokens_per_query(kind, shapes),
                'seconds': round(time.perf_counter() - started, 2)}
    cfg = _hf_config(arch)   # (the defaults of its config class included)
    has_dropout = any(float(getattr(cfg, k, 0) or 0) > 0 for k in ('attention_probs_dropout_prob', 'attention_dropout'))
    return _cached({'what': 'training', 'kind': kind, 'arch': arch.key(), 'shapes': shapes,
                    'attn_dropout': bool(attn_dropout and has_dropout)}, lambda: _quiet(compute))


def _tokens_per_query(kind: str, shapes: Dict[str, Any]) -> int:
    docs = int(shapes['docs'])
    if kind == 'cross-encoder':
        return docs * int(shapes['max_length'])
    doc_len = int(shapes['doc_maxlen'] if kind == 'colbert' else shapes['max_length'])
    return docs * doc_len + int(shapes['query_max_length'])


def measure_encoder(arch: Arch, length: int) -> Dict[str, Any]:
    """Activation bytes of the bare encoder's forward (eval mode, fp32, no attention dropout) per sequence of
    ``length`` tokens: ``{'per_seq', 'per_layer_seq'}`` from (1 layer, 1 and 2 sequences) and (2 layers, 1 sequence).
    Without gradients a forward holds about one layer of these at a time: the inference working memory."""
    def compute():
        import torch
        from ..training.memory import activation_bytes
        tok = _tokenizer(arch.decoder)
        out = {}
        for layers, sizes in ((1, (1, 2)), (2, (1,))):
            encoder = _build_encoder(arch, layers, tok, attn_dropout=False).eval()
            for n in sizes:
                ids = torch.randint(0, encoder.config.vocab_size, (n, int(length)))

                def forward(m=encoder, ids=ids):
                    return m(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state.sum()
                nbytes, res = activation_bytes(forward, exclude=list(encoder.parameters()))
                del res
                out[(layers, n)] = int(nbytes)
            del encoder
        return {'per_seq': max(0, out[(1, 2)] - out[(1, 1)]), 'per_layer_seq': max(0, out[(2, 1)] - out[(1, 1)])}
    return _cached({'what': 'encoder', 'arch': arch.key(), 'length': int(length)}, lambda: _quiet(compute))


def activation_estimate(measure: Dict[str, Any], layers: int, batch: int, *, docs: int, docs_measured: int,
                        factor: float = 1.0, checkpoint_bytes_per_query: float = 0.0) -> float:
    """Activation bytes of a step with ``layers`` trainable layers and ``batch`` queries of ``docs`` passages,
    scaled linearly from :func:`measure_training` (``factor``: bf16 / fp32; with gradient checkpointing, each layer
    above the first keeps ``checkpoint_bytes_per_query`` instead of its activations)."""
    scale = docs / max(1, docs_measured)
    layers = max(0, int(layers))
    first = max(0.0, measure['per_query'] - (measure['per_layer_query'] if layers == 0 else 0))
    if checkpoint_bytes_per_query:
        per_query = factor * scale * first + scale * max(0, layers - 1) * checkpoint_bytes_per_query
    else:
        per_query = factor * scale * (first + max(0, layers - 1) * measure['per_layer_query'])
    return factor * measure['fixed'] + int(batch) * per_query


# ------------------------------------------------------------------------------------------------------ model specs
def _normalised_spec(kind: str, spec: Dict[str, Any]) -> Dict[str, Any]:
    spec = copy.deepcopy(dict(spec or {}))
    spec.pop('kind', None)
    if kind == 'colbert':
        from ..training.colbert import validate_colbert_spec
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


def _plan_training(name: str, kind: str, spec: Dict[str, Any], ctx: _Ctx) -> Dict[str, Any]:
    """One trained model: per stage its measured activations, peak, micro-batch, FLOPs; the model's disk."""
    from ..training.memory import fit_micro_batch, peak_bytes
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


def _worst(values) -> str:
    values = list(values)
    return 'no' if 'no' in values else 'tight' if 'tight' in values else 'yes'


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


#: queries of released teacher files that cannot be read here (matched on the file name)
KNOWN_TEACHERS = {'marco-train-100k': 100_000}


def _training_queries(st: Dict[str, Any], spec: Dict[str, Any], ctx: _Ctx) -> Tuple[Optional[int], str]:
    data = st.get('data') or {}
    val = int((spec.get('validation') or {}).get('queries', 0) or 0)
    teacher = data.get('teacher') if st.get('loss') == 'ranknet' else None
    if teacher:
        teachers = [teacher] if isinstance(teacher, str) else list(teacher)
        qids = set()
        for t in teachers:
            path = Path(str(t)).expanduser()
            if path.is_file():
                qids |= _run_qids(path)
                continue
            known = next((n for k, n in KNOWN_TEACHERS.items() if k in str(t)), None)
            if known is not None:
                return known - val, f'the released {Path(str(t)).name} covers about {known:,} queries'
            ds, split = ctx.datasets.get('train') or (None, None)
            if ds is not None:
                try:
                    qids |= set(ds.get_run(str(t), split)['qid'].astype(str))
                    continue
                except Exception:  # noqa: BLE001 - not a run of the dataset: counted as the whole split below
                    pass
            break
        else:
            return len(qids) - val, 'teacher run counted'
    count, source = _judged_train_queries(ctx)
    return (None if count is None else count - val), source


def _run_qids(path: Path) -> set:
    import gzip
    opener = gzip.open if path.suffix == '.gz' else open
    qids = set()
    with opener(path, 'rt', encoding='utf-8', errors='replace') as f:
        for line in f:
            qids.add(line.split(None, 1)[0] if line.strip() else '')
    qids.discard('')
    return qids


# ------------------------------------------------------------------------------------------------------- data sizes
#: sizes of well-known ir_datasets ids: ``docs`` (corpora, by the id that provides the documents) with their mean
#: words and characters per document; ``queries``: the queries with qrels (what the runner evaluates / trains on)
KNOWN_SIZES: Dict[str, Dict[str, int]] = {
    'msmarco-passage': {'docs': 8_841_823, 'doc_words': 56, 'doc_chars': 335},
    'msmarco-passage/train': {'queries': 502_939},
    'msmarco-passage/train/judged': {'queries': 502_939},
    'msmarco-passage/dev/small': {'queries': 6_980},
    'msmarco-passage/dev/judged': {'queries': 55_578},
    'msmarco-passage/trec-dl-2019': {'queries': 43},
    'msmarco-passage/trec-dl-2019/judged': {'queries': 43},
    'msmarco-passage/trec-dl-2020': {'queries': 54},
    'msmarco-passage/trec-dl-2020/judged': {'queries': 54},
    'msmarco-passage/trec-dl-hard': {'queries': 50},
    'dpr-w100': {'docs': 21_015_324, 'doc_words': 103, 'doc_chars': 600},
    'dpr-w100/natural-questions/train': {'queries': 58_880},
    'dpr-w100/natural-questions/dev': {'queries': 6_515},
}


def _irds_sizes(ds) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    own, parent = KNOWN_SIZES.get(ds.irds_id, {}), KNOWN_SIZES.get(ds.docs_parent, {})
    if 'queries' in own:
        out['queries'], out['queries_source'] = own['queries'], 'known'
    if 'docs' in parent:
        out.update(docs=parent['docs'], doc_words=parent['doc_words'], doc_chars=parent['doc_chars'],
                   docs_source='known')
    try:
        if 'queries' not in out:
            out['queries'], out['queries_source'] = int(ds._ds.queries_count()), 'ir_datasets metadata (all queries)'
    except Exception:  # noqa: BLE001
        pass
    try:
        if 'docs' not in out:
            out.update(docs=int(ds._ds.docs_count()), doc_words=100, doc_chars=600,
                       docs_source='ir_datasets metadata (length assumed 100 words)')
    except Exception:  # noqa: BLE001
        pass
    return out


_CORPORA: Dict[str, Dict[str, Any]] = {}


def _sizes(ds, split) -> Dict[str, Any]:
    """``{'queries', 'docs', 'doc_words', 'doc_chars', ...}`` of a test (or training) collection."""
    from ..datasets.core import IrdsDataset
    if isinstance(ds, IrdsDataset) and getattr(ds, 'irds_id', None):   # never iterate an ir_datasets corpus
        return _irds_sizes(ds)
    out: Dict[str, Any] = {}
    try:
        topics, qrels = ds.get_topics(split), ds.get_qrels(split)
        out['queries'] = int(topics['qid'].astype(str).isin(set(qrels['qid'].astype(str))).sum())
        out['queries_source'] = 'counted'
        out['query_words'] = float(topics['query'].astype(str).str.split().str.len().mean())
    except Exception:  # noqa: BLE001
        pass
    try:
        key = ds.corpus_fingerprint()   # content-keyed (file digests are remembered), so a count is made once
    except Exception:  # noqa: BLE001
        key = ds.corpus_name
    if key not in _CORPORA:
        def count():
            n = words = chars = 0
            try:
                for d in ds.get_corpus_iter():
                    n += 1
                    text = d.get('text') or ''
                    words += len(text.split())
                    chars += len(text)
            except Exception:  # noqa: BLE001 - an unreadable corpus: no sizes, the plan says so
                pass
            return {'docs': n, 'doc_words': words / max(1, n), 'doc_chars': chars / max(1, n),
                    'docs_source': 'counted'} if n else {}
        _CORPORA[key] = _cached({'what': 'corpus', 'corpus': key}, count) if key != ds.corpus_name else count()
    out.update(_CORPORA[key])
    return out


def _judged_train_queries(ctx: _Ctx) -> Tuple[Optional[int], str]:
    ds, split = ctx.datasets.get('train') or (None, None)
    if ds is None:
        return None, 'no training split'
    s = _sizes(ds, split)
    if s.get('queries') is None:
        return None, 'training queries unknown'
    where = f'{ds.name}:{split}' if split else ds.name
    return int(s['queries']), f'{s.get("queries_source", "counted")} judged queries of {where}'


def _doc_tokens(s: Dict[str, Any]) -> float:
    return float(s.get('doc_words') or 100) * TOKENS_PER_WORD + 2


# ------------------------------------------------------------------------------------------------------- inference
def _model_of(name: str, ctx: _Ctx) -> Tuple[str, Optional[Dict[str, Any]]]:
    """``(backbone, spec)`` of a stage's ``model=``: a trained model of the file (its spec), else the name."""
    models = ctx.config.get('models') or {}
    if name in models:
        spec = dict(models[name] or {})
        kind = spec.get('kind', 'cross-encoder')
        return _spec_backbone(kind, _normalised_spec(kind, spec)), {**spec, 'kind': kind}
    return name, None


def _inference_model(stage, ctx: _Ctx) -> Dict[str, Any]:
    """Memory and per-token FLOPs of the model a re-ranking/encoding stage loads."""
    from ..models.backbones import paired_query_encoder
    name = str(stage.params.get('model', 'colbert-ir/colbertv2.0' if stage.name.startswith('colbert') else ''))
    backbone, spec = _model_of(name, ctx)
    arch = architecture(backbone)
    counts = param_counts(arch)
    encoders = 1
    if spec is not None and spec['kind'] == 'bi-encoder' and not spec.get('shared', True):
        encoders = 2
    elif spec is None and stage.name in ('dense', 'biencoder') and paired_query_encoder(name):
        encoders = 2
    colbert = stage.name.startswith('colbert')
    half = colbert and ctx.device.gpu
    dim = (spec or {}).get('dim') or arch.colbert_dim or 128
    params = counts['total'] * encoders + (arch.hidden * dim if colbert else 0)
    if colbert:
        length = int(stage.params.get('doc_maxlen') or (spec or {}).get('doc_maxlen') or 180)
    else:
        length = int(stage.params.get('max_length') or (256 if stage.name in ('dense', 'biencoder') else 512))
    batch = int(stage.params.get('batch_size') or 32)
    m = measure_encoder(arch, length)
    working = batch * m['per_layer_seq'] * (0.5 if half else 1.0)
    return {'model': name, 'backbone': backbone, 'architecture': arch.label(), 'arch': arch, 'params': int(params),
            'weights_bytes': params * (2 if half else 4), 'working_bytes': working, 'length': length, 'batch': batch,
            'dense_params': (counts['total'] - counts['embedding'] - counts['pooler']
                             + (arch.hidden * dim if colbert else 0)),
            'half': half, 'dim': dim if colbert else arch.hidden}


def _flops(model: Dict[str, Any], tokens: float, length: float) -> float:
    arch = model['arch']
    return tokens * (2 * model['dense_params'] + 4 * arch.layers * length * arch.hidden)


def _plan_system(name: str, spec, ctx: _Ctx, indexes: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """One system: the models its stages load (memory), and per collection its candidates and FLOPs."""
    from .config import runs_on
    from .expressions import parse_pipeline
    expr = spec['pipeline'] if isinstance(spec, dict) else spec
    stages = parse_pipeline(expr)
    row = {'name': name, 'pipeline': expr, 'models': [], 'notes': [], 'collections': {}}
    models = []
    for st in stages:
        if st.name in ('ce', 'biencoder', 'dense', 'colbert', 'colbert_retrieve'):
            try:
                models.append((st, _inference_model(st, ctx)))
            except KnowacqError as e:
                row['notes'].append(str(e))
    weights = sum(m['weights_bytes'] for _, m in models)
    working = max([m['working_bytes'] for _, m in models] or [0])
    row['models'] = [{k: v for k, v in m.items() if k != 'arch'} for _, m in models]
    row['peak_bytes'] = int(weights + working)
    row['fits'] = 'yes' if row['peak_bytes'] <= ctx.device.budget_bytes else (
        'tight' if row['peak_bytes'] <= ctx.device.memory_bytes else 'no')
    if row['fits'] == 'no':
        row['notes'].append(f'system {name!r} needs about {row["peak_bytes"] / GIB:.1f} GiB for its models at '
                            f'inference but {ctx.device.key} has {ctx.device.memory_bytes / GIB:.1f} GiB; lower '
                            'batch_size or use smaller models')
    by_stage = {id(st): m for st, m in models}
    if not ctx.sizes:
        row['seconds'] = None
        return row
    total = 0.0
    rerank_depth = ctx.config.get('rerank_depth')
    for fold, (test_ds, split) in ctx.datasets.get('tests', []):
        if not runs_on(spec, fold.folder):
            continue
        s = _sizes(test_ds, split)
        queries = int(s.get('queries') or 0)
        d_tok = _doc_tokens(s)
        q_tok = QUERY_TOKENS
        depth = None
        flops = {'bf16': 0.0, 'fp32': 0.0}
        for i, st in enumerate(stages):
            p = st.params
            m = by_stage.get(id(st))
            if st.name in ('bm25', 'terrier_bm25'):
                depth = int(p.get('k', 1000))
                _add_index(indexes, 'pisa' if st.name == 'bm25' else 'terrier', test_ds, s, None, name)
            elif st.name == 'run':
                depth = int(p['k']) if p.get('k') else _run_depth(test_ds, str(p.get('name', 'bm25')), split)
            elif st.name in ('dense', 'colbert_retrieve') and m is not None:
                depth = int(p.get('k', 1000))
                length = min(m['length'], d_tok)
                key = _add_index(indexes, st.name, test_ds, s, m, name)
                if key is not None:   # the corpus is encoded once per (corpus, model)
                    flops['bf16' if m['half'] else 'fp32'] += _flops(m, s.get('docs', 0) * length, length)
                flops['bf16' if m['half'] else 'fp32'] += _flops(m, queries * q_tok, q_tok)
            elif st.name in ('ce', 'biencoder', 'colbert') and m is not None:
                cands = queries * (depth or 0)
                if st.name == 'ce':
                    length = min(m['length'], q_tok + d_tok + 1)
                    flops['fp32'] += _flops(m, cands * length, length)
                else:
                    length = min(m['length'], d_tok)
                    flops['bf16' if m['half'] else 'fp32'] += _flops(m, cands * length, length) + \
                        _flops(m, queries * (32 if m['half'] or st.name == 'colbert' else q_tok), q_tok)
            if i == 0 and rerank_depth and len(stages) > 1 and st.cutoff is None and depth:
                depth = min(depth, int(rerank_depth))
            if st.cutoff is not None and depth:
                depth = min(depth, int(st.cutoff))
        rate_h = ctx.device.bf16_flops if ctx.device.gpu else ctx.device.fp32_flops
        seconds = flops['bf16'] / rate_h + flops['fp32'] / ctx.device.fp32_flops if rate_h else 0.0
        row['collections'][fold.folder] = {'queries': queries, 'flops': flops['bf16'] + flops['fp32'],
                                           'seconds': seconds}
        total += seconds
    row['seconds'] = total
    row['disk_bytes'] = sum(ix['bytes'] for ix in indexes.values() if name in ix['systems'] and ix['first'] == name)
    return row


def _run_depth(ds, name: str, split) -> int:
    try:
        run = ds.get_run(name, split)
        return int(run.groupby('qid').size().max())
    except Exception:  # noqa: BLE001 - a run that cannot be read here: TREC's usual depth
        return 1000


def _add_index(indexes, kind: str, ds, s: Dict[str, Any], model: Optional[Dict[str, Any]],
               system: str) -> Optional[str]:
    """Record an index a system builds; returns its key when it is new (built by this system)."""
    key = f'{kind}|{ds.corpus_name}|{model["model"] if model else ""}|{model["length"] if model else ""}'
    if key in indexes:
        if system not in indexes[key]['systems']:
            indexes[key]['systems'].append(system)
        return None
    docs = int(s.get('docs') or 0)
    if kind in ('pisa', 'terrier'):
        size = PISA_FRACTION * docs * float(s.get('doc_chars') or 600)
        label = f'{"PISA" if kind == "pisa" else "Terrier"} BM25 of {ds.corpus_name}'
    elif kind == 'dense':
        size = docs * model['dim'] * 4 + docs * 12
        label = f'dense FlexIndex of {ds.corpus_name} by {model["model"]}'
    else:
        tokens = docs * min(model['length'], _doc_tokens(s))
        size = tokens * (model['dim'] * 2 + COLBERT_TOKEN_OVERHEAD) + docs * 16
        label = f'ColBERT index of {ds.corpus_name} by {model["model"]}'
    indexes[key] = {'index': label, 'kind': kind, 'docs': docs, 'bytes': int(size), 'systems': [system],
                    'first': system}
    return key


# -------------------------------------------------------------------------------------------------------- analysis
def _plan_analysis(section: Dict[str, Any], ctx: _Ctx, trained_specs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    rows = []
    length = int(section.get('max_length', 128))
    batch = int(section.get('batch_size', 32))
    for gname, group in (section.get('groups') or {}).items():
        names = [group.get('backbone')]
        merged = []
        for cname, entry in (group.get('compare') or {}).items():
            if isinstance(entry, dict) and 'spec' in entry:
                names.append(entry['spec'].get('backbone'))
            elif isinstance(entry, dict) and 'adapter' in entry:
                names.append(entry.get('base') or entry.get('adapter'))
                merged.append(entry.get('adapter'))
            elif isinstance(entry, dict):
                names += [entry.get('query'), entry.get('doc')]
            else:
                names.append(entry)
        worst, notes = None, []
        for n in dict.fromkeys(str(x) for x in names if x):
            try:
                arch = architecture(n)
            except KnowacqError as e:
                notes.append(str(e))
                continue
            counts = param_counts(arch)
            m = measure_encoder(arch, length)
            states = (arch.layers + 1) * batch * length * arch.hidden * 4   # output_hidden_states
            peak = counts['total'] * 4 + batch * m['per_layer_seq'] + states
            if worst is None or peak > worst[1]:
                worst = (n, peak)
        disk = 0
        for adapter in merged:
            try:
                disk += param_counts(architecture(str(adapter)))['total'] * 4   # the merged model, cached in fp32
            except KnowacqError:
                pass
        peak = int(worst[1]) if worst else 0
        rows.append({'name': f'analysis {gname}', 'largest_model': worst[0] if worst else None, 'peak_bytes': peak,
                     'batch_size': batch, 'max_length': length, 'disk_bytes': disk,
                     'fits': _fits(peak, ctx.device, False),
                     'seconds': None, 'notes': notes})
    return rows


def _analysis_specs(config: Dict[str, Any]) -> List[Tuple[str, Dict[str, Any]]]:
    """The analysis' own ``{spec: ...}`` models that are not also one of the file's ``models:`` (same spec)."""
    section = config.get('analysis') or {}
    known = [dict(s or {}) for s in (config.get('models') or {}).values()]
    out = []
    for gname, group in (section.get('groups') or {}).items() if isinstance(section, dict) else ():
        for cname, entry in (group.get('compare') or {}).items():
            if isinstance(entry, dict) and isinstance(entry.get('spec'), dict):
                spec = {**entry['spec'], 'pooling': entry['spec'].get('pooling', group.get('pooling'))}
                spec.setdefault('kind', 'bi-encoder')
                if spec not in known and entry['spec'] not in known and spec not in [s for _, s in out]:
                    out.append((f'analysis {gname}/{cname}', spec))
    return out


# ------------------------------------------------------------------------------------------------------------ plan
def make_plan(source, gpu: Optional[str] = 'auto', *, sizes: bool = True, echo: bool = False) -> Dict[str, Any]:
    """The plan of an experiment file (or an already-read config mapping) on ``gpu``.

    ``sizes=False`` computes memory only (no data is counted, no times): what ``knowacq run`` checks before work.
    Returns a JSON-serialisable mapping (see :func:`format_plan`).
    """
    from .config import MODEL_TRAINERS, load_config
    started = time.perf_counter()
    if isinstance(source, dict):
        config, path = source, None
    else:
        path = str(source)
        config = load_config(source)
    device = device_spec(gpu, flops=sizes)
    ctx = _Ctx(device, sizes, config, path)
    if sizes:
        _datasets(ctx)
    models, problems = [], []
    specs = [(n, dict(s or {})) for n, s in (config.get('models') or {}).items()] + _analysis_specs(config)
    for name, spec in specs:
        kind = spec.get('kind', 'cross-encoder')
        if kind not in MODEL_TRAINERS:
            continue
        if echo:
            print(f'[knowacq] plan: measuring {name} ...', flush=True)
        try:
            row = _plan_training(name, kind, spec, ctx)
        except KnowacqError as e:
            row = {'name': name, 'kind': kind, 'error': str(e), 'fits': 'unknown', 'notes': [str(e)]}
        models.append(row)
        if row.get('fits') == 'no':
            problems += [n for n in row['notes'] if 'needs about' in n][:1] or [f'model {name!r} does not fit']
    _share_stages(models)
    indexes: Dict[str, Dict[str, Any]] = {}
    systems = []
    for name, spec in (config.get('systems') or {}).items():
        try:
            row = _plan_system(name, spec, ctx, indexes)
        except KnowacqError as e:
            row = {'name': name, 'error': str(e), 'fits': 'unknown', 'notes': [str(e)]}
        systems.append(row)
        if row.get('fits') == 'no':
            problems += [n for n in row['notes'] if 'needs about' in n][:1]
    analysis = []
    if isinstance(config.get('analysis'), dict):
        analysis = _plan_analysis(config['analysis'], ctx, [s for _, s in specs])
        for row in analysis:
            if row['fits'] == 'no':
                problems.append(f'{row["name"]} needs about {row["peak_bytes"] / GIB:.1f} GiB for '
                                f'{row["largest_model"]} but {device.key} has {device.memory_bytes / GIB:.1f} GiB; '
                                'lower its batch_size or max_length')
    if sizes:
        _pisa_for_training(ctx, indexes)
    plan = {'format': FORMAT, 'file': path, 'experiment': config.get('name'), 'device': asdict(device),
            'budget_bytes': int(device.budget_bytes),
            'assumptions': {'budget_fraction': BUDGET_FRACTION, 'bf16_activation_factor': BF16_ACTIVATION_FACTOR,
                            'doc_cap': DOC_CAP, 'tokens_per_word': TOKENS_PER_WORD, 'query_tokens': QUERY_TOKENS,
                            'cpu_mfu': CPU_MFU, 'pisa_fraction': PISA_FRACTION,
                            'cpu_gflops_measured': round(_CPU_GFLOPS, 1) if _CPU_GFLOPS else None},
            'datasets': ctx.datasets.get('summary', {}), 'models': models, 'systems': systems, 'analysis': analysis,
            'indexes': list(indexes.values()), 'problems': problems, 'fits': not problems, 'notes': ctx.notes}
    if sizes:
        # seeds: every trained model is trained, and every system that loads one is run, once per seed
        n_seeds = len(config['seeds']) if isinstance(config.get('seeds'), list) and config['seeds'] else 1
        trained = set(config.get('models') or {})
        uses = {r['name']: any(m.get('model') in trained for m in r.get('models') or []) for r in systems}
        train_s = n_seeds * sum(r.get('seconds') or 0 for r in models)
        infer_s = sum((n_seeds if uses[r['name']] else 1) * (r.get('seconds') or 0) for r in systems)
        disk = n_seeds * sum(r.get('disk_bytes') or 0 for r in models) + sum(ix['bytes'] for ix in indexes.values()) + \
            sum(r.get('disk_bytes') or 0 for r in analysis)
        if n_seeds > 1:
            ctx.note(f'{n_seeds} seeds: training, checkpoints and the systems that load a trained model count '
                     f'{n_seeds} times in the totals (the rows show one seed)')
        plan['totals'] = {'training_seconds': train_s, 'inference_seconds': infer_s, 'seconds': train_s + infer_s,
                          'disk_bytes': int(disk),
                          'disk_peak_bytes': int(disk + max([r.get('disk_peak_bytes', 0) - r.get('disk_bytes', 0)
                                                             for r in models] or [0]))}
    plan['measure_seconds'] = round(ctx.measured_s, 1)
    plan['plan_seconds'] = round(time.perf_counter() - started, 1)
    return plan


def _share_stages(models: List[Dict[str, Any]]) -> None:
    """A stage another model trains first (same spec prefix) is trained once: its time and checkpoint count there."""
    owner: Dict[str, Tuple[str, int]] = {}
    for row in models:
        shared = []
        for st in row.get('stages') or []:
            if st.get('key') in owner:
                st['shared_with'] = owner[st['key']]
                shared.append(st)
            else:
                owner[st['key']] = (row['name'], st['stage'])
        if not shared:
            continue
        row['seconds'] = None if row.get('seconds') is None else sum(s['seconds'] or 0 for s in row['stages']
                                                                     if 'shared_with' not in s)
        row['disk_bytes'] = max(0, row['disk_bytes'] - len(shared) * row['checkpoint_bytes'])
        row['disk_peak_bytes'] = max(0, row['disk_peak_bytes'] - len(shared) * row['checkpoint_bytes'])
        for st in shared:
            row['notes'].append(f'stage {st["stage"]} is {st["shared_with"][0]}\'s stage {st["shared_with"][1]}, '
                                'trained once (time and disk counted there)')


def _datasets(ctx: _Ctx) -> None:
    from ..datasets.core import get_dataset
    from .config import _fold_data, folds_of
    config = ctx.config
    try:
        dataset = get_dataset(config['dataset'])
        folds = folds_of(config, ctx.path or '<config>')
    except Exception as e:  # noqa: BLE001
        ctx.note(f'data sizes not counted ({e})')
        return
    tests, summary = [], {}
    train = None
    for fold in folds:
        try:
            test = fold.test_data(dataset)
            tests.append((fold, test))
            s = _sizes(*test)
            summary[fold.folder] = {'dataset': test[0].name, 'split': test[1], 'queries': s.get('queries'),
                                    'docs': s.get('docs'), 'mean_doc_tokens': round(_doc_tokens(s), 1),
                                    'source': s.get('queries_source')}
        except Exception as e:  # noqa: BLE001
            ctx.note(f'{fold.folder}: sizes not counted ({e})')
        if fold.train is not None and train is None:
            try:
                train = _fold_data(dataset, fold.train)
            except Exception:  # noqa: BLE001
                pass
    ctx.datasets.update(tests=tests, summary=summary)
    if train is not None:
        ctx.datasets['train'] = train
        s = _sizes(*train)
        summary['train'] = {'dataset': train[0].name, 'split': train[1], 'queries': s.get('queries'),
                            'docs': s.get('docs'), 'source': s.get('queries_source')}


def _pisa_for_training(ctx: _Ctx, indexes) -> None:
    """Training data drawn from ``run: bm25`` on a dataset that ships no BM25 run builds a PISA index of its corpus."""
    ds, split = ctx.datasets.get('train') or (None, None)
    if ds is None:
        return
    needs = False
    for spec in (ctx.config.get('models') or {}).values():
        spec = spec or {}
        datas = [spec.get('data') or {}] + [st.get('data') or {} for st in spec.get('stages') or []]
        needs |= any(d.get('run', 'bm25') == 'bm25' and not d.get('teacher') for d in datas if isinstance(d, dict))
    if needs and 'bm25' not in [n.split(':')[0] for n in (ds.run_names(split) or [])]:
        _add_index(indexes, 'pisa', ds, _sizes(ds, split), None, 'training data (run: bm25)')


# ---------------------------------------------------------------------------------------------------------- output
def _gib(n) -> str:
    return '-' if n is None else f'{n / GIB:.1f}'


def _size(n) -> str:
    if not n:
        return '-'
    for unit, div in (('TB', 1e12), ('GB', 1e9), ('MB', 1e6)):
        if n >= div:
            return f'{n / div:.1f} {unit}'
    return f'{n / 1e3:.0f} kB'


def _duration(s) -> str:
    if s is None:
        return '-'
    if s < 90:
        return f'{s:.0f} s'
    if s < 5400:
        return f'{s / 60:.0f} min'
    if s < 2 * 86400:
        return f'{s / 3600:.1f} h'
    return f'{s / 86400:.1f} d'


def _params(n) -> str:
    return f'{n / 1e9:.2f}B' if n >= 1e9 else f'{n / 1e6:.0f}M' if n >= 1e6 else f'{n / 1e3:.0f}k'


def _table(head: List[str], rows: List[List[str]], right: set) -> List[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    fmt = lambda r: '  ' + '  '.join(str(x).rjust(w) if i in right else str(x).ljust(w)   # noqa: E731
                                     for i, (x, w) in enumerate(zip(r, widths))).rstrip()
    return [fmt(head)] + [fmt(r) for r in rows]


def format_plan(plan: Dict[str, Any]) -> str:
    """The plan as readable tables: training per model, inference per system, indexes, totals and notes."""
    d = plan['device']
    lines = [f'knowacq plan {plan.get("file") or plan.get("experiment")} --gpu {d["key"]}',
             f'device: {d["name"]}, {d["memory_bytes"] / GIB:.1f} GiB (a training step may use '
             f'{int(BUDGET_FRACTION * 100)}%: {plan["budget_bytes"] / GIB:.1f} GiB); '
             + (f'training in bf16 autocast at {d["bf16_flops"] / 1e12:.0f} TFLOP/s, fp32 inference at '
                f'{d["fp32_flops"] / 1e12:.0f} TFLOP/s (sustained)' if d['gpu'] else
                f'fp32 at {d["fp32_flops"] / 1e9:.0f} GFLOP/s (half of the measured '
                f'{plan["assumptions"]["cpu_gflops_measured"] or 0:.0f} GFLOP/s matmul rate)')]
    if plan.get('datasets'):
        parts = []
        for coll, s in plan['datasets'].items():
            docs = f', {s["docs"]:,} passages' if s.get('docs') else ''
            parts.append(f'{coll}: {s["queries"]:,} queries{docs}' if s.get('queries') is not None else f'{coll}: ?')
        lines.append('data: ' + '; '.join(parts))
    if plan['models']:
        rows = []
        for r in plan['models']:
            if r.get('error'):
                rows.append([r['name'], '?', '?', '?', '?', '?', '?', 'unknown'])
                continue
            params = f'{r["architecture"]}, {_params(r["params"])} ({_params(r["trainable_params"])} trained)'
            rows.append([r['name'], params, ' / '.join(s['loss'] for s in r['stages']), _gib(r['peak_bytes']),
                         f'{r["micro_batch"]} x {r["accumulation"]}', _duration(r.get('seconds')),
                         _size(r.get('disk_bytes')), r['fits']])
        lines += ['', 'TRAINING (per model; peak of one step at the micro-batch shown)']
        head = ['model', 'architecture, params', 'loss', 'peak GiB', 'micro x accum', 'est. time', 'disk', 'fits']
        lines += _table(head, rows, {3, 4, 5, 6})
    if plan['systems']:
        rows = []
        for r in plan['systems']:
            if r.get('error'):
                rows.append([r['name'], '?', '?', '?', '?', 'unknown'])
                continue
            colls = r.get('collections') or {}
            q = sum(c['queries'] for c in colls.values())
            rows.append([r['name'], _gib(r['peak_bytes']), f'{len(colls)} / {q:,}' if colls else '-',
                         _duration(r.get('seconds')), _size(r.get('disk_bytes')), r['fits']])
        lines += ['', 'INFERENCE (per system, every collection it runs on)']
        head = ['system', 'peak GiB', 'collections / queries', 'est. time', 'disk', 'fits']
        lines += _table(head, rows, {1, 2, 3, 4})
    if plan.get('analysis'):
        rows = [[r['name'], r.get('largest_model') or '?', _gib(r['peak_bytes']),
                 f'{r["batch_size"]} x {r["max_length"]}', _size(r.get('disk_bytes')), r['fits']]
                for r in plan['analysis']]
        lines += ['', 'ANALYSIS (encoding with every hidden state kept; time not estimated)']
        lines += _table(['group', 'largest model', 'peak GiB', 'batch x length', 'disk', 'fits'], rows, {2, 3, 4})
    if plan.get('indexes'):
        rows = [[ix['index'], f'{ix["docs"]:,}', _size(ix['bytes']), ', '.join(ix['systems'][:2]) +
                 (f' (+{len(ix["systems"]) - 2})' if len(ix['systems']) > 2 else '')] for ix in plan['indexes']]
        lines += ['', 'INDEXES (built once, cached)']
        lines += _table(['index', 'documents', 'disk', 'used by'], rows, {1, 2})
    if plan.get('totals'):
        t = plan['totals']
        lines += ['', f'total: training {_duration(t["training_seconds"])} + inference '
                      f'{_duration(t["inference_seconds"])} = {_duration(t["seconds"])} of {d["key"]} compute; disk '
                      f'{_size(t["disk_bytes"])} kept (peak while training {_size(t["disk_peak_bytes"])})']
    notes = list(plan.get('problems') or [])
    for r in plan['models'] + plan['systems'] + plan.get('analysis', []):
        notes += [f'{r["name"]}: {n}' for n in r.get('notes', []) if n not in notes and 'needs about' not in n]
    for r in plan['models']:
        for s in r.get('stages', []):
            if s.get('steps_source') not in (None, 'steps'):
                notes.append(f'{r["name"]} stage {s["stage"]}: {s["steps"]:,} steps = {s["steps_source"]}'
                             if s.get('steps') else f'{r["name"]} stage {s["stage"]}: steps {s["steps_source"]}')
    notes += plan.get('notes') or []
    verdict = 'yes, every model and system fits' if plan['fits'] else f'NO - {len(plan["problems"])} problem(s)'
    lines += ['', f'fits: {verdict}']
    if notes:
        lines += ['notes:'] + [f'  - {n}' for n in dict.fromkeys(notes)]
    lines.append(f'(activations measured on this CPU in {plan["measure_seconds"]:.0f} s of {plan["plan_seconds"]:.0f} '
                 's; times are FLOP estimates without data preparation; assumptions: pyterrier_knowacq/planning.py)')
    return '\n'.join(lines)


# ------------------------------------------------------------------------------------------------------ run check
class PlanRefused(KnowacqError):
    """The experiment cannot fit this machine's device; ``flag`` names how to run it anyway (``force=True`` in
    Python; the command line says ``--force``)."""

    def __init__(self, message: str, flag: str = 'force=True'):
        super().__init__(message)
        self.flag = flag


def check_plan(config: Dict[str, Any], *, force: bool = False, gpu: Optional[str] = 'auto', echo: bool = True):
    """Before ``knowacq run`` does any work: the memory part of the plan on this machine's device. Raises
    :class:`PlanRefused` (one line: what does not fit, the fix, and ``force``) unless ``force``; a plan that cannot be
    made (an unknown architecture, a missing package) is a warning, never a refusal. Returns the plan or ``None``."""
    import sys
    try:
        plan = make_plan(config, gpu, sizes=False)
    except Exception as e:  # noqa: BLE001 - planning must never stop a run that could work
        if echo:
            why = ' '.join(str(e).split())[:200]
            print(f'[knowacq] warning: the memory plan was skipped ({type(e).__name__}: {why})', file=sys.stderr,
                  flush=True)
        return None
    if plan['problems']:
        device = plan['device']
        text = (f'the plan does not fit {device["name"]} ({device["memory_bytes"] / GIB:.1f} GiB): '
                + '; '.join(plan['problems']) + ' (knowacq plan FILE shows the details)')
        if not force:
            raise PlanRefused(f'{text}; pass force=True to run anyway')
        if echo:
            print(f'[knowacq] warning: {text}: running anyway (--force)', file=sys.stderr, flush=True)
    elif echo:
        peaks = [r['peak_bytes'] for r in plan['models'] + plan['systems'] if r.get('peak_bytes')]
        if peaks:
            print(f'[knowacq] plan: every model and system fits {plan["device"]["name"]} (largest step '
                  f'{max(peaks) / GIB:.1f} GiB of {plan["device"]["memory_bytes"] / GIB:.1f})', flush=True)
    return plan
