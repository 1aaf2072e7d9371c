"""Wall time and peak memory per stage of a run (training of each model, each system per collection, index builds).

A :class:`ResourceLog` records, for each stage run under :meth:`ResourceLog.stage` (or the module-level :func:`stage`
while the log is active), ``{"wall_s", "peak_rss_mb", "start_rss_mb"}``: the peak is the largest resident set size of
this process plus all its children (DDP ranks, torchrun) seen by a sampling thread every 0.1 s, and, for this process
alone, the kernel's own high-water mark (``VmHWM``, reset at each stage start where Linux allows), so a spike between
two samples is not missed. RSS counts each process's shared pages (the torch libraries of two DDP ranks) once per
process. ``knowacq run`` writes the log into meta.json under ``resources`` and prints :meth:`ResourceLog.table`.

Example::

    log = ResourceLog()
    with log.active():
        with stage('index: PISA'):
            build_index()
    print(log.table())
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Dict, Iterator, List, Optional

__all__ = ['ResourceLog', 'stage', 'current', 'rss_mb']

_MB = 1024 * 1024
INTERVAL_S = 0.1
_active: List['ResourceLog'] = []


def _process():
    import psutil
    return psutil.Process(os.getpid())


def rss_mb(children: bool = True) -> float:
    """The resident set size of this process (plus its children) now, in MiB."""
    return _tree_rss(_process(), children) / _MB


def _tree_rss(proc, children: bool = True) -> int:
    import psutil
    total = proc.memory_info().rss
    if children:
        for child in proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
    return total


def _reset_hwm() -> bool:
    """Reset this process's peak RSS (``VmHWM``) so that it measures from now on (Linux >= 4.0)."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


def _hwm_bytes() -> Optional[int]:
    try:
        with open('/proc/self/status', encoding='ascii') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class _Sampler(threading.Thread):
    def __init__(self, proc):
        super().__init__(name='knowacq-rss-sampler', daemon=True)
        self.proc, self.peak, self._stop_event = proc, _tree_rss(proc), threading.Event()

    def run(self):
        while not self._stop_event.wait(INTERVAL_S):
            try:
                self.peak = max(self.peak, _tree_rss(self.proc))
            except Exception:  # noqa: BLE001 - a process gone between listing and reading: the next sample counts
                pass

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        try:
            self.peak = max(self.peak, _tree_rss(self.proc))
        except Exception:  # noqa: BLE001
            pass
        return self.peak


class ResourceLog:
    """Per-stage ``{wall_s, peak_rss_mb, start_rss_mb}`` in the order the stages started (see the module docstring).

    A stage name seen twice gets ``#2``, ``#3``, ...; a stage that raised is recorded with ``"failed": true``; extra
    keyword arguments of :meth:`stage` are stored with the stage (e.g. ``processes=2``)."""

    def __init__(self):
        self.stages: Dict[str, dict] = {}
        self.started = time.time()

    @contextlib.contextmanager
    def active(self) -> Iterator['ResourceLog']:
        """Make this log the one :func:`stage` records into (nested logs: the innermost)."""
        _active.append(self)
        try:
            yield self
        finally:
            _active.remove(self)

    @contextlib.contextmanager
    def stage(self, name: str, **extra) -> Iterator[dict]:
        """Meter the block as stage ``name``; yields its record (filled in when the block ends)."""
        key, n = str(name), 1
        while key in self.stages:
            n += 1
            key = f'{name} #{n}'
        record: dict = {}
        self.stages[key] = record
        try:
            proc = _process()
        except Exception:  # noqa: BLE001 - psutil missing: time only
            proc = None
        sampler = _Sampler(proc) if proc is not None else None
        start_rss = sampler.peak if sampler is not None else None
        hwm_ok = _reset_hwm() if proc is not None else False
        if sampler is not None:
            sampler.start()
        t0 = time.perf_counter()
        failed = True
        try:
            yield record
            failed = False
        finally:
            wall = time.perf_counter() - t0
            peak = sampler.stop() if sampler is not None else None
            hwm = _hwm_bytes() if hwm_ok else None
            if peak is not None and hwm is not None:
                peak = max(peak, hwm)
            record.update({'wall_s': round(wall, 3),
                           'peak_rss_mb': None if peak is None else round(peak / _MB, 1),
                           'start_rss_mb': None if start_rss is None else round(start_rss / _MB, 1), **extra})
            if failed:
                record['failed'] = True

    def as_dict(self) -> Dict[str, dict]:
        return {k: dict(v) for k, v in self.stages.items() if v}

    def table(self, title: str = 'resources per stage') -> str:
        """The stages as a text table: stage, wall time, peak RSS (process + children), RSS at the start."""
        rows = [(k, v) for k, v in self.stages.items() if v]
        if not rows:
            return f'== {title} ==\n(no stages)'
        width = min(80, max(len('stage'), *(len(k) for k, _ in rows)))

        def fmt(value, spec):
            return format(value, spec) if isinstance(value, (int, float)) else '-'
        lines = [f'== {title} ==', f'{"stage":<{width}}  {"wall s":>9}  {"peak RSS MB":>11}  {"start RSS MB":>12}']
        for k, v in rows:
            label = k if len(k) <= width else k[:width - 3] + '...'
            mark = '  (failed)' if v.get('failed') else ''
            lines.append(f'{label:<{width}}  {fmt(v.get("wall_s"), "9.1f")}  {fmt(v.get("peak_rss_mb"), "11.0f")}  '
                         f'{fmt(v.get("start_rss_mb"), "12.0f")}{mark}')
        return '\n'.join(lines)


def current() -> Optional[ResourceLog]:
    """The active log (innermost), or ``None``."""
    return _active[-1] if _active else None


@contextlib.contextmanager
def stage(name: str, **extra) -> Iterator[dict]:
    """Meter the block as a stage of the active log; without one, run it unmetered (yields an empty dict)."""
    log = current()
    if log is None:
        yield {}
        return
    with log.stage(name, **extra) as record:
        yield record
