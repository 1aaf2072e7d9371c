"""Bi-encoder fine-tuning with InfoNCE (in-batch + hard negatives from a first-stage run) on the shared trainer.

Spec (a ``models:`` entry with ``kind: bi-encoder`` in an experiment YAML)::

    kind: bi-encoder
    backbone: minilm-l6          # any backbones.py name, incl. random:minilm-l6 (the no-pre-training control)
    query_backbone: null         # DPR-style separate query encoder (initialised from this name, default = backbone)
    shared: true                 # false: separate query and passage encoders (both trained)
    pooling: cls                 # cls | mean | last (true last token, EOS appended for decoders)
    temperature: 0.05            # InfoNCE temperature (on dot products; normalize: true -> cosine)
    normalize: false
    max_length: 128              # passages;  query_max_length: 32
    queries_per_batch: 8         # in-batch negatives = the other queries' passages
    negatives: 3                 # hard negatives per query, sampled from the run's top `depth`
    data: {run: bm25, depth: 30, rel_threshold: 1, neg_max_label: null, per_positive: false, extra: []}
    lr: 2.0e-5
    steps: 100                   # or epochs
    validation: {queries: 10, run: bm25, depth: 30}   # optional: carved from the TRAINING split; best checkpoint kept
    eval_every: 25               # validation interval in steps (default: a quarter of the steps)
    lora: {r: 8, alpha: 16, dropout: 0.05, target_modules: [q_proj, v_proj], save: merged}   # optional, needs peft
                                 # save: merged (plain weights, default) | adapter (the LoRA weights only, small)
    precision: auto              # auto (bf16 autocast on a capable GPU, fp32 elsewhere) | fp32 | bf16 (GPU only)
    gradient_checkpointing: false   # true: recompute activations in the backward pass (less memory, slower)
    micro_batch: auto            # queries per forward pass: auto (fit the GPU; CPU: queries_per_batch) | N

``run: bm25`` uses the dataset's shipped BM25 run when it has one, else PISA BM25 over its corpus. With
``validation:``, ``queries`` judged queries of the training split are held out of the training groups (seeded
carve); every ``eval_every`` steps the model re-ranks their ``run`` top-``depth`` and the checkpoint with the best
nDCG@10 is kept (``training.json`` records the held-out ids, the best value and which checkpoint was selected).
The trained model is cached by a hash of (spec, dataset, split, seed); the returned folder loads with
``BiEncoder.from_pretrained(folder)`` and ``FlexIndex``. Training reads passage texts per batch
(``dataset.get_texts``), never the whole corpus.

Example::

    folder = train_biencoder({'backbone': 'minilm-l6', 'pooling': 'mean', 'steps': 50},
                             dataset='msmarco-passage', train_split='dl20', seed=42)
"""
from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from .._util import KnowacqError, check_keys
from ..models.first_stage import named_run
from .cached import TrainingFamily, train_cached
from .train_config import TRAIN_KEYS, TrainConfig, check_spec

__all__ = ['DualEncoder', 'BiEncoderTask', 'train_biencoder', 'validate_dense_spec', 'DENSE_KEYS', 'FAMILY']

#: the bi-encoder's own keys, the shared training keys (:mod:`.train_config`) and ``eval_every``
DENSE_KEYS = {'kind', 'backbone', 'query_backbone', 'shared', 'pooling', 'temperature', 'normalize', 'max_length',
              'query_max_length', 'negatives', 'data', 'lora', 'description', 'validation',
              'eval_every'} | TRAIN_KEYS
#: spec keys that do not change the trained weights (left out of the cache key)
RESULT_NEUTRAL_KEYS = {'gradient_checkpointing'}
LORA_SAVES = ('merged', 'adapter')
DATA_KEYS = {'run', 'depth', 'rel_threshold', 'neg_max_label', 'per_positive', 'extra', 'extra_depth', 'max_queries'}
VALIDATION_KEYS = {'queries', 'run', 'depth'}
VERSION = 1


