"""Sharded corpus encoding: N processes (GPUs, nodes) encode a corpus for a dense FlexIndex or a ColBERT token index,
and one merge writes the index a single process would have built, bit for bit, where that build caches it.

Run it with torchrun (one process per GPU; several nodes need a folder they all see for the shards)::

    torchrun --nproc_per_node 4 -m pyterrier_knowacq.models.sharding dense --dataset msmarco-passage --model minilm-l6
    torchrun --nproc_per_node 4 -m pyterrier_knowacq.models.sharding colbert --dataset msmarco-passage \\
        --model path/to/colbert-checkpoint

Each rank encodes its chunks of the corpus (chunk ``c`` of ``chunk`` documents to rank ``c % world``, see
:mod:`~pyterrier_knowacq.models.shards`: the chunks, and so the batches, of the single-process build) on its own
device and writes its shard atomically; after a barrier rank 0 merges the shards in corpus order into the index and
removes them. Without ``--out`` the index goes where :func:`~pyterrier_knowacq.models.dense_index.dense_index` /
:func:`~pyterrier_knowacq.models.colbert_index.cached_index` keep it (the same content key: corpus fingerprint, model
fingerprint, encoding settings), so they use it as if they had built it; ``--out DIR`` writes it to ``DIR``.

Shards outlive a failure: a rerun encodes only the shards not yet written (same build key). Without torchrun,
``--rank R --world W`` encodes one shard (e.g. a job array) and ``--merge-only`` merges them. ``--dataset`` takes a
name or a JSON mapping (``'{"synthetic": {"passages": 200000, "queries": 100}}'``).
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import itertools
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional

from .._util import KnowacqError, atomic_directory
from .shards import ChunkCounter, merged_records, own_chunks, read_shard_meta, shard_name, write_shard

__all__ = ['Build', 'dense_build', 'colbert_build', 'encode_shard', 'merge_shards', 'run_sharded', 'main']


@dataclass
class Build:
    """One sharded index build: where the index goes, the key its shards carry, and how to encode and write."""
    kind: str                                           # 'dense' or 'colbert'
    out: Path                                           # the merged index folder
    key: str                                            # identifies corpus, model and encoding settings
    chunk: int                                          # documents per encoding chunk (the single-process chunks)
    field: str                                          # the encoder's output column ('doc_vec' / 'doc_embs')
    dtype: str                                          # how a shard stores it ('float32' / 'float16')
    records: Callable[[], Iterable[Dict]]               # a fresh corpus iterator
    encode: Callable[[List[Dict]], Iterable[Dict]]      # one chunk of records -> encoded records
    write: Callable[[Iterable[Dict]], None]             # the merged records -> the index at ``out``
    built: Callable[[], bool]                           # is the index at ``out`` complete?


def _key(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _dataset(dataset):
    from ..datasets.core import get_dataset
    if isinstance(dataset, str) and dataset.lstrip().startswith('{'):
        dataset = json.loads(dataset)
    return get_dataset(dataset)


def dense_build(dataset, model: str, *, pooling: Optional[str] = None, batch_size: int = 32, max_length: int = 256,
                out=None, device=None, verbose: bool = False) -> Build:
    """The sharded build of :func:`~.dense_index.dense_index`'s FlexIndex (same encoder, chunks and cache folder)."""
    import pyterrier_dr
    from .biencoder import BiEncoder
    from .dense_index import encoding_chunk, index_folder
    dataset = _dataset(dataset)
    encoder = BiEncoder.from_pretrained(model, pooling=pooling, batch_size=batch_size, max_length=max_length,
                                        verbose=verbose, **({'device': device} if device is not None else {}))
    folder = index_folder(dataset, model, encoder)
    out = Path(out) if out is not None else folder
    chunk = encoding_chunk(encoder.batch_size)
    doc_encoder = encoder.doc_encoder()

    def write(records):
        with atomic_directory(out, overwrite=True) as tmp:
            pyterrier_dr.FlexIndex(str(tmp), verbose=verbose).indexer(mode='overwrite').index(records)

    return Build('dense', out, _key({'dense': folder.name, 'batch_size': encoder.batch_size, 'chunk': chunk}), chunk,
                 'doc_vec', 'float32', dataset.get_corpus_iter, doc_encoder.transform_iter, write, out.exists)


