"""Shards of a corpus encoding: which documents a rank encodes, how it stores them, and reading all shards back in
corpus order.

The corpus is cut into chunks of ``chunk`` documents in corpus order (chunk ``c`` holds documents
``c * chunk .. (c + 1) * chunk - 1``), exactly the chunks a single-process build encodes (each chunk is
length-sorted into batches, so a vector depends on the other documents of its chunk through padding). Chunk ``c``
goes to rank ``c % world``: every rank reads the whole corpus iterator (cheap) and encodes only its own chunks, so
each document is encoded in the same batch as in a single-process build and its vector is the same, bit for bit.

A shard is a folder ``shard-<rank>-of-<world>`` written atomically (it appears complete or not at all): ``data.bin``
(each document's rows, ``dtype``), ``rows.u32`` (rows per document), ``docnos.txt`` and ``shard.json`` (the build key,
chunking, totals). :func:`merged_records` checks that the shards belong together and streams
``{'docno', field}`` records in corpus order (chunk ``c`` from shard ``c % world``), holding one chunk at a time.

Example::

    counter = ChunkCounter()
    encoded = (rec for chunk in own_chunks(corpus, 100, rank, world, counter) for rec in encode(chunk))
    write_shard(folder / shard_name(rank, world), encoded, 'doc_vec', 'float32', key, counter, rank, world, 100)
    index.indexer().index(merged_records(folder, key))
"""
from __future__ import annotations

import array
import json
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional

import numpy as np

from .._util import KnowacqError, atomic_directory, atomic_write_json

__all__ = ['SHARD_FORMAT', 'ChunkCounter', 'own_chunks', 'shard_name', 'write_shard', 'read_shard_meta',
           'shard_metas', 'merged_records']

SHARD_FORMAT = 'pyterrier_knowacq.models.shards/1'


def shard_name(rank: int, world: int) -> str:
    return f'shard-{int(rank):05d}-of-{int(world):05d}'


class ChunkCounter:
    """The chunks and documents of the whole corpus seen by :func:`own_chunks` (every rank sees them all)."""

    def __init__(self):
        self.chunks, self.docs = 0, 0


def own_chunks(records: Iterable[Dict], chunk: int, rank: int, world: int,
               counter: Optional[ChunkCounter] = None) -> Iterator[List[Dict]]:
    """This rank's chunks of ``records`` (chunk ``c`` to rank ``c % world``), one list of ``chunk`` records at a time."""
    if chunk < 1 or world < 1 or not 0 <= rank < world:
        raise KnowacqError(f'bad sharding: chunk {chunk}, rank {rank}, world {world} (need chunk >= 1, 0 <= rank < world)')
    counter = counter if counter is not None else ChunkCounter()
    batch: List[Dict] = []
    for rec in records:
        batch.append(rec)
        if len(batch) == chunk:
            if counter.chunks % world == rank:
                yield batch
            counter.chunks, counter.docs = counter.chunks + 1, counter.docs + len(batch)
            batch = []
    if batch:
        if counter.chunks % world == rank:
            yield batch
        counter.chunks, counter.docs = counter.chunks + 1, counter.docs + len(batch)


def write_shard(folder: Path, encoded: Iterable[Dict], field: str, dtype: str, key: str, counter: ChunkCounter,
                rank: int, world: int, chunk: int, info: Optional[Dict] = None) -> Dict:
    """Store the ``docno`` and ``field`` (an array ``[dim]`` or ``[rows, dim]``) of each encoded record in the shard
    folder ``folder`` (atomically); returns its ``shard.json``. ``counter`` must have seen the whole corpus when
    ``encoded`` is exhausted (it is :func:`own_chunks`' counter)."""
    folder = Path(folder)
    dt = np.dtype(dtype)
    with atomic_directory(folder, overwrite=True) as tmp:
        num_docs, num_rows, dim, ndim = 0, 0, None, None
        rows = array.array('I')
        with open(tmp / 'data.bin', 'wb') as f_data, open(tmp / 'rows.u32', 'wb') as f_rows, \
                open(tmp / 'docnos.txt', 'w', encoding='utf-8', newline='\n') as f_docno:
            for rec in encoded:
                docno, arr = rec.get('docno'), rec.get(field)
                if not isinstance(docno, str) or not docno or '\n' in docno:
                    raise KnowacqError(f'a sharded build needs string docnos without newlines; got {docno!r:.80}')
                if arr is None:
                    raise KnowacqError(f'the encoder gave document {docno!r} no {field}')
                arr = np.asarray(arr)
                if dim is None:
                    dim, ndim = int(arr.shape[-1]), arr.ndim
                if arr.ndim != ndim or arr.shape[-1] != dim:
                    raise KnowacqError(f'{field} of {docno!r} has shape {arr.shape}; the shard holds [{dim}] rows')
                arr = arr.reshape(-1, dim)
                f_data.write(np.ascontiguousarray(arr, dtype=dt).tobytes())
                f_docno.write(docno + '\n')
                rows.append(arr.shape[0])
                num_docs, num_rows = num_docs + 1, num_rows + arr.shape[0]
                if len(rows) >= 65536:
                    f_rows.write(rows.tobytes())
                    rows = array.array('I')
            f_rows.write(rows.tobytes())
        meta = {'format': SHARD_FORMAT, 'key': key, 'rank': int(rank), 'world': int(world), 'chunk': int(chunk),
                'field': field, 'dtype': dt.name, 'dim': dim, 'ndim': ndim, 'num_docs': num_docs, 'num_rows': num_rows,
                'chunks_total': counter.chunks, 'docs_total': counter.docs, **(info or {})}
        atomic_write_json(tmp / 'shard.json', meta)
    return meta


