"""The registry of pipeline stages that experiment files name (``bm25``, ``run``, ``text``, ``ce``, ``biencoder``, ...).

A stage is a function ``build(ctx, **params) -> pt.Transformer``; add one with::

    @register_stage('mystage')
    def mystage(ctx, depth: int = 10):
        return MyTransformer(ctx.dataset, depth)

and use it in YAML as ``bm25 >> mystage(depth=20)``.
"""
from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pyterrier as pt

from .._util import KnowacqError
from ..datasets.core import Dataset
from . import dry_run as dry_rules   # what a dry run substitutes
from .expressions import StageSpec

__all__ = ['StageContext', 'STAGES', 'register_stage', 'check_stage', 'build_stage', 'build_pipeline']


@dataclass
class StageContext:
    """What a stage may need: the dataset, the test split, the fold's trained models and the seed."""
    dataset: Dataset
    split: Optional[str] = None
    train_split: Optional[str] = None
    models: Dict[str, str] = field(default_factory=dict)
    seed: int = 42
    out_dir: Optional[Path] = None
    dry_run: bool = False

    def model(self, name: str) -> str:
        """A trained model of this fold by its ``models:`` name, else the name itself (alias, folder, hub id); a dry
        run's stand-in for it (:func:`.dry_run.stage_model`)."""
        name = str(name)
        if name in self.models:
            return self.models[name]
        if self.dry_run:
            return dry_rules.stage_model(name)
        return name

    def colbert_model(self, name: str) -> str:
        """The checkpoint a ColBERT stage uses: a trained model of this fold, a folder or a hub id; dry runs get a tiny
        ColBERT (:func:`.dry_run.colbert_checkpoint`)."""
        name = self.model(name)
        return dry_rules.colbert_checkpoint(name) if self.dry_run else str(name)

    def index_max_docs(self) -> Optional[int]:
        """The documents an end-to-end index of this run covers (all, or a dry run's first few)."""
        return dry_rules.index_max_docs(self.dry_run)


STAGES: Dict[str, Callable] = {}


def register_stage(name: str):
    """Decorator registering ``build(ctx, **params) -> pt.Transformer`` under ``name``."""
    def wrap(fn):
        STAGES[name] = fn
        return fn
    return wrap


def check_stage(spec: StageSpec) -> Callable:
    """The stage's builder, after checking its name and parameter names (no model is loaded)."""
    if spec.name not in STAGES:
        close = difflib.get_close_matches(spec.name, list(STAGES), n=1)
        hint = f' (did you mean {close[0]!r}?)' if close else ''
        raise KnowacqError(f'unknown stage {spec.name!r}{hint}; registered stages: {", ".join(sorted(STAGES))}')
    fn = STAGES[spec.name]
    sig = inspect.signature(fn)
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
    allowed = [p for p in list(sig.parameters)[1:] if sig.parameters[p].kind is not inspect.Parameter.VAR_KEYWORD]
    unknown = [k for k in spec.params if k not in allowed] if not accepts_any else []
    if unknown:
        raise KnowacqError(f'stage {spec.name!r} has no parameter {unknown[0]!r}; it takes: {", ".join(allowed) or "none"}')
    missing = [p for p in allowed if sig.parameters[p].default is inspect.Parameter.empty and p not in spec.params]
    if missing:
        raise KnowacqError(f'stage {spec.name!r} needs the parameter {missing[0]!r}, e.g. {spec.name}({missing[0]}=...)')
    return fn


def build_stage(spec: StageSpec, ctx: StageContext) -> pt.Transformer:
    stage = check_stage(spec)(ctx, **spec.params)
    if spec.cutoff is not None:
        stage = stage % spec.cutoff
    return stage


def build_pipeline(specs: List[StageSpec], ctx: StageContext, rerank_depth: Optional[int] = None) -> pt.Transformer:
    """Compose stages with ``>>``; ``rerank_depth`` cuts the first stage's ranking before re-rankers."""
    stages = [build_stage(s, ctx) for s in specs]
    if rerank_depth and len(stages) > 1 and specs[0].cutoff is None:
        stages[0] = stages[0] % int(rerank_depth)
    pipeline = stages[0]
    for stage in stages[1:]:
        pipeline = pipeline >> stage
    return pipeline


# -- built-in stages -------------------------------------------------------------------------------------------

