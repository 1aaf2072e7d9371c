"""End-to-end dense retrieval with pyterrier-dr's FlexIndex, cached per (corpus, model, passage encoding).

The cache key covers everything that changes the stored passage vectors: the corpus files, the model's weights
(:func:`~pyterrier_knowacq.models.backbones.model_fingerprint`), the pooling, L2 normalisation, the passage token limit,
the EOS token appended by last-token pooling and the passage prefix. So two models, or one model pooled two ways,
never share an index.

The corpus is encoded ``encoding_chunk(batch_size)`` documents at a time (each chunk length-sorted into batches) and
the vectors go straight to the index's ``vecs.f4`` file, so memory stays flat in the corpus size. A sharded build
(``torchrun --nproc_per_node N -m pyterrier_knowacq.models.sharding dense ...``) encodes the same chunks on N
processes and merges them into the same folder, bit for bit: :func:`dense_index` then finds it built.

Example::

    retriever = dense_retriever('scifact', 'minilm-l6', pooling='mean', k=100, max_length=96)
    retriever(get_dataset('scifact').get_topics('test'))
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Optional

import pyterrier as pt

from .._util import cache_dir
from .backbones import model_fingerprint
from ..datasets.core import get_dataset

__all__ = ['dense_index', 'dense_retriever', 'index_folder', 'encoding_chunk']


def encoding_chunk(batch_size: int) -> int:
    """Documents encoded together (length-sorted into batches of ``batch_size``) when building a dense index: what
    ``(doc_encoder >> indexer).index(corpus)`` chose on its own (the larger of 100 and the batch size). A vector depends
    on its batch's padding only to float rounding, so a sharded build encodes exactly these chunks."""
    return max(100, int(batch_size))


def _safe(text: str, limit: int = 40) -> str:
    return re.sub(r'[^A-Za-z0-9._-]+', '_', str(text)).strip('_')[-limit:] or 'x'


def index_folder(dataset, model: str, encoder) -> Path:
    """The cache folder of ``dataset``'s corpus encoded by ``encoder`` (a :class:`~.biencoder.BiEncoder` of ``model``)."""
    encoding = {'corpus': dataset.corpus_fingerprint(), 'model': model_fingerprint(model), 'pooling': encoder.pooling_name,
                'normalize': bool(encoder.normalize), 'max_length': int(encoder.max_length),
                'append_eos': bool(encoder.append_eos), 'doc_prefix': encoder.doc_prefix}
    key = hashlib.sha1(json.dumps(encoding, sort_keys=True).encode()).hexdigest()[:16]
    name = f'flex-{_safe(dataset.name)}-{_safe(Path(str(model)).name)}-{encoder.pooling_name}-{encoder.max_length}-{key}.flex'
    return cache_dir('indexes') / name


def dense_index(dataset, model: str, pooling: Optional[str] = None, batch_size: int = 32, max_length: int = 256,
                verbose: bool = True):
    """``(encoder, FlexIndex)`` of ``dataset``'s corpus encoded by ``model`` (built once; rebuilt when model or corpus
    change).

    Args:
        dataset: a dataset name or :class:`~.datasets.Dataset`.
        model: anything :meth:`BiEncoder.from_pretrained` loads (alias, folder, hub id, ``random:NAME``).
        pooling: override the model's pooling (``cls``, ``mean``, ``last``); ``None`` keeps its own.
        batch_size: encoding batch size.
        max_length: passage token limit.
        verbose: show encoding progress.
    """
    import pyterrier_dr
    from .biencoder import BiEncoder
    dataset = get_dataset(dataset)
    encoder = BiEncoder.from_pretrained(model, pooling=pooling, batch_size=batch_size, max_length=max_length, verbose=verbose)
    folder = index_folder(dataset, model, encoder)
    index = pyterrier_dr.FlexIndex(str(folder))
    if not index.built():
        tmp = folder.with_name(folder.name + '.partial')
        shutil.rmtree(tmp, ignore_errors=True)
        print(f'[knowacq] encoding the {dataset.name} corpus with {model} ({encoder.pooling_name} pooling) '
              f'into {folder.name}', flush=True)
        (encoder.doc_encoder() >> pyterrier_dr.FlexIndex(str(tmp)).indexer()).index(
            dataset.get_corpus_iter(), batch_size=encoding_chunk(encoder.batch_size))
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
        index = pyterrier_dr.FlexIndex(str(folder))
    return encoder, index


def dense_retriever(dataset, model: str, pooling: Optional[str] = None, k: int = 1000, batch_size: int = 32,
                    max_length: int = 256) -> pt.Transformer:
    """``query encoder >> FlexIndex retriever`` over ``dataset``'s corpus (see :func:`dense_index`)."""
    encoder, index = dense_index(dataset, model, pooling, batch_size, max_length)
    return encoder.query_encoder() >> index.retriever(num_results=k)