def validate_dense_spec(spec: Dict[str, Any]) -> Dict[str, Any]:
    if not isinstance(spec, dict):
        raise KnowacqError(f'a bi-encoder spec must be a mapping, got {type(spec).__name__}')
    check_spec(spec, DENSE_KEYS, 'unknown bi-encoder spec keys')
    if not spec.get('backbone'):
        raise KnowacqError('a bi-encoder spec needs `backbone:` (e.g. minilm-l6, random:minilm-l6, smollm2-135m)')
    if not spec.get('steps') and not spec.get('epochs'):
        raise KnowacqError('a bi-encoder spec needs `steps:` or `epochs:`')
    check_keys(spec.get('data') or {}, DATA_KEYS, 'unknown bi-encoder data keys')
    if float(spec.get('temperature', 0.05)) <= 0:
        raise KnowacqError(f'temperature must be > 0, got {spec.get("temperature")}')
    if spec.get('query_backbone') and spec.get('shared', True):
        raise KnowacqError('query_backbone needs shared: false (a separate query encoder)')
    val = spec.get('validation')
    if val is not None:
        if not isinstance(val, dict):
            raise KnowacqError(f'validation must be a mapping such as {{queries: 10, run: bm25, depth: 30}}, got {val!r}')
        check_keys(val, VALIDATION_KEYS, 'unknown bi-encoder validation keys')
        for key, default in (('queries', None), ('depth', 30)):
            value = val.get(key, default)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise KnowacqError(f'validation {key} must be a whole number >= 1 (held-out training queries / '
                                   f'candidates re-ranked per query), got {value!r}')
    if spec.get('eval_every') and not val:
        raise KnowacqError('eval_every needs `validation: {queries: N, run: bm25, depth: D}` (nothing to evaluate)')
    lora = spec.get('lora')
    if lora and (not isinstance(lora, dict) or lora.get('save', 'merged') not in LORA_SAVES):
        raise KnowacqError(f'lora must be a mapping such as {{r: 8, alpha: 16, save: merged}} with save one of '
                           f'{list(LORA_SAVES)}, got {lora!r}')
    return spec


class DualEncoder(torch.nn.Module):
    """The trainable module: a passage encoder and an optional separate query encoder, with pooling."""

    def __init__(self, doc_model, query_model=None, pooling: str = 'cls', normalize: bool = False):
        super().__init__()
        from ..models.pooling import get_pooling
        self.doc = doc_model
        self.query = query_model
        self.pool = get_pooling(pooling)
        self.normalize = normalize

    def forward(self, input_ids, attention_mask, role: str = 'doc'):
        enc = self.query if role == 'query' and self.query is not None else self.doc
        out = enc(input_ids=input_ids, attention_mask=attention_mask)
        vec = self.pool(out.last_hidden_state, attention_mask)
        return torch.nn.functional.normalize(vec, dim=-1) if self.normalize else vec


def docnos_with_text(dataset, docnos, chunk: int = 2048) -> set:
    """The docnos among ``docnos`` whose text ``dataset.get_texts`` finds (batched lookups; no text is kept)."""
    docnos = list(dict.fromkeys(str(d) for d in docnos))
    known = set()
    for i in range(0, len(docnos), chunk):
        part = docnos[i:i + chunk]
        try:
            dataset.get_texts(part)
            known.update(part)
        except Exception:       # some docno has no text (KnowacqError, a docstore's KeyError): find which
            for d in part:
                try:
                    dataset.get_texts([d])
                    known.add(d)
                except Exception:
                    pass
    return known


def group_texts_of(texts_of, groups):
    """``texts_of(docnos)`` that serves the groups' own texts (e.g. MS MARCO train triples) and looks the rest up in
    one batched call (e.g. ``dataset.get_texts``)."""
    own: Dict[str, str] = {}
    for g in groups:
        own.update(getattr(g, 'texts', None) or {})
    if not own:
        return texts_of

    def lookup(docnos):
        out = [own.get(d) for d in docnos]
        rest = [(i, d) for i, d in enumerate(docnos) if d not in own]
        if rest:
            for (i, _), t in zip(rest, texts_of([d for _, d in rest])):
                out[i] = t
        return out
    return lookup


