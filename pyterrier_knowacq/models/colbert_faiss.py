"""The faiss index over a :class:`~pyterrier_knowacq.models.colbert_index.ColBERTIndex`'s token vectors, built with
memory flat in the corpus size.

Building reads ``tokens.f16`` in blocks with plain file reads (a memory map would keep every page it touched resident,
so the process would grow by the whole token file), draws the ``ivfpq`` training sample in ``O(sample)`` memory and
adds the tokens to one *segment* of at most :data:`SEGMENT_TOKENS` tokens at a time, each written as it fills
(``tokens.faiss``, then ``tokens.faiss.1``, ...). A segment's codes are all the build holds, so the peak memory of a
build does not grow with the corpus. All segments share the trained coarse quantizer and product quantizer, so a
vector's distance to a query is the same in whichever segment it lies: :class:`SegmentedIndex` searches each and keeps
the overall top k by distance, which is what one index holding every token returns (up to the order of ties).

An index of one segment (every index up to :data:`SEGMENT_TOKENS` tokens, and every index built before segments) is
one ``tokens.faiss`` file, as before.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import numpy as np
import pyterrier as pt

from .._util import KnowacqError

__all__ = ['SEGMENT_TOKENS', 'build_faiss', 'load_faiss', 'SegmentedIndex', 'iter_token_blocks', 'segment_files']

#: tokens per faiss segment: 2M tokens of ``ivfpq`` codes (16-32 bytes) and ids (8 bytes) are 50-84 MB
SEGMENT_TOKENS = 1 << 21
#: tokens read from ``tokens.f16`` per block
READ_ROWS = 65536
#: below this many tokens the training sample is drawn as before (``rng.choice`` may build an arange of all tokens)
_SMALL_SAMPLE_POPULATION = 1 << 22


def iter_token_blocks(path: Path, n: int, dim: int, start: int = 0, stop: int = None,
                      step: int = READ_ROWS) -> Iterator[Tuple[int, np.ndarray]]:
    """``(first row, float16 [rows, dim])`` blocks of rows ``start:stop`` of a ``[n, dim]`` fp16 file, read with
    plain file reads (nothing stays resident after a block is dropped)."""
    stop = n if stop is None else min(stop, n)
    with open(path, 'rb') as f:
        f.seek(start * dim * 2)
        for s in range(start, stop, step):
            m = min(step, stop - s)
            block = np.fromfile(f, dtype=np.float16, count=m * dim)
            if block.size != m * dim:
                raise KnowacqError(f'{path} holds fewer than {n} token vectors of {dim} dims; the index is damaged, '
                                   'rebuild it')
            yield s, block.reshape(m, dim)


def _sample_rows(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Sorted distinct row numbers in ``[0, n)``, ``size`` of them, in ``O(size)`` memory for large ``n``."""
    rng = np.random.default_rng(seed)
    if n <= _SMALL_SAMPLE_POPULATION:
        return np.sort(rng.choice(n, size=size, replace=False))      # the sample every earlier build drew
    picked = np.unique(rng.integers(0, n, size=size + size // 8 + 16))
    while len(picked) < size:
        picked = np.unique(np.concatenate([picked, rng.integers(0, n, size=size - len(picked) + 16)]))
    return np.sort(rng.choice(picked, size=size, replace=False))


def segment_files(folder: Path, segments: int) -> List[Path]:
    """The faiss files of an index of ``segments`` segments (the first is always ``tokens.faiss``)."""
    folder = Path(folder)
    return [folder / ('tokens.faiss' if k == 0 else f'tokens.faiss.{k}') for k in range(segments)]


def build_faiss(folder: Path, n: int, dim: int, kind: str, verbose: bool = True,
                segment_tokens: int = SEGMENT_TOKENS) -> Dict:
    """Write the faiss index of ``folder/tokens.f16`` (``[n, dim]`` fp16) into ``folder``; returns its meta.json entry
    (``type``, the ``ivfpq`` parameters and ``segments`` when there are several)."""
    import faiss
    folder = Path(folder)
    tokens = folder / 'tokens.f16'
    if kind == 'flat':
        empty = faiss.IndexFlatIP(dim)
        meta = {'type': 'flat'}
    else:
        nlist = int(min(max(2 ** int(np.log2(max(4 * np.sqrt(n), 64))), 64), 16384))
        m = next(c for c in (16, 32, 8, 4, 2, 1) if dim % c == 0)
        empty = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
        sample = _sample_rows(n, min(n, 40 * nlist))
        if len(sample) < max(nlist, 256):
            raise KnowacqError(f'only {n} tokens: too few for an ivfpq index with {nlist} lists; use faiss_index="flat"')
        train = np.empty((len(sample), dim), dtype=np.float32)
        at = 0
        for s, block in iter_token_blocks(tokens, n, dim):
            lo, hi = np.searchsorted(sample, [s, s + len(block)])
            train[at:at + hi - lo] = block[sample[lo:hi] - s]
            at += hi - lo
        empty.train(train)
        del train
        meta = {'type': 'ivfpq', 'nlist': nlist, 'm': m, 'nbits': 8}
    segment_tokens = max(int(segment_tokens), 1)
    bounds = list(range(0, n, segment_tokens)) or [0]
    files = segment_files(folder, len(bounds))
    bar = pt.tqdm(total=n, desc='faiss add', unit='token', disable=not verbose)
    for start, path in zip(bounds, files):
        index = faiss.clone_index(empty) if len(bounds) > 1 else empty
        for _, block in iter_token_blocks(tokens, n, dim, start, start + segment_tokens):
            index.add(block.astype(np.float32))
            bar.update(len(block))
        faiss.write_index(index, str(path))
        del index
    bar.close()
    if len(bounds) > 1:
        meta['segments'] = len(bounds)
    return meta


def load_faiss(folder: Path, faiss_meta: Dict):
    """The faiss index of an index folder: one ``faiss.Index``, or a :class:`SegmentedIndex` over its segments."""
    import faiss
    files = segment_files(folder, int(faiss_meta.get('segments', 1)))
    if len(files) == 1:
        return faiss.read_index(str(files[0]))
    return SegmentedIndex([faiss.read_index(str(f)) for f in files])


class SegmentedIndex:
    """Segments searched as one index: ``search(Q, k)`` returns the top ``k`` over all segments by inner product, with
    token ids counted from the first segment's first token (as one index holding every token would number them)."""

    def __init__(self, parts: List):
        self.parts = parts
        self.offsets = np.cumsum([0] + [p.ntotal for p in parts])[:-1]
        self.ntotal = int(sum(p.ntotal for p in parts))
        self.d = parts[0].d

    @property
    def nprobe(self):
        return getattr(self.parts[0], 'nprobe', None)

    @nprobe.setter
    def nprobe(self, value: int):
        for p in self.parts:
            if hasattr(p, 'nprobe'):
                p.nprobe = int(value)

    def search(self, x: np.ndarray, k: int):
        x = np.ascontiguousarray(x, dtype=np.float32)
        dists, ids = [], []
        for part, off in zip(self.parts, self.offsets):
            D, I = part.search(x, k)
            dists.append(D)
            ids.append(np.where(I >= 0, I + off, -1))
        D, I = np.concatenate(dists, axis=1), np.concatenate(ids, axis=1)
        D = np.where(I >= 0, D, -np.inf)
        top = np.argsort(-D, axis=1, kind='stable')[:, :k]
        return np.take_along_axis(D, top, axis=1), np.take_along_axis(I, top, axis=1)