@register_stage('run')
def _run(ctx, name: str = 'bm25', k: Optional[int] = None):
    """A precomputed run shipped with the dataset (``run(name=tasb)``)."""
    return ctx.dataset.run_transformer(str(name), k=k)


@register_stage('bm25')
def _bm25(ctx, k: int = 1000, k1: float = 0.9, b: float = 0.4):
    """PISA BM25 over the dataset's corpus (index built once and cached)."""
    from ..models.first_stage import PisaBM25
    return PisaBM25(ctx.dataset, num_results=k, k1=k1, b=b)


@register_stage('terrier_bm25')
def _terrier_bm25(ctx, k: int = 1000):
    """Terrier BM25 (needs Java and the Terrier jars)."""
    from ..models.first_stage import TerrierBM25
    return TerrierBM25(ctx.dataset, num_results=k)


@register_stage('text')
def _text(ctx, field: str = 'text'):
    """Adds the passage text of each docno (needed before neural re-rankers)."""
    return ctx.dataset.text_loader(field)


@register_stage('ce')
def _ce(ctx, model: str, batch_size: int = 32, max_length: int = 512, quantize: Optional[str] = None):
    """A point-wise cross-encoder re-ranker: a trained model of this experiment, a folder, or a hub id;
    ``quantize=int8`` scores with an int8 copy on the CPU (models/quantize.py)."""
    from ..models.crossencoder import CrossEncoder
    return CrossEncoder.from_pretrained(ctx.model(model), batch_size=batch_size, max_length=max_length,
                                        quantize=quantize)


@register_stage('biencoder')
def _biencoder(ctx, model: str, pooling: Optional[str] = None, batch_size: int = 32, max_length: int = 256,
               query_prefix: Optional[str] = None, doc_prefix: Optional[str] = None, quantize: Optional[str] = None):
    """Bi-encoder re-ranking (``bm25 >> text >> biencoder(model=minilm-l6)``); ``query_prefix``/``doc_prefix`` are put
    before the texts (RepLLaMA: ``query_prefix="query: ", doc_prefix="passage: "``); ``quantize=int8``: int8 on the
    CPU."""
    from ..models.biencoder import BiEncoder
    prefixes = {k: v for k, v in (('query_prefix', query_prefix), ('doc_prefix', doc_prefix)) if v is not None}
    return BiEncoder.from_pretrained(ctx.model(model), pooling=pooling, batch_size=batch_size, max_length=max_length,
                                     quantize=quantize, **prefixes).scorer()


@register_stage('dense')
def _dense(ctx, model: str, pooling: Optional[str] = None, k: int = 1000, batch_size: int = 32, max_length: int = 256):
    """End-to-end dense retrieval: the corpus is encoded into a cached pyterrier-dr FlexIndex, then searched."""
    from ..models.dense_index import dense_retriever
    return dense_retriever(ctx.dataset, ctx.model(model), pooling=pooling, k=k, batch_size=batch_size, max_length=max_length)


@register_stage('colbert')
def _colbert(ctx, model: str = 'colbert-ir/colbertv2.0', batch_size: int = 32, doc_maxlen: Optional[int] = None,
             query_maxlen: Optional[int] = None, backend: str = 'native', quantize: Optional[str] = None):
    """``text >> colbert(model=NAME)``: NAME is a trained model of this experiment, a checkpoint folder or a hub id;
    ``quantize=int8``: int8 on the CPU (native backend)."""
    from ..models.colbert import ColBERT
    return ColBERT(ctx.colbert_model(model), batch_size=batch_size, doc_maxlen=doc_maxlen,
                   query_maxlen=query_maxlen, backend=backend, quantize=quantize)


@register_stage('colbert_retrieve')
def _colbert_retrieve(ctx, model: str = 'colbert-ir/colbertv2.0', k: int = 1000, ncandidates: int = 256,
                      nprobe: int = 32, batch_size: int = 32):
    """End-to-end ColBERT retrieval over the dataset's corpus (the token index is built once and cached)."""
    from ..models.colbert_index import cached_index
    index = cached_index(ctx.dataset, ctx.colbert_model(model), batch_size=batch_size, max_docs=ctx.index_max_docs())
    return index.retriever(num_results=k, ncandidates=ncandidates, nprobe=nprobe)