class BiEncoderTask:
    """InfoNCE over ``[B queries] x [B * (1 + negatives) passages]``: each query's positive against every other
    passage of the batch (its hard negatives and the other queries' passages).

    Batches are ``(qid, query, docnos)`` lists; the passages of a batch are looked up with one ``texts_of(docnos)``
    call (``text_of(docno)``, the older single-docno form, is wrapped). The BERT pooler, which the bi-encoder never
    uses (it pools hidden states itself), is frozen. ``save_adapters``: a LoRA model is saved as its adapters only
    (``adapter_model.safetensors``), else merged into plain weights."""

    def __init__(self, bienc, groups, text_of=None, *, negatives: int = 3, queries_per_batch: int = 8,
                 temperature: float = 0.05, seed: int = 42, validator=None, texts_of=None, save_adapters: bool = False):
        from .losses import get_loss
        from .trainer import as_texts_of, freeze_pooler
        self.bienc = bienc
        self.model = DualEncoder(bienc.model, bienc.query_model, bienc.pooling_name, bienc.normalize)
        for enc in (bienc.model, bienc.query_model):
            if enc is not None:
                freeze_pooler(enc)
        self.groups = list(groups)
        if not self.groups:
            raise KnowacqError('no training groups for the bi-encoder; check the qrels and the run')
        self.texts_of = as_texts_of(text_of, texts_of)
        self.save_adapters = bool(save_adapters)
        self.negatives = int(negatives)
        self.qpb = int(queries_per_batch)
        self.loss_fn = get_loss('infonce', tau=float(temperature))
        self.seed = seed
        self.validator = validator

    def batches(self, epoch: int, rank: int = 0, world_size: int = 1) -> List[list]:
        from .examples import sampled_group_batches
        return sampled_group_batches(self.groups, self.negatives, self.qpb, self.seed, epoch, rank, world_size)

    def _encode(self, model, texts, role):
        from ..models._batching import pad_batch
        enc = self.bienc._prepare(texts, role)
        device = next(self.bienc.model.parameters()).device
        batch = pad_batch(self.bienc.tokenizer, enc, np.arange(len(texts)), device)
        return model(batch['input_ids'], batch['attention_mask'], role=role)

    def loss(self, model, batch):
        queries = [query for _, query, _ in batch]
        docnos = [d for _, _, ds in batch for d in ds]
        q = self._encode(model, queries, 'query')
        d = self._encode(model, list(self.texts_of(docnos)), 'doc')          # one batched lookup
        scores = q @ d.T
        k = 1 + self.negatives
        targets = torch.arange(len(batch), device=scores.device) * k
        loss = self.loss_fn(scores, targets)
        with torch.no_grad():
            acc = (scores.argmax(1) == targets).float().mean()
        return loss, {'in_batch_acc': float(acc)}

    def batch_ids(self, batch):
        return [qid for qid, _, _ in batch]

    def validate(self, model):
        """Validation metrics (``{'nDCG@10': ..., 'RR(rel=2)@10': ...}``), or ``{}`` without a validator."""
        if self.validator is None:
            return {}
        return self.validator(PairScorer(self.bienc))

    def save(self, folder: Path) -> None:
        bienc = self.bienc
        model, qmodel = bienc.model, bienc.query_model
        if self.save_adapters:                   # LoRA: the adapters only (PeftModel.save_pretrained)
            bienc.save(folder)
            return
        if hasattr(model, 'merge_and_unload'):   # LoRA: write plain merged weights
            bienc.model = copy.deepcopy(model).merge_and_unload()
        if qmodel is not None and hasattr(qmodel, 'merge_and_unload'):
            bienc.query_model = copy.deepcopy(qmodel).merge_and_unload()
        try:
            bienc.save(folder)
        finally:
            bienc.model, bienc.query_model = model, qmodel


class PairScorer:
    """``score_pairs(queries, texts) -> dot products`` of a bi-encoder: the interface
    :class:`~.crossencoder_task.RerankValidator` scores with. Each distinct query and text is encoded once."""

    def __init__(self, bienc):
        self.bienc = bienc

    def score_pairs(self, queries: List[str], texts: List[str]) -> np.ndarray:
        bienc = self.bienc
        bienc.device = next(bienc.model.parameters()).device   # where the trainer put the model
        uq, ut = list(dict.fromkeys(queries)), list(dict.fromkeys(texts))
        qv, dv = bienc.encode_queries(uq), bienc.encode_docs(ut)
        qi, ti = {q: i for i, q in enumerate(uq)}, {t: i for i, t in enumerate(ut)}
        return np.einsum('ij,ij->i', qv[[qi[q] for q in queries]], dv[[ti[t] for t in texts]]).astype(np.float32)


