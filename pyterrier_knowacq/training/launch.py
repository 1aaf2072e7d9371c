"""Train one model spec in several processes (DDP): ``processes: 2`` in a ``models:`` entry of an experiment file.

The runner (``experiments.fold_training._train_models``) hands such a spec to :func:`train_in_processes`, which

1. builds, in this process, everything the ranks would otherwise race to build in the shared cache: the dataset's
   files (a synthetic docstore, a teacher), the PISA index where the spec trains on BM25 candidates, the packaged
   backbones the spec names;
2. runs ``python -m torch.distributed.run --nproc_per_node N -m pyterrier_knowacq.training.launch JOB.json`` (gloo on
   CPU, NCCL on GPUs; ``OMP_NUM_THREADS`` = cores / N), streaming its output;
3. returns the trained folder rank 0 reports, after checking that every rank trained the same model.

Each rank calls the model kind's own trainer (``train_model``, ``train_biencoder``, ``train_colbert``, through
:func:`~.registry.train`) with the same arguments as a single-process run; :class:`~.trainer.Trainer` shards the batches and all-reduces the gradients. Only
rank 0 writes the model: the other ranks wait until rank 0 has put each trained stage into place and write nothing
(their copy of the cache folder would replace the one rank 0 is reading). Every rank leaves
``JOB/rank<r>.json`` (``{rank, world_size, folder, runs: [{steps, losses, first_batch, seconds}]}``) and the parent
writes ``<output_dir>/launch.json`` with all of them: the evidence that each rank trained on its own shard.

Example (what the runner does for ``processes: 2``)::

    folder = train_in_processes('cross-encoder', spec, dataset=config['dataset'], train_split='train',
                                output_dir=out, seed=42, processes=2)
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from .._util import KnowacqError, atomic_write_json

__all__ = ['PROCESSES_KEY', 'pop_processes', 'train_in_processes', 'main']

#: the model spec key the runner consumes (the trainers never see it)
PROCESSES_KEY = 'processes'
#: seconds a rank other than 0 waits for rank 0 to put a trained stage into place
WAIT_S = 3600


def pop_processes(spec: Dict[str, Any]) -> Tuple[Dict[str, Any], int]:
    """``(spec without processes, processes)``; ``processes`` must be a whole number >= 1 (default 1)."""
    spec = dict(spec or {})
    value = spec.pop(PROCESSES_KEY, 1)
    if value is None:
        value = 1
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise KnowacqError(f'processes is {value!r:.40}; write the number of training processes (DDP ranks) as a whole '
                           'number >= 1, e.g. processes: 2')
    return spec, int(value)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _prepare(kind: str, spec: Dict[str, Any], dataset, train_split, dry_run: bool) -> None:
    """Build in this process what every rank would otherwise build at once in the shared cache."""
    from ..models.backbones import _locate, resolve_model
    if hasattr(dataset, 'prepare'):
        dataset.prepare()
    names = [spec.get(f) for f in ('backbone', 'query_backbone', 'init')]
    if dry_run and kind == 'bi-encoder':     # a dry run swaps these backbones for tiny ones
        from .dense import _dry_backbone
        names = [_dry_backbone(n) if isinstance(n, str) and n else n for n in names]
    elif dry_run and kind == 'colbert':
        names = ['tiny-bert']
    for name in names:
        if isinstance(name, str) and name:
            try:
                if _locate(name)[0] in ('alias', 'random', 'adapter'):
                    resolve_model(name)     # packaged and derived models are materialised once, here
            except KnowacqError:
                pass                        # the trainer reports it, with its own context
    if kind == 'cross-encoder':     # ranknet stages read their teacher; the others a first-stage run (default bm25)
        datas = [dict(st.get('data') or {}) for st in spec.get('stages') or [] if isinstance(st, dict)]
        runs = [d.get('run', 'bm25') for d in datas if not d.get('teacher')]
    else:
        datas = [dict(spec.get('data') or {})]
        runs = [datas[0].get('run', 'bm25')]
    if isinstance(spec.get('validation'), dict):
        runs.append(spec['validation'].get('run', 'bm25'))
    if 'bm25' in runs and 'bm25' not in (dataset.run_names(train_split) or []):
        from ..models.first_stage import pisa_index
        pisa_index(dataset)
    for d in datas:
        teachers = d.get('teacher') if isinstance(d, dict) else None
        for t in ([teachers] if isinstance(teachers, str) else list(teachers or [])):
            if isinstance(t, str) and not Path(t).expanduser().exists():
                with contextlib.suppress(KnowacqError):
                    dataset.get_run(t, train_split)   # e.g. a synthetic dataset's teacher, converted once


def train_in_processes(kind: str, spec: Dict[str, Any], *, dataset, train_split, output_dir, seed: int = 42,
                       dry_run: bool = False, processes: int = 2, timeout: Optional[float] = None) -> Path:
    """Train ``spec`` (a ``models:`` entry without ``kind``/``processes``) in ``processes`` DDP ranks; returns the
    trained folder. ``dataset`` is the dataset *spec* (a name, ``irds:``/``beir:`` string or mapping), which each rank
    opens itself."""
    from ..datasets.core import get_dataset
    from .registry import TRAINERS
    TRAINERS.get_entry(kind)    # an unknown kind: one error naming the closest
    spec, _ = pop_processes(spec)   # (the runner passes it as ``processes``)
    processes = int(processes)
    if processes < 1:
        raise KnowacqError(f'processes is {processes}; give a whole number >= 1')
    ds = get_dataset(dataset)
    _prepare(kind, spec, ds, train_split, dry_run)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    job_dir = Path(tempfile.mkdtemp(prefix='.launch-', dir=output_dir))
    threads = max(1, _cores() // processes)
    job = {'kind': kind, 'spec': spec, 'dataset': dataset, 'train_split': train_split, 'seed': int(seed),
           'dry_run': bool(dry_run), 'output_dir': str(output_dir), 'threads': threads, 'job_dir': str(job_dir)}
    atomic_write_json(job_dir / 'job.json', job)
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM='false',
               PYTHONPATH=os.pathsep.join([package_root] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]))
    command = [sys.executable, '-m', 'torch.distributed.run', '--nnodes', '1', '--nproc_per_node', str(processes),
               '--master_addr', '127.0.0.1', '--master_port', str(_free_port()),
               '-m', 'pyterrier_knowacq.training.launch', str(job_dir / 'job.json')]
    print(f'[knowacq] training in {processes} processes (DDP, {threads} thread(s) each): {" ".join(command[2:])}',
          flush=True)
    started = time.time()
    tail: deque = deque(maxlen=40)
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1)
    try:
        for line in proc.stdout:
            tail.append(line.rstrip('\n'))
            sys.stdout.write(line)
        code = proc.wait(timeout=timeout)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    ranks = []
    for r in range(processes):
        f = job_dir / f'rank{r}.json'
        ranks.append(json.loads(f.read_text()) if f.exists() else {'rank': r, 'ok': False, 'error': 'no report'})
    bad = [r for r in ranks if not r.get('ok')]
    if code != 0 or bad:
        detail = next((r.get('error') for r in bad if r.get('error') and r.get('error') != 'no report'), None)
        detail = ' '.join((detail or '\n'.join(list(tail)[-8:])).split())[-900:]
        raise KnowacqError(f'training in {processes} processes failed (exit status {code}): {detail}; see the output '
                           f'above and {job_dir}')
    folders = {r['folder'] for r in ranks}
    if len(folders) != 1:
        raise KnowacqError(f'the {processes} training processes returned different models ({sorted(folders)}); they must '
                           'train the same spec on the same data')
    folder = Path(ranks[0]['folder'])
    summary = {'processes': processes, 'threads_per_process': threads, 'kind': kind, 'folder': str(folder),
               'wall_s': round(time.time() - started, 2), 'command': command[2:], 'ranks': ranks}
    atomic_write_json(output_dir / 'launch.json', summary)
    import shutil
    shutil.rmtree(job_dir, ignore_errors=True)
    return folder


# -- the worker (one per rank, started by torch.distributed.run) ---------------------------------------------------

@contextlib.contextmanager
def _discarded_directory(path, overwrite: bool = False):
    """``atomic_directory`` for ranks other than 0: a private folder, removed afterwards (rank 0 writes the model)."""
    import shutil
    tmp = Path(tempfile.mkdtemp(prefix=f'.rank{os.environ.get("RANK", "?")}-discard-'))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _final_of(work: Path) -> Optional[Path]:
    """The cache folder a trainer moves ``<key>.work``'s model into (``<key>``), or ``None`` for another layout."""
    return work.with_name(work.name[:-len('.work')]) if work.name.endswith('.work') else None


