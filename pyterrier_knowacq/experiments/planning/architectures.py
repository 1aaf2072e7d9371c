"""Model architectures without the hub: a local folder, a packaged alias, the local Hugging Face cache, else the
configs of the seed models (:data:`KNOWN_CONFIGS`); parameter counts from the full model built on the ``meta`` device.

Example::

    arch = architecture('meta-llama/Llama-2-7b-hf')      # Arch(..., source='registry')
    arch.label(), param_counts(arch)['total']            # ('llama 32x4096', 6607343616)
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..._registry import Registry
from ..._util import KnowacqError
from ..model_names import is_hub_id, random_base


_BERT_BASE = {'model_type': 'bert', 'vocab_size': 30522, 'hidden_size': 768, 'num_hidden_layers': 12,
              'num_attention_heads': 12, 'intermediate_size': 3072, 'max_position_embeddings': 512,
              'type_vocab_size': 2}
_LLAMA2_7B = {'model_type': 'llama', 'vocab_size': 32000, 'hidden_size': 4096, 'num_hidden_layers': 32,
              'num_attention_heads': 32, 'num_key_value_heads': 32, 'intermediate_size': 11008,
              'max_position_embeddings': 4096, 'rms_norm_eps': 1e-5}
_LORA_ALL = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']

#: configs of the seed models, used when a config cannot be read locally (the hub is not asked). ``colbert_dim``: a
#: ColBERT projection; ``adapter``: a LoRA adapter ``{base, r, target_modules}`` merged into its base.
KNOWN_CONFIGS: Registry[Dict[str, Any]] = Registry('known model config')
KNOWN_CONFIGS.update({
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
})
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
        from ...models.backbones import DECODER_TYPES
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


def _known_arch(name: str) -> Optional[Arch]:
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
    base = random_base(name)
    path = Path(base).expanduser()
    arch = None
    if path.is_dir() and ((path / 'config.json').exists() or (path / 'adapter_config.json').exists()):
        arch = _folder_arch(name, path, 'folder')
    else:
        from ...models.backbones import ALIASES
        if base in ALIASES:
            if base in _COSTLY_ALIASES:
                from ..._util import cache_dir
                folder = cache_dir('models') / base
                arch = _folder_arch(name, folder, 'alias') if (folder / 'config.json').exists() else None
            else:
                from ...models.backbones import resolve_model
                arch = _folder_arch(name, Path(resolve_model(base)), 'alias')
        if arch is None:
            arch = _hf_cache_arch(name, base)
        if arch is None:
            arch = _known_arch(base)
    if arch is None:
        raise KnowacqError(f'model {name!r} is not a local folder, an alias, in the local Hugging Face cache or among '
                           f'the known configs ({", ".join(sorted(KNOWN_CONFIGS))}){KNOWN_CONFIGS.suggestion(base)}; '
                           'its size cannot be planned offline')
    arch.name = name
    if arch.source != 'folder':   # a folder may be rewritten in place; the others are fixed
        _ARCHS[name] = arch
    return arch


def _hf_cache_arch(name: str, repo: str) -> Optional[Arch]:
    if not is_hub_id(repo):
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