def _dry_backbone(name: str) -> str:
    base = name[len('random:'):] if name.startswith('random:') else name
    if base in ('tiny-bert', 'tiny-llama'):
        return name
    decoder = any(k in base.lower() for k in ('llama', 'smol', 'mistral', 'qwen', 'gpt'))
    tiny = 'tiny-llama' if decoder else 'tiny-bert'
    return f'random:{tiny}@1' if name.startswith('random:') else tiny   # @1: random:tiny-bert@0 == tiny-bert


def _judged_topics(dataset, split):
    topics, qrels = dataset.get_topics(split), dataset.get_qrels(split)
    return topics[topics['qid'].astype(str).isin(set(qrels['qid'].astype(str)))], qrels


def _groups(spec, dataset, split, seed, qids=None):
    from . import examples as ex
    data = dict(spec.get('data') or {})
    topics, qrels = _judged_topics(dataset, split)
    depth = int(data.get('depth', 30))
    run = named_run(dataset, data.get('run', 'bm25'), split, topics, depth + 10)
    known = docnos_with_text(dataset, set(run['docno'].astype(str)) | set(qrels['docno'].astype(str)))
    groups = ex.contrastive_groups(topics, qrels, run, depth=depth, rel_threshold=int(data.get('rel_threshold', 1)),
                                   neg_max_label=data.get('neg_max_label'), per_positive=bool(data.get('per_positive', False)),
                                   qids=qids, known_docnos=known)
    for name in data.get('extra') or []:
        groups += ex.extra_groups(name, dataset, depth=int(data.get('extra_depth', 30)), seed=seed)
    if data.get('max_queries'):
        rng = random.Random(seed)
        groups = rng.sample(groups, min(len(groups), int(data['max_queries'])))
    return groups


def _validation(spec, dataset, split, seed):
    """``(training qids or None, validation qids, validator or None)`` for the spec's ``validation:`` section."""
    from .crossencoder_task import RerankValidator
    from .examples import split_validation
    val = spec.get('validation') or {}
    if not val:
        return None, [], None
    topics, qrels = _judged_topics(dataset, split)
    if topics.empty:
        raise KnowacqError(f'the topics and qrels of {dataset.name}:{split} share no query ids; nothing to validate on')
    train_qids, val_qids = split_validation(topics['qid'], int(val['queries']), seed)
    depth = int(val.get('depth', 30))
    held = topics[topics['qid'].astype(str).isin(val_qids)]
    run = named_run(dataset, val.get('run', 'bm25'), split, held, depth)
    run = run[run['docno'].astype(str).isin(docnos_with_text(dataset, run['docno']))]
    return train_qids, val_qids, RerankValidator(held, qrels, run, texts_of=dataset.get_texts, depth=depth)


def _apply_lora(model, lora: Dict[str, Any]):
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise KnowacqError('lora: needs the peft package: pip install peft (or remove `lora:` to fine-tune all weights)') from None
    cfg = LoraConfig(r=int(lora.get('r', 8)), lora_alpha=int(lora.get('alpha', 16)), lora_dropout=float(lora.get('dropout', 0.0)),
                     target_modules=list(lora.get('target_modules', ['q_proj', 'v_proj'])), bias='none')
    return get_peft_model(model, cfg)


def _strip_gguf(model):
    """Models dequantised from GGUF (smollm2-135m) keep a gguf ``quantization_config`` that blocks ``save_pretrained``;
    their weights are plain fp32, so drop the marker."""
    quant = getattr(model.config, 'quantization_config', None)
    if quant is not None and 'gguf' in type(getattr(model, 'hf_quantizer', None)).__name__.lower():
        del model.config.quantization_config
        model.hf_quantizer = None
        try:
            model.is_quantized = False
        except AttributeError:
            pass
    return model


