"""Streaming index builds: peak memory stays flat in the corpus size (goal: peak RSS at 200k passages <= 1.15x the
peak at 20k), for the dense FlexIndex (:func:`~pyterrier_knowacq.models.dense_index.dense_index`) and the ColBERT
token index (:func:`~pyterrier_knowacq.models.colbert_index.cached_index`).

A benchmark, not a unit test (several minutes on 2 cores). Each (index, size) is built in a fresh process, through the
same calls as a real run, from a synthetic collection (``{synthetic: {passages: N}}``, generated beforehand so that
generating it is not measured) with tiny models (``tiny-bert``; ColBERT: ``tiny-bert`` with a seeded 32-dim
projection), oneDNN's primitive cache off (:data:`ONEDNN`) unless the environment sets it. The child process meters the build with :class:`~pyterrier_knowacq._resources.ResourceLog` (sampled RSS
plus the kernel's high-water mark ``VmHWM``): ``start_rss_mb`` (after the imports and the model), ``peak_rss_mb`` and
``growth_mb`` (peak - start). ``benchmarks/results/streaming.json`` (atomic) holds every run, the ratios of the
peaks, and whether the goal is met::

    .venv/bin/python benchmarks/bench_streaming.py               # or: pytest benchmarks/bench_streaming.py -s
    BENCH_STREAMING_SIZES=2000,20000 .venv/bin/python benchmarks/bench_streaming.py   # a quick look
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SIZES = tuple(int(s) for s in os.environ.get('BENCH_STREAMING_SIZES', '20000,200000').split(','))
KINDS = ('dense', 'colbert')
GOAL = 1.15
QUERIES = 100
COLBERT_DIM = 32
#: oneDNN's primitive cache (one entry per matrix shape, so it fills as packed inference meets new batch shapes) grows
#: the process with the number of batches until its 1024 entries are full: 0, as the sharding entry point sets it
#: (``ONEDNN_PRIMITIVE_CACHE_CAPACITY=1024`` measures oneDNN's default)
ONEDNN = 'ONEDNN_PRIMITIVE_CACHE_CAPACITY'


def _spec(n: int) -> dict:
    return {'synthetic': {'passages': n, 'queries': QUERIES}}


def child(kind: str, n: int, colbert_folder: str) -> dict:
    """Build one index in this (fresh) process and return its metered stage."""
    from pyterrier_knowacq._resources import ResourceLog
    from pyterrier_knowacq.datasets.core import get_dataset
    dataset = get_dataset(_spec(n))
    dataset.prepare(verbose=False)
    if kind == 'dense':
        from pyterrier_knowacq.models.biencoder import BiEncoder
        from pyterrier_knowacq.models.dense_index import dense_index
        BiEncoder.from_pretrained('tiny-bert', verbose=False)            # imports and weights before the meter

        def build():
            _, index = dense_index(dataset, 'tiny-bert', batch_size=32, max_length=256, verbose=False)
            return {'docs': len(index), 'index_mb': (Path(index.index_path) / 'vecs.f4').stat().st_size / 2 ** 20}
    else:
        from pyterrier_knowacq.models.colbert import ColBERTModel
        from pyterrier_knowacq.models.colbert_index import cached_index
        model = ColBERTModel.from_pretrained(colbert_folder)

        def build():
            index = cached_index(dataset, model, batch_size=32)
            index.verbose = False
            meta = index.meta()
            size = sum(p.stat().st_size for p in index.path.iterdir()) / 2 ** 20
            return {'docs': meta['num_docs'], 'tokens': meta['num_tokens'], 'faiss': meta['faiss'],
                    'index_mb': round(size, 1)}
    log = ResourceLog()
    with log.stage('build') as record:
        info = build()
    return {'kind': kind, 'passages': n, **record, 'growth_mb': round(record['peak_rss_mb'] - record['start_rss_mb'], 1),
            **info}


def main() -> dict:
    from pyterrier_knowacq._util import atomic_write_json
    from pyterrier_knowacq.models.backbones import resolve_model
    root = Path(tempfile.mkdtemp(prefix='knowacq-bench-streaming-'))
    try:
        cache = root / 'cache'
        (cache / 'models').mkdir(parents=True)
        os.symlink(resolve_model('tiny-bert'), cache / 'models' / 'tiny-bert')
        env = dict(os.environ, KNOWACQ_CACHE=str(cache), HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1',
                   TOKENIZERS_PARALLELISM='false')
        env.setdefault(ONEDNN, '0')
        os.environ['KNOWACQ_CACHE'] = str(cache)
        from pyterrier_knowacq.datasets.core import get_dataset
        from pyterrier_knowacq.models.colbert import ColBERTModel
        for n in SIZES:                                                    # generated once, outside the meter
            get_dataset(_spec(n)).prepare(verbose=False)
        colbert_folder = root / 'colbert-tiny'
        ColBERTModel.new('tiny-bert', dim=COLBERT_DIM, seed=0).save(colbert_folder)
        runs = []
        for kind in KINDS:
            for n in SIZES:
                t0 = time.perf_counter()
                proc = subprocess.run([sys.executable, __file__, '--child', kind, str(n), str(colbert_folder)],
                                      env=env, capture_output=True, text=True)
                if proc.returncode != 0:
                    raise RuntimeError(f'{kind} at {n}: {proc.stderr[-3000:]}')
                run = json.loads(proc.stdout.strip().splitlines()[-1])
                run['process_s'] = round(time.perf_counter() - t0, 1)
                runs.append(run)
                print(f'{kind:8s} {n:>8,} passages: peak {run["peak_rss_mb"]:7.1f} MB (start {run["start_rss_mb"]:.1f}, '
                      f'+{run["growth_mb"]:.1f}), build {run["wall_s"]:.0f} s', flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    small, large = min(SIZES), max(SIZES)
    ratios = {}
    for kind in KINDS:
        peak = {r['passages']: r['peak_rss_mb'] for r in runs if r['kind'] == kind}
        ratios[kind] = round(peak[large] / peak[small], 3)
    result = {'benchmark': 'streaming', 'goal': {'max_peak_ratio': GOAL, 'sizes': [small, large],
                                                 'met': all(v <= GOAL for v in ratios.values())},
              'peak_ratio': ratios, 'runs': runs, 'env': {ONEDNN: env[ONEDNN]},
              'models': {'dense': 'tiny-bert (cls, max_length 256, batch 32)',
                         'colbert': f'tiny-bert + seeded {COLBERT_DIM}-dim projection (doc_maxlen 180, batch 32)'},
              'machine': {'platform': platform.platform(), 'python': platform.python_version(), 'cpus': os.cpu_count()},
              'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}
    out = Path(os.environ.get('BENCH_RESULTS_DIR', HERE / 'results')) / 'streaming.json'
    atomic_write_json(out, result)
    print(json.dumps({'peak_ratio': ratios, 'goal_met': result['goal']['met'], 'written': str(out)}))
    return result


def test_streaming_memory(benchmark):
    """Under pytest (skipped with --benchmark-disable): one run of :func:`main`."""
    result = benchmark.pedantic(main, rounds=1, iterations=1)
    assert set(result['peak_ratio']) == set(KINDS)


if __name__ == '__main__':
    if len(sys.argv) > 1 and sys.argv[1] == '--child':
        print(json.dumps(child(sys.argv[2], int(sys.argv[3]), sys.argv[4])))
    else:
        main()