def _instrument(runs: list, rank: int, module=None) -> None:
    """Record each ``Trainer.train`` of this rank; ranks other than 0 wait for rank 0's model and write nothing (the
    cached-training path's ``atomic_directory``, and ``module``'s if it has one, write into a discarded folder)."""
    import dataclasses
    from . import cached
    from . import trainer as trainer_module
    original = trainer_module.Trainer.train

    def train(self):
        batches = self.task.batches(0, self.rank, self.world_size)
        first = self.task.batch_ids(batches[0]) if batches and hasattr(self.task, 'batch_ids') else None
        t0 = time.time()
        result = original(self)
        runs.append({'rank': self.rank, 'world_size': self.world_size, 'steps': result.steps,
                     'batches_per_epoch': len(batches), 'first_batch': first,
                     'losses': [h.get('loss') for h in result.history if 'loss' in h],
                     'seconds': round(time.time() - t0, 2)})
        if self.rank == 0:
            return result
        final = _final_of(Path(self.output_dir))
        if final is not None:       # rank 0 copies the model into place, then removes the work folder
            deadline = time.time() + WAIT_S
            while not (final / 'knowacq.json').exists():
                if time.time() > deadline:
                    raise KnowacqError(f'rank {self.rank}: rank 0 did not put the model into {final} within {WAIT_S} s')
                time.sleep(0.05)
        empty = Path(tempfile.mkdtemp(prefix=f'.rank{self.rank}-empty-'))
        return dataclasses.replace(result, model_dir=empty, final_dir=empty, best_dir=None)

    trainer_module.Trainer.train = train
    if rank != 0:
        cached.atomic_directory = _discarded_directory
        if module is not None and hasattr(module, 'atomic_directory'):
            module.atomic_directory = _discarded_directory


