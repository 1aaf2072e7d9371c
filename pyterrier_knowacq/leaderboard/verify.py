"""``knowacq verify RESULTS``: re-run systems of a results folder and compare with the numbers it holds.

By default the *cheap* systems are re-run: those that train no model and whose recorded time (``meta.json``
``timings``, summed over the collections) is at most ``max_seconds``; ``--system NAME`` (repeatable) names others,
``--all`` takes every system (training the models they need, from the cache when it holds them). The re-run uses the
experiment's own configuration (``meta.json`` ``config``), its topics (``--limit-topics`` / ``--dry-run`` of the
recorded command included) and a temporary results folder; each measure of ``<collection>/aggregated.csv`` is then
compared with the stored value: equal within ``tolerance`` (absolute) passes.

Example::

    from pyterrier_knowacq.leaderboard.verify import verify
    report = verify('results/quickstart')                 # BM25 and PISA BM25 by default
    report.ok, report.rows[0]                             # True, {'collection': 'dl19', 'system': 'BM25', ...}
"""
from __future__ import annotations

import copy
import difflib
import math
import re
import shlex
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .. import results
from .._util import KnowacqError

__all__ = ['verify', 'select_systems', 'VerifyReport', 'DEFAULT_TOLERANCE', 'DEFAULT_MAX_SECONDS']

DEFAULT_TOLERANCE = 1e-4
DEFAULT_MAX_SECONDS = 60.0
_MODEL_PARAM = re.compile(r'\bmodel\s*=\s*([^,\s)]+)')


