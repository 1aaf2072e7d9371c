"""End-to-end dense retrieval with pyterrier-dr's FlexIndex, cached per (model, corpus)."""
from __future__ import annotations

import shutil
from typing import Optional

import pyterrier as pt

from ._util import cache_dir
from .backbones import model_fingerprint
from .datasets import get_dataset


def dense_index(dataset, model: str, pooling: Optional[str] = None, batch_size: int = 32, max_length: int = 256,
                verbose: bool = True):
    """The FlexIndex of ``dataset``'s corpus encoded by ``model`` (built once; rebuilt when model or corpus change)."""
    import pyterrier_dr
    from .biencoder import BiEncoder
    dataset = get_dataset(dataset)
    encoder = BiEncoder.from_pretrained(model, pooling=pooling, batch_size=batch_size, max_length=max_length, verbose=verbose)
    key = f'{dataset.corpus_fingerprint()}-{model_fingerprint(model)}-{encoder.pooling_name}-{max_length}'
    folder = cache_dir('indexes') / f'flex-{dataset.name.replace("/", "_").replace(":", "_")}-{key}.flex'
    index = pyterrier_dr.FlexIndex(str(folder))
    if not index.built():
        tmp = folder.with_name(folder.name + '.partial')
        shutil.rmtree(tmp, ignore_errors=True)
        (encoder.doc_encoder() >> pyterrier_dr.FlexIndex(str(tmp)).indexer()).index(dataset.get_corpus_iter())
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
        index = pyterrier_dr.FlexIndex(str(folder))
    return encoder, index


def dense_retriever(dataset, model: str, pooling: Optional[str] = None, k: int = 1000, batch_size: int = 32,
                    max_length: int = 256) -> pt.Transformer:
    encoder, index = dense_index(dataset, model, pooling, batch_size, max_length)
    return encoder.query_encoder() >> index.retriever(num_results=k)