def colbert_build(dataset, model, *, batch_size: int = 32, chunk_docs: int = 2048, max_docs: Optional[int] = None,
                  faiss_index: str = 'auto', out=None, device=None, verbose: bool = False) -> Build:
    """The sharded build of :func:`~.colbert_index.cached_index`'s ColBERT index (same encoder, chunks and folder)."""
    from .colbert_index import ColBERTIndex, _as_model, cache_path
    dataset = _dataset(dataset)
    model = _as_model(model)
    if device is not None:
        model = model.to(device)
    model.eval()
    folder = cache_path(dataset, model, max_docs)
    out = Path(out) if out is not None else folder
    doc_encoder = model.doc_encoder(batch_size=batch_size)

    def write(records):
        index = ColBERTIndex(out, model, batch_size=batch_size, chunk_docs=chunk_docs, faiss_index=faiss_index,
                             overwrite=True, verbose=verbose)
        index.indexer(model=model).index(records)

    key = _key({'colbert': folder.name, 'batch_size': batch_size, 'chunk': chunk_docs, 'max_docs': max_docs})
    return Build('colbert', out, key, int(chunk_docs), 'doc_embs', 'float16',
                 lambda: itertools.islice(dataset.get_corpus_iter(), max_docs), doc_encoder.transform_iter, write,
                 lambda: (out / 'meta.json').exists())


def _shards_dir(build: Build, shards_dir=None) -> Path:
    return Path(shards_dir) if shards_dir is not None else build.out.with_name(build.out.name + '.shards')


def encode_shard(build: Build, rank: int, world: int, shards_dir=None, verbose: bool = True) -> Path:
    """Encode rank ``rank``'s chunks of the corpus into its shard folder (kept when already there for this build)."""
    folder = _shards_dir(build, shards_dir) / shard_name(rank, world)
    done = read_shard_meta(folder)
    if done is not None and done['key'] == build.key:
        _say(verbose, f'rank {rank}/{world}: shard {folder.name} already encoded ({done["num_docs"]:,} documents)')
        return folder
    counter = ChunkCounter()
    encoded = (rec for part in own_chunks(build.records(), build.chunk, rank, world, counter)
               for rec in build.encode(part))
    meta = write_shard(folder, encoded, build.field, build.dtype, build.key, counter, rank, world, build.chunk,
                       {'kind': build.kind})
    _say(verbose, f'rank {rank}/{world}: encoded {meta["num_docs"]:,} of {meta["docs_total"]:,} documents '
                  f'({meta["chunks_total"]:,} chunks of {build.chunk}) into {folder}')
    return folder


def merge_shards(build: Build, shards_dir=None, keep_shards: bool = False, verbose: bool = True,
                 world: Optional[int] = None) -> Path:
    """Write the index at ``build.out`` from the shards (split ``world`` ways; ``None``: the split whose shards are
    all there), in corpus order; the shards are removed afterwards."""
    folder = _shards_dir(build, shards_dir)
    build.write(merged_records(folder, build.key, world))
    if not keep_shards:
        shutil.rmtree(folder, ignore_errors=True)
    _say(verbose, f'merged the shards of {folder.name} into {build.out}')
    return build.out


def run_sharded(build: Build, rank: int = 0, world: int = 1, *, shards_dir=None, encode: bool = True,
                merge: bool = True, keep_shards: bool = False, overwrite: bool = False,
                barrier: Optional[Callable[[], None]] = None, verbose: bool = True,
                merge_world: Optional[int] = None) -> Path:
    """Encode this rank's shard, wait for every rank (``barrier``), and merge on rank 0; a built index is kept.
    ``merge_world``: the split to merge when not encoding (default: the one whose shards are all there)."""
    if build.built() and not overwrite:
        _say(verbose and rank == 0, f'{build.out} is already built; nothing to do (--overwrite rebuilds it)')
        return build.out
    if encode:
        encode_shard(build, rank, world, shards_dir, verbose)
    if barrier is not None:
        barrier()
    if merge and rank == 0:
        merge_shards(build, shards_dir, keep_shards, verbose, world=world if encode else merge_world)
    if barrier is not None:
        barrier()
    return build.out