def build_biencoder(spec: Dict[str, Any], seed: int = 42):
    """The untrained :class:`~pyterrier_knowacq.models.biencoder.BiEncoder` a spec starts from."""
    from ..models.backbones import load_encoder, resolve_model
    from ..models.biencoder import BiEncoder
    torch.manual_seed(seed)
    model, tok = load_encoder(spec['backbone'])
    model = _strip_gguf(model)
    qmodel = None
    if not spec.get('shared', True):
        qmodel = _strip_gguf(load_encoder(spec.get('query_backbone') or spec['backbone'])[0])
    pooling = spec.get('pooling', 'cls')
    bienc = BiEncoder(model, tok, pooling=pooling, query_model=qmodel, normalize=bool(spec.get('normalize', False)),
                      name=str(resolve_model(spec['backbone'])), max_length=int(spec.get('max_length', 128)),
                      query_max_length=int(spec.get('query_max_length', 32)), device='cpu')
    if spec.get('lora'):
        bienc.model = _apply_lora(bienc.model, spec['lora'])
        if bienc.query_model is not None:
            bienc.query_model = _apply_lora(bienc.query_model, spec['lora'])
    return bienc


class BiEncoderFamily(TrainingFamily):
    """The bi-encoder's part of :func:`~.cached.train_cached`: one stage, cached in ``models/trained-dense``."""
    kind, cache, version, neutral_keys = 'bi-encoder', 'trained-dense', VERSION, frozenset(RESULT_NEUTRAL_KEYS)

    def prepare(self, spec, dataset, train_split, dry_run=False):
        if train_split is None and 'train' in (getattr(dataset, 'splits', ()) or ()):
            train_split = 'train'   # a fold naming another dataset (e.g. scifact): never fall back to its test split
        spec = copy.deepcopy(validate_dense_spec(dict(spec)))
        spec.pop('kind', None)
        if dry_run:
            spec['backbone'] = _dry_backbone(spec['backbone'])
            if spec.get('query_backbone'):
                spec['query_backbone'] = _dry_backbone(spec['query_backbone'])
            spec['steps'] = min(int(spec.get('steps') or 2), 2)
            spec.pop('epochs', None)
            spec['data'] = {**(spec.get('data') or {}), 'max_queries': 8, 'extra': []}
            spec.pop('lora', None)
            if spec.get('validation'):
                val = spec['validation']
                spec['validation'] = {**val, 'queries': min(int(val['queries']), 3), 'depth': min(int(val.get('depth', 30)), 5)}
                spec['eval_every'] = 1
        return spec, train_split

    def train_stage(self, spec, stage, init, dataset, train_split, seed, work, shared, verbose):
        from .trainer import Trainer
        bienc = build_biencoder(spec, seed)
        train_qids, val_qids, validator = _validation(spec, dataset, train_split, seed)
        groups = _groups(spec, dataset, train_split, seed, qids=train_qids)
        cfg = TrainConfig.from_spec(spec, seed=seed, validating=validator is not None, defaults={'queries_per_batch': 8},
                                    progress=verbose, log_every=5)
        task = BiEncoderTask(bienc, groups, texts_of=group_texts_of(dataset.get_texts, groups),
                             negatives=int(spec.get('negatives', 3)), queries_per_batch=cfg.queries_per_batch,
                             temperature=float(spec.get('temperature', 0.05)), seed=seed, validator=validator,
                             save_adapters=(spec.get('lora') or {}).get('save', 'merged') == 'adapter')
        yardsticks = {}   # what the kept checkpoint is compared with, on the same validation queries
        if validator is not None:
            task.model.eval()   # (the trainer switches it back to training mode)
            yardsticks['start'] = validator(PairScorer(bienc))
            yardsticks['first_stage'] = validator.first_stage()
        result = Trainer(task, cfg, work).train()
        return result, {'groups': len(groups), 'eval_every': cfg.eval_every, 'validation_qids': val_qids,
                        'validation': yardsticks}


FAMILY = BiEncoderFamily()


def train_biencoder(spec: Dict[str, Any], *, dataset, train_split: Optional[str], output_dir: Optional[Path] = None,
                    seed: int = 42, dry_run: bool = False, verbose: bool = False) -> Path:
    """Fine-tune (or fetch from the cache) the bi-encoder ``spec`` on ``dataset``'s ``train_split``; returns its folder
    (:func:`~.cached.train_cached`: cached by the content of the spec, the data and the weights)."""
    return train_cached('bi-encoder', spec, dataset=dataset, train_split=train_split, output_dir=output_dir, seed=seed,
                        dry_run=dry_run, verbose=verbose)