def read_shard_meta(folder: Path) -> Optional[Dict]:
    """``shard.json`` of a complete shard folder, or ``None``."""
    path = Path(folder) / 'shard.json'
    if not path.exists():
        return None
    meta = json.loads(path.read_text())
    return meta if meta.get('format') == SHARD_FORMAT else None


def _expected_docs(meta: Dict) -> int:
    """The documents shard ``rank`` must hold: its chunks' sizes (the last chunk of the corpus may be short)."""
    chunk, total, rank, world = meta['chunk'], meta['docs_total'], meta['rank'], meta['world']
    return sum(min(chunk, total - c * chunk) for c in range(rank, meta['chunks_total'], world))


def shard_metas(shards_dir: Path, key: str, world: Optional[int] = None) -> List[Dict]:
    """The ``shard.json`` of every shard of the build ``key`` split ``world`` ways in ``shards_dir``, rank order,
    checked to belong together: all ranks present, the same chunking and corpus totals, each shard holding its chunks'
    documents. ``world=None``: the one split whose shards are all there."""
    shards_dir = Path(shards_dir)
    metas = [m for m in (read_shard_meta(p) for p in sorted(shards_dir.glob('shard-*-of-*'))) if m is not None]
    fix = 'run the encoding again (it re-encodes only the missing shards)'
    if not metas:
        raise KnowacqError(f'no complete shard in {shards_dir}; {fix}')
    stale = [m for m in metas if m['key'] != key]
    metas = [m for m in metas if m['key'] == key]
    if not metas:
        raise KnowacqError(f'the shards in {shards_dir} belong to another build (corpus, model or settings) than this '
                           f'one; remove the folder and {fix}')
    groups: Dict[int, List[Dict]] = {}
    for m in metas:
        groups.setdefault(m['world'], []).append(m)
    if world is None:
        complete = [w for w, ms in groups.items() if {m['rank'] for m in ms} == set(range(w))]
        if len(complete) > 1:
            raise KnowacqError(f'{shards_dir} holds complete shards of this build split {sorted(complete)} ways; '
                               'name the split to merge (--world N)')
        world = complete[0] if complete else max(groups, key=lambda w: len(groups[w]) / w)
    metas = groups.get(world, [])
    missing = sorted(set(range(world)) - {m['rank'] for m in metas})
    if missing:
        raise KnowacqError(f'{shards_dir} lacks the shards of ranks {missing[:8]} of {world}; {fix}'
                           + (f' ({len(stale)} shards of another build ignored)' if stale else ''))
    metas.sort(key=lambda m: m['rank'])
    for name in ('chunk', 'chunks_total', 'docs_total', 'field', 'dtype'):
        values = {m[name] for m in metas}
        if len(values) != 1:
            raise KnowacqError(f'the shards in {shards_dir} disagree on {name} ({sorted(map(str, values))}): they read '
                               f'different corpora or settings; {fix}')
    dims = {m['dim'] for m in metas if m['num_docs']}
    if len(dims) > 1:
        raise KnowacqError(f'the shards in {shards_dir} hold vectors of {sorted(dims)} dims; {fix}')
    for m in metas:
        if m['num_docs'] != _expected_docs(m):
            raise KnowacqError(f'shard {m["rank"]} of {world} holds {m["num_docs"]} documents, not the '
                               f'{_expected_docs(m)} of its chunks; {fix}')
    return metas


class _ShardReader:
    def __init__(self, folder: Path, meta: Dict, dim: int, ndim: int):
        self.meta, self.dim, self.ndim = meta, dim, ndim
        self.dtype = np.dtype(meta['dtype'])
        self.f_data = open(folder / 'data.bin', 'rb')
        self.f_rows = open(folder / 'rows.u32', 'rb')
        self.f_docno = open(folder / 'docnos.txt', 'r', encoding='utf-8', newline='\n')

    def take(self, field: str, n: int) -> Iterator[Dict]:
        rows = np.fromfile(self.f_rows, dtype=np.uint32, count=n).astype(np.int64)
        if len(rows) != n:
            raise KnowacqError(f'shard {self.meta["rank"]} ended early; remove it and encode it again')
        data = np.frombuffer(self.f_data.read(int(rows.sum()) * self.dim * self.dtype.itemsize), dtype=self.dtype)
        data = data.reshape(-1, self.dim)
        ends = np.cumsum(rows)
        for end, count in zip(ends, rows):
            docno = self.f_docno.readline()[:-1]
            vec = data[end - count:end]
            yield {'docno': docno, field: vec[0] if self.ndim == 1 else vec}

    def close(self):
        for f in (self.f_data, self.f_rows, self.f_docno):
            f.close()


def merged_records(shards_dir: Path, key: str, world: Optional[int] = None) -> Iterator[Dict]:
    """``{'docno', field}`` records of every shard of build ``key`` (split ``world`` ways; ``None``: the complete
    split), in corpus order (see the module docstring)."""
    shards_dir = Path(shards_dir)
    metas = shard_metas(shards_dir, key, world)
    first = metas[0]
    world, chunk, total, field = first['world'], first['chunk'], first['docs_total'], first['field']
    shaped = [m for m in metas if m['num_docs']]
    dim, ndim = (shaped[0]['dim'], shaped[0]['ndim']) if shaped else (1, 1)
    readers = [_ShardReader(shards_dir / shard_name(m['rank'], world), m, dim, ndim) for m in metas]
    try:
        for c in range(first['chunks_total']):
            yield from readers[c % world].take(field, min(chunk, total - c * chunk))
    finally:
        for r in readers:
            r.close()