def _say(verbose: bool, text: str) -> None:
    if verbose:
        print(f'[knowacq] {text}', file=sys.stderr, flush=True)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='python -m pyterrier_knowacq.models.sharding',
                                description='Encode a corpus on several processes (torchrun) into a dense or ColBERT '
                                            'index identical to the single-process one.')
    sub = p.add_subparsers(dest='kind', required=True)
    for kind in ('dense', 'colbert'):
        s = sub.add_parser(kind)
        s.add_argument('--dataset', required=True, help='a dataset name, or a JSON mapping such as {"synthetic": {...}}')
        s.add_argument('--model', required=True, help='a model name, folder or hub id (colbert: a ColBERT checkpoint)')
        s.add_argument('--out', help='the index folder (default: the cache folder dense_index / cached_index use)')
        s.add_argument('--batch-size', type=int, default=32)
        s.add_argument('--shards', help='the shard folder (default: OUT.shards; on a filesystem every node sees)')
        s.add_argument('--device', help='default: cuda:LOCAL_RANK when there is a GPU, else cpu')
        s.add_argument('--rank', type=int, help='encode this shard without torchrun (with --world)')
        s.add_argument('--world', type=int)
        s.add_argument('--merge-only', action='store_true', help='merge shards already encoded')
        s.add_argument('--no-merge', action='store_true', help='encode only (merge later with --merge-only)')
        s.add_argument('--keep-shards', action='store_true')
        s.add_argument('--overwrite', action='store_true', help='rebuild an index that is already there')
        s.add_argument('--timeout-hours', type=float, default=48.0, help='how long a rank waits for the others')
        s.add_argument('--quiet', action='store_true')
        if kind == 'dense':
            s.add_argument('--pooling')
            s.add_argument('--max-length', type=int, default=256)
        else:
            s.add_argument('--chunk-docs', type=int, default=2048)
            s.add_argument('--max-docs', type=int)
            s.add_argument('--faiss-index', default='auto', choices=['auto', 'flat', 'ivfpq'])
    return p


#: oneDNN (torch's CPU matmuls) caches a primitive per matrix shape; unpadded (packed) inference makes a new shape for
#: nearly every batch, so over a corpus the cache only grows the process (benchmarks/bench_streaming.py, 200k passages:
#: +90 MB dense, +115 MB ColBERT), for no speed. oneDNN reads it at its first matmul: set before any encoding.
ONEDNN_CACHE = ('ONEDNN_PRIMITIVE_CACHE_CAPACITY', '0')


def main(argv=None) -> int:
    os.environ.setdefault(*ONEDNN_CACHE)
    args = _parser().parse_args(argv)
    env_world = int(os.environ.get('WORLD_SIZE', '1'))
    rank = args.rank if args.rank is not None else int(os.environ.get('RANK', '0'))
    world = args.world if args.world is not None else env_world
    if not 0 <= rank < world:
        raise SystemExit(f'--rank {rank} is not in 0..{world - 1} (--world {world})')
    barrier = None
    if args.rank is None and env_world > 1 and not args.merge_only:
        import torch.distributed as dist
        if not dist.is_initialized():
            dist.init_process_group('gloo', timeout=datetime.timedelta(hours=args.timeout_hours))
        barrier = dist.barrier
    device = args.device
    if device is None:
        import torch
        device = f'cuda:{int(os.environ.get("LOCAL_RANK", rank))}' if torch.cuda.is_available() else 'cpu'
    verbose = not args.quiet
    merge = not args.no_merge and (args.rank is None or args.merge_only)
    try:
        if args.kind == 'dense':
            build = dense_build(args.dataset, args.model, pooling=args.pooling, batch_size=args.batch_size,
                                max_length=args.max_length, out=args.out, device=device)
        else:
            build = colbert_build(args.dataset, args.model, batch_size=args.batch_size, chunk_docs=args.chunk_docs,
                                  max_docs=args.max_docs, faiss_index=args.faiss_index, out=args.out, device=device)
        run_sharded(build, rank, world, shards_dir=args.shards, encode=not args.merge_only, merge=merge,
                    keep_shards=args.keep_shards, overwrite=args.overwrite, barrier=barrier, verbose=verbose,
                    merge_world=args.world)
    except KnowacqError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    finally:
        if barrier is not None:
            import torch.distributed as dist
            dist.destroy_process_group()
    if rank == 0 and verbose:
        print(build.out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
