"""Strict loading of checkpoint families: no weight left at random initialisation, DPR pairs and LoRA adapters.

Loading (:func:`load_pretrained`, :func:`load_pretrained_encoder`) never leaves a weight at random initialisation:
every parameter the architecture has must come from the checkpoint, or :class:`KnowacqError` names the model, how many
weights are missing, the first of them and the fix. The only exceptions are :data:`ALLOWED_MISSING` (position-id
buffers, and a BERT/RoBERTa pooler no consumer reads, which is removed rather than left random).

DPR checkpoints load with their own class (``DPRQuestionEncoder`` / ``DPRContextEncoder``, from the config's
``architectures``; ``DPRReader`` is refused) and are handed out as the plain ``BertModel`` inside (its CLS state is
DPR's ``pooler_output``). A DPR context encoder named alone gets its question encoder from :data:`DPR_PAIRS` for
queries (:func:`paired_query_encoder`).

A PEFT LoRA adapter folder is merged into the base model its config names and cached as a plain folder
(:func:`merge_adapter`), strictly: every adapter weight must load.

Names are resolved by :mod:`pyterrier_knowacq.models.backbones`, which re-exports everything here; the functions that
need the resolver (:func:`merge_adapter`, the adapter download) import it when called.

Example::

    from pyterrier_knowacq.models.loading import load_pretrained_encoder
    encoder = load_pretrained_encoder('/path/to/model-folder')
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional

from .._util import KnowacqError, atomic_directory, cache_dir

__all__ = ['ALLOWED_MISSING', 'load_pretrained', 'load_pretrained_encoder', 'dpr_role', 'weights_left_at_init',
           'DPR_PAIRS', 'register_dpr_pair', 'paired_query_encoder', 'merge_adapter']


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


register_dpr_pair('tiny-dpr-ctx', 'tiny-dpr-question')   # the packaged DPR stand-ins (models/aliases.py)


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
    from .backbones import _hf_cache_adapter, _unresolvable, hub_problem
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
    from .backbones import load_encoder, model_fingerprint
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
