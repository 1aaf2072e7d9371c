"""Activations measured, never guessed: the family's real training task (or the bare encoder) built with 1 and 2
layers on this CPU, autograd's saved bytes counted at 1 and 2 queries and scaled linearly
(:func:`activation_estimate`). Measurements are cached under ``$KNOWACQ_CACHE/plan/``, keyed by the architecture, the
shapes and the library versions.

Example::

    m = measure_training('cross-encoder', architecture('tiny-bert'), {'docs': 8, 'loss': 'lce', 'max_length': 64,
                                                                      'query_words': 8})
    activation_estimate(m, layers=12, batch=16, docs=8, docs_measured=8)     # bytes saved by a 16-query step
"""
from __future__ import annotations

import hashlib
import itertools
import json
import time
from pathlib import Path
from typing import Any, Dict

from ..._util import KnowacqError
from .architectures import Arch, _hf_config


MEASURE_VERSION = 3


_WORDS = ('river', 'stone', 'light', 'house', 'green', 'water', 'paper', 'music', 'table', 'north')


_MEMO: Dict[str, Dict[str, Any]] = {}
_TOKENIZERS: Dict[bool, Any] = {}


def _tokenizer(decoder: bool):
    """A stand-in tokenizer of the family (lengths are forced by the texts, so only the family matters): the MiniLM
    BERT vocabulary (= bert-base-uncased's) for encoders, SmolLM2's for decoders."""
    if decoder not in _TOKENIZERS:
        from ...models.backbones import load_tokenizer
        _TOKENIZERS[decoder] = load_tokenizer('tiny-llama' if decoder else 'tiny-bert')
    return _TOKENIZERS[decoder]


def _text(tokens: int) -> str:
    return ' '.join(itertools.islice(itertools.cycle(_WORDS), int(tokens) + 8))


def _cache_file(key: str) -> Path:
    from ..._util import cache_dir
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
    from ..._util import atomic_write_json
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
    from ...training.examples import Group, TeacherList
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
        from ...models.crossencoder import CrossEncoder, CrossEncoderModel
        from ...training.crossencoder_task import CrossEncoderTask
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
        from ...models.biencoder import BiEncoder
        from ...training.dense import BiEncoderTask
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
        from ...models.colbert import ColBERTModel
        from ...training.colbert import ColBERTTask
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
    from ...training.memory import activation_bytes
    from ...training.trainer import preserved_rng
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
        from ...training.memory import activation_bytes
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