def main(argv=None) -> int:
    import importlib
    import traceback
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print('usage: python -m torch.distributed.run --nproc_per_node N -m pyterrier_knowacq.training.launch JOB.json',
              file=sys.stderr)
        return 2
    job = json.loads(Path(args[0]).read_text())
    rank, world = int(os.environ.get('RANK', '0')), int(os.environ.get('WORLD_SIZE', '1'))
    report = {'rank': rank, 'world_size': world, 'pid': os.getpid(), 'ok': False, 'runs': []}
    try:
        import torch
        torch.set_num_threads(int(job['threads']))
        from ..datasets.core import get_dataset
        from .registry import TRAINERS, train
        _instrument(report['runs'], rank, importlib.import_module(TRAINERS.get_entry(job['kind']).module))
        started = time.time()
        folder = train(job['kind'], copy.deepcopy(job['spec']), dataset=get_dataset(job['dataset']),
                       train_split=job['train_split'], output_dir=job['output_dir'] if rank == 0 else None,
                       seed=int(job['seed']), dry_run=bool(job['dry_run']))
        report.update(ok=True, folder=str(folder), seconds=round(time.time() - started, 2))
        return 0
    except BaseException as e:  # noqa: BLE001 - reported to the parent, then re-raised (torchrun stops the others)
        report['error'] = f'rank {rank}: {type(e).__name__}: {e}'
        report['traceback'] = traceback.format_exc()[-4000:]
        raise
    finally:
        atomic_write_json(Path(job['job_dir']) / f'rank{rank}.json', report)


if __name__ == '__main__':
    sys.exit(main())