@dataclass
class VerifyReport:
    """The outcome of :func:`verify`: one row per (collection, system, measure)."""
    folder: str
    systems: List[str]
    skipped: List[Tuple[str, str]]
    tolerance: float
    rows: List[Dict] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    seconds: Dict[str, float] = field(default_factory=dict)

    @property
    def failed(self) -> List[Dict]:
        return [r for r in self.rows if r['status'] != 'ok']

    @property
    def ok(self) -> bool:
        return bool(self.rows) and not self.failed

    def table(self) -> str:
        """The comparison as an aligned text table."""
        head = ('collection', 'system', 'measure', 'stored', 'now', '|diff|', 'check')
        body = [(r['collection'], r['system'], r['measure'], _num(r['stored']), _num(r['now']), _num(r['diff'], 'g'),
                 r['status']) for r in self.rows]
        widths = [max(len(str(x[i])) for x in [head] + body) for i in range(len(head))]
        right = {3, 4, 5}

        def line(cells):
            return '  '.join(str(c).rjust(w) if i in right else str(c).ljust(w)
                             for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
        return '\n'.join([line(head), line(['-' * w for w in widths])] + [line(b) for b in body])

    def summary(self) -> str:
        n, bad = len(self.rows), len(self.failed)
        systems = ', '.join(self.systems)
        if not n:
            return f'verify {self.folder}: nothing was compared (systems re-run: {systems})'
        if not bad:
            return f'verify {self.folder}: OK, all {n} values within {self.tolerance:g} of the stored ones ({systems})'
        return f'verify {self.folder}: {bad} of {n} values differ by more than {self.tolerance:g} ({systems})'


def _num(value, spec: str = '.4f') -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return '–'
    if spec == 'g':
        return f'{value:.2g}' if value else '0'
    return format(value, spec)


def _read_meta(folder: Path) -> Dict:
    meta = results.read_meta(folder)   # no meta.json, not JSON: raises
    if not isinstance(meta.get('config'), dict):
        raise KnowacqError(f'{results.meta_path(folder)} holds no experiment configuration ("config"), so its systems '
                           'cannot be re-run')
    return meta


def _pipeline(spec) -> str:
    return str(spec.get('pipeline') if isinstance(spec, dict) else spec)


def _trained_models(config: Dict, pipeline: str) -> List[str]:
    models = config.get('models') if isinstance(config.get('models'), dict) else {}
    return [m for m in _MODEL_PARAM.findall(pipeline) if m in models]


def select_systems(meta: Dict, names: Optional[Sequence[str]] = None, every: bool = False,
                   max_seconds: float = DEFAULT_MAX_SECONDS) -> Tuple[List[str], List[Tuple[str, str]]]:
    """Which systems to re-run: ``names`` (each must exist), every one (``every``), or the cheap ones (no trained
    model, recorded time <= ``max_seconds``). Returns ``(selected, [(skipped, why), ...])`` in the experiment's order."""
    config = meta['config']
    systems = config.get('systems') if isinstance(config.get('systems'), dict) else {}
    order = list(systems)
    if names:
        unknown = [n for n in names if n not in systems]
        if unknown:
            close = difflib.get_close_matches(unknown[0], order, n=1)
            raise KnowacqError(f'no system {unknown[0]!r} in this results folder' +
                               (f' (did you mean {close[0]!r}?)' if close else '') + f'; its systems: {order}')
        wanted = set(names)
        return [n for n in order if n in wanted], [(n, 'not named') for n in order if n not in wanted]
    if every:
        return order, []
    timings = meta.get('timings') if isinstance(meta.get('timings'), dict) else {}
    selected, skipped = [], []
    for name in order:
        trained = _trained_models(config, _pipeline(systems[name]))
        recorded = [t.get(name) for t in timings.values() if isinstance(t, dict) and isinstance(t.get(name), (int, float))]
        total = sum(recorded) if recorded else None
        if trained:
            skipped.append((name, f'trains {", ".join(trained)}'))
        elif total is None:
            skipped.append((name, 'no recorded time'))
        elif total > max_seconds:
            skipped.append((name, f'{total:.0f} s recorded > {max_seconds:g} s'))
        else:
            selected.append(name)
    return selected, skipped


def _command_options(command: str) -> Tuple[bool, Optional[int]]:
    """``--dry-run`` and ``--limit-topics N`` of the command that wrote the folder (the re-run uses the same)."""
    try:
        words = shlex.split(command or '')
    except ValueError:
        words = (command or '').split()
    limit = None
    for i, w in enumerate(words):
        if w == '--limit-topics' and i + 1 < len(words) and words[i + 1].isdigit():
            limit = int(words[i + 1])
        elif w.startswith('--limit-topics=') and w.split('=', 1)[1].isdigit():
            limit = int(w.split('=', 1)[1])
    return '--dry-run' in words, limit


def restricted_config(config: Dict, names: Sequence[str]) -> Dict:
    """The experiment's configuration with only ``names`` (and the models they use); no analysis, no output."""
    cfg = copy.deepcopy(config)
    cfg['systems'] = {n: cfg['systems'][n] for n in names}
    used = {m for n in names for m in _trained_models(config, _pipeline(config['systems'][n]))}
    if isinstance(cfg.get('models'), dict):
        cfg['models'] = {k: v for k, v in cfg['models'].items() if k in used}
        if not cfg['models']:
            cfg.pop('models')
    if cfg.get('baseline') not in cfg['systems']:   # measures are compared, not significance: no baseline needed
        cfg.pop('baseline', None)
        cfg['correction'] = 'none'
    for key in ('analysis', 'output', 'claims'):
        cfg.pop(key, None)
    return cfg


def _values(path: Path) -> Dict[str, Dict[str, float]]:
    import pandas as pd
    frame = pd.read_csv(path, dtype={'name': str}, keep_default_na=False)
    out = {}
    for _, row in frame.iterrows():
        out[str(row['name'])] = {c: row[c] for c in frame.columns if c != 'name'}
    return out


def _float(value) -> Optional[float]:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def compare(stored_folder: Path, new_folder: Path, meta: Dict, names: Sequence[str], tolerance: float) -> Tuple[List[Dict], List[str]]:
    """Compare each measure of the re-run with the stored aggregated.csv; returns the rows and notes."""
    rows, notes = [], []
    new_meta = results.read_meta(new_folder)
    new_colls = {c['name']: c for c in new_meta.get('collections') or []}
    for coll in meta.get('collections') or []:
        cname = coll.get('name')
        stored_file = results.aggregated_path(stored_folder, str(cname))
        if not stored_file.is_file():
            continue
        stored = _values(stored_file)
        new_file = results.aggregated_path(new_folder, str(cname))
        new = _values(new_file) if new_file.is_file() else {}
        measures = [str(m) for m in coll.get('measures') or meta.get('measures') or []]
        other = new_colls.get(cname, {})
        if other and coll.get('dataset_fingerprint') and other.get('dataset_fingerprint') != coll.get('dataset_fingerprint'):
            notes.append(f'{cname}: the data changed since the stored run (content fingerprint '
                         f'{str(coll.get("dataset_fingerprint"))[:12]} then, {str(other.get("dataset_fingerprint"))[:12]} now)')
        if other and coll.get('num_queries') is not None and other.get('num_queries') != coll.get('num_queries'):
            notes.append(f'{cname}: {other.get("num_queries")} queries now, {coll.get("num_queries")} then')
        for name in names:
            if name not in stored:
                continue
            for m in measures or [c for c in stored[name] if not c.endswith(results.SIG_SUFFIXES)]:
                a = _float(stored[name].get(m))
                b = _float(new.get(name, {}).get(m)) if name in new else None
                if a is None:
                    continue
                if b is None:
                    rows.append({'collection': cname, 'system': name, 'measure': m, 'stored': a, 'now': None,
                                 'diff': None, 'status': 'MISSING'})
                    continue
                diff = abs(a - b)
                rows.append({'collection': cname, 'system': name, 'measure': m, 'stored': a, 'now': b, 'diff': diff,
                             'status': 'ok' if diff <= tolerance else 'DIFF'})
    return rows, notes


def verify(folder, systems: Optional[Sequence[str]] = None, every: bool = False,
           tolerance: float = DEFAULT_TOLERANCE, max_seconds: float = DEFAULT_MAX_SECONDS,
           keep: Optional[str] = None, echo: Callable[[str], None] = print) -> VerifyReport:
    """Re-run systems of the results folder ``folder`` and compare their measures with the stored ones.

    Args:
        folder: a results folder written by ``knowacq run`` (or ``knowacq quickstart``).
        systems: names of the systems to re-run (default: the cheap ones, see :func:`select_systems`).
        every: re-run every system.
        tolerance: the largest absolute difference that passes.
        max_seconds: a system is cheap when its recorded time (summed over collections) is at most this.
        keep: keep the re-run's results folder here (default: a temporary folder, removed).
        echo: where progress and the table go.

    Returns the :class:`VerifyReport`; raises :class:`KnowacqError` when the folder cannot be re-run (and the
    command line exits non-zero when a value differs: see ``cmd_verify``).
    """
    folder = Path(folder)
    meta = _read_meta(folder)
    if tolerance < 0 or not math.isfinite(tolerance):
        raise KnowacqError(f'tolerance must be a finite number >= 0, not {tolerance}')
    selected, skipped = select_systems(meta, systems, every, max_seconds)
    report = VerifyReport(str(folder), selected, skipped, tolerance)
    echo(f'[knowacq] verify {folder}: re-running {len(selected)} of {len(selected) + len(skipped)} systems'
         + (f' ({", ".join(selected)})' if selected else ''))
    if skipped and not systems:
        echo('[knowacq]   skipped: ' + '; '.join(f'{n} ({why})' for n, why in skipped)
             + ' - name one with --system, or pass --all')
    if not selected:
        raise KnowacqError(f'{folder}: no system to re-run (none is cheap: every one trains a model or took more than '
                           f'{max_seconds:g} s); name one with --system NAME or pass --all')
    dry_run, limit = _command_options(str(meta.get('command') or ''))
    import yaml
    from ..experiments.runner import run_experiment
    work = Path(tempfile.mkdtemp(prefix='knowacq-verify-'))
    try:
        config_file = work / f'{folder.name or "results"}-verify.yaml'
        config_file.write_text(yaml.safe_dump(restricted_config(meta['config'], selected), sort_keys=False,
                                              allow_unicode=True), encoding='utf-8')
        out = Path(keep) if keep else work / 'rerun'
        started = time.time()
        run_experiment(config_file, output=str(out), overwrite=True, dry_run=dry_run, limit_topics=limit,
                       command='knowacq verify ' + ' '.join(shlex.quote(x) for x in [str(folder)] + [
                           f'--system={n}' for n in selected]))
        report.seconds['rerun'] = round(time.time() - started, 2)
        new_meta = results.read_meta(out)
        for cname, times in (new_meta.get('timings') or {}).items():
            for name, secs in (times or {}).items():
                then = ((meta.get('timings') or {}).get(cname) or {}).get(name)
                report.notes.append(f'{cname} / {name}: {secs:.3g} s now, '
                                    + (f'{then:.3g} s recorded' if isinstance(then, (int, float)) else 'no time recorded'))
        rows, notes = compare(folder, out, meta, selected, tolerance)
        report.rows, report.notes = rows, report.notes + notes
    finally:
        shutil.rmtree(work, ignore_errors=True)
    echo('')
    echo(report.table())
    for note in report.notes:
        echo(f'[knowacq]   {note}')
    echo(f'[knowacq] {report.summary()}')
    return report
