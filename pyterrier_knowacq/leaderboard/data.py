"""Reading result folders for the leaderboard, and the statistics it shows (tie groups).

Reads only the files of the result folder format (``pyterrier_knowacq.results/1``, see DESIGN.md); never imports
model code. Every problem with a folder is returned as a message that names the folder, so that the other folders
still render. :func:`public_text` strips what a published page must not show (absolute paths, the host name).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import pandas as pd

FORMAT = 'pyterrier_knowacq.results/1'
ALPHA = 0.05
SIG_SUFFIXES = (' +', ' -', ' p-value', ' reject', ' p-value corrected')
TAG_KEYS = ('study', 'backbone', 'strategy', 'first_stage')
# the files of a results folder that the site keeps a copy of (relative glob patterns)
KEPT_PATTERNS = ('meta.json', 'config.yaml', 'report.json', 'report.md', 'plots/*.png', 'plots/*.svg',
                 'tables/*.csv', '*/aggregated.csv', '*/perquery.csv', '*/topics.jsonl', '*/topics.tsv', '*/runs/*.res.gz')


META_TYPES = {'systems': list, 'collections': list, 'timings': dict, 'versions': dict, 'config': dict,
              'measures': list, 'study': str, 'description': str, 'command': str}
KIND_NAMES = {list: 'list', dict: 'object', str: 'string'}


# what the site may show of a path: the repository checkout this package lives in, and the model/index cache
REPO_ROOT = Path(__file__).resolve().parents[2]
_PATH_CHARS = r'[^\s/\'"<>`|;,()\[\]{}=]'
# an absolute POSIX path of two or more components, not part of a relative path, a URL or a ~/ path
_ABS_PATH = re.compile(r'(?<![\w.:/~$@-])(?:file://)?/(?:' + _PATH_CHARS + r'+/)+' + _PATH_CHARS + r'*')
_WIN_PATH = re.compile(r'\b[A-Za-z]:\\(?:[^\s\\\'"<>|]+\\)*[^\s\\\'"<>|]*')
_CACHE_DIRS = ('cache', '.cache', 'knowacq-cache')


def public_path(path: str) -> str:
    """An absolute path as a published page may show it: relative to the repository (``experiments/x.yaml``), under
    ``$KNOWACQ_CACHE`` (``$KNOWACQ_CACHE/models/trained/0d83...``), or only its last component (``…/results``)."""
    path = path[len('file://'):] if path.startswith('file://') else path
    parts = [p for p in path.split('/') if p]
    try:
        rel = Path(path).relative_to(REPO_ROOT)
        if str(rel) != '.':
            return rel.as_posix()
    except ValueError:
        pass
    cache = os.environ.get('KNOWACQ_CACHE')
    if cache and path.rstrip('/').startswith(cache.rstrip('/') + '/'):
        return '$KNOWACQ_CACHE/' + path.rstrip('/')[len(cache.rstrip('/')) + 1:]
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] in _CACHE_DIRS and i + 1 < len(parts):
            rest = parts[i + 1:]
            if parts[i] == '.cache' and rest[0] == 'pyterrier_knowacq':
                rest = rest[1:]
            elif parts[i] == '.cache':
                continue
            if rest:
                return '$KNOWACQ_CACHE/' + '/'.join(rest)
    if 'experiments' in parts[:-1]:
        return '/'.join(parts[parts.index('experiments'):])
    return '…/' + (parts[-1] if parts else '')


def _host_names() -> List[str]:
    import socket
    names = set()
    try:
        names.update({socket.gethostname(), socket.getfqdn()})
    except OSError:
        pass
    # a short or generic name would also match ordinary words
    return sorted(n for n in names if n and len(n) >= 4 and n not in ('localhost', 'localhost.localdomain'))


_HOSTS: Optional[List[str]] = None


def public_text(text: str, hosts: bool = True) -> str:
    """``text`` with every absolute path replaced by :func:`public_path` and (``hosts``) the machine's host name by
    ``host``: what a built page may show (results folders record where they were written: ``-o /tmp/...``, model
    cache paths). Rendered HTML gets ``hosts=False``: its data was scrubbed before, and a host name such as ``main``
    must not touch the markup."""
    global _HOSTS
    if not text:
        return text
    if '/' in text:
        text = _ABS_PATH.sub(lambda m: public_path(m.group(0)), text)
    if ':\\' in text:
        text = _WIN_PATH.sub(lambda m: '…\\' + m.group(0).rstrip('\\').split('\\')[-1], text)
    if not hosts:
        return text
    if _HOSTS is None:
        _HOSTS = _host_names()
    for host in _HOSTS:
        if host in text:
            text = re.sub(r'(?<![\w.-])' + re.escape(host) + r'(?![\w-])', 'host', text)
    return text


def public_json(obj):
    """:func:`public_text` applied to every string (keys too) of a JSON-like object."""
    if isinstance(obj, str):
        return public_text(obj)
    if isinstance(obj, dict):
        return {public_text(str(k)): public_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [public_json(v) for v in obj]
    return obj


SMOKE_NAME = re.compile(r'(?:^|[-_.])(?:ci|smoke|dry-?run|debug)$', re.I)


def smoke_reason(meta: Dict) -> Optional[str]:
    """Why a results folder is a smoke test rather than a result (``None`` when it is a result): meta.json or its
    config says ``smoke: true``, the experiment is named ``*-ci`` / ``*-smoke``, or it was run with ``--dry-run``
    (tiny random models) or ``--limit-topics`` (a part of the topics)."""
    config = meta.get('config') if isinstance(meta.get('config'), dict) else {}
    if meta.get('smoke') is True or config.get('smoke') is True:
        return 'marked "smoke: true"'
    if meta.get('dry_run') is True:
        return 'run with --dry-run (tiny random models)'
    if SMOKE_NAME.search(str(meta.get('experiment') or '')):
        return f'the experiment {meta.get("experiment")!r} is a CI smoke test (name ends in -ci/-smoke)'
    command = str(meta.get('command') or '')
    for flag, what in (('--dry-run', 'run with --dry-run (tiny random models)'),
                       ('--limit-topics', 'run with --limit-topics (a part of the topics)')):
        if re.search(r'(?:^|\s)' + re.escape(flag) + r'(?:[\s=]|$)', command):
            return what
    return None


class FolderProblem(Exception):
    """A results folder (or one of its collections) that cannot be shown; the message names it and the fix."""


def slugify(text: str) -> str:
    """A file-name and URL safe id: lowercase ASCII letters, digits, ``-`` (never empty)."""
    return re.sub(r'[^a-z0-9]+', '-', str(text).lower()).strip('-')[:60] or 'x'


def short_hash(text: str, n: int = 6) -> str:
    return hashlib.sha256(text.encode('utf-8')).hexdigest()[:n]


def kept_files(folder: Path) -> List[Path]:
    """The files of ``folder`` that belong to the result folder format (sorted, relative)."""
    found = set()
    for pattern in KEPT_PATTERNS:
        found.update(p.relative_to(folder) for p in folder.glob(pattern) if p.is_file())
    return sorted(found, key=lambda p: p.as_posix())


def fingerprint(folder: Path) -> str:
    """sha256 over the names and contents of the kept files: equal for identical result folders."""
    h = hashlib.sha256()
    for rel in kept_files(folder):
        h.update(rel.as_posix().encode('utf-8') + b'\0')
        h.update(hashlib.sha256((folder / rel).read_bytes()).digest())
    return h.hexdigest()


def read_meta(folder: Path) -> Dict:
    """meta.json of ``folder``, checked; raises :class:`FolderProblem` naming the folder."""
    if not folder.is_dir():
        raise FolderProblem(f'results folder {folder} does not exist (or is not a folder); give a folder written '
                            'by `knowacq run`')
    meta_file = folder / 'meta.json'
    if not meta_file.is_file():
        raise FolderProblem(f'results folder {folder} has no meta.json, so it is not a complete results folder '
                            '(an interrupted run?); re-run `knowacq run` for it')
    try:
        meta = json.loads(meta_file.read_text(encoding='utf-8'))
    except (ValueError, UnicodeDecodeError) as e:
        raise FolderProblem(f'{meta_file} is not valid JSON ({e}); re-run `knowacq run` for it') from e
    if not isinstance(meta, dict):
        raise FolderProblem(f'{meta_file} is not a JSON object; re-run `knowacq run` for it')
    fmt = meta.get('format')
    if fmt != FORMAT:
        raise FolderProblem(f'results folder {folder} has format {fmt!r}, but this leaderboard reads {FORMAT!r} '
                            '(written by an incompatible version); re-run it with this version of pyterrier_knowacq')
    if not isinstance(meta.get('experiment'), str) or not meta['experiment']:
        raise FolderProblem(f'{meta_file} names no experiment ("experiment" is missing); re-run `knowacq run` for it')
    for key, kind in META_TYPES.items():
        if meta.get(key) is not None and not isinstance(meta[key], kind):
            raise FolderProblem(f'{meta_file}: "{key}" should be a JSON {KIND_NAMES[kind]}, not '
                                f'{type(meta[key]).__name__}; re-run `knowacq run` for it')
    for key in ('systems', 'collections'):
        if any(not isinstance(x, dict) for x in meta.get(key) or []):
            raise FolderProblem(f'{meta_file}: every entry of "{key}" should be a JSON object; '
                                're-run `knowacq run` for it')
    if any(not isinstance(v, dict) for v in (meta.get('timings') or {}).values()):
        raise FolderProblem(f'{meta_file}: "timings" should map collection -> {{system: seconds}}; '
                            're-run `knowacq run` for it')
    return meta


@dataclass
class Collection:
    """One test collection of one experiment: pt.Experiment's frames and the collection's metadata."""
    name: str
    info: Dict
    measures: List[str]
    agg: pd.DataFrame
    perquery: Optional[pd.DataFrame]  # columns name, qid, measure, value
    topics: Dict[str, str]  # qid -> query text (only when the folder has <collection>/topics.tsv)
    baseline: Optional[str]
    _series: Optional[Dict[Tuple[str, str], pd.Series]] = None

    def series(self, name: str, measure: str) -> Optional[pd.Series]:
        """Per-query values (index qid) of one system and measure, or None."""
        if self.perquery is None:
            return None
        if self._series is None:
            self._series = {key: grp.groupby('qid')['value'].mean()
                            for key, grp in self.perquery.groupby(['name', 'measure'], sort=False)}
        return self._series.get((name, measure))

    @property
    def key(self) -> Tuple[str, str, str]:
        """What a table groups by: the dataset's id, the collection, and the data's content fingerprint (two
        collections with one name but other qrels or documents never share a table)."""
        return (str(self.info.get('dataset') or ''), self.name, str(self.info.get('dataset_fingerprint') or ''))


@dataclass
class ExperimentData:
    """A results folder as the site shows it."""
    source_id: str
    origin: str
    folder: Path
    meta: Dict
    config_yaml: str
    collections: List[Collection]
    claims: List[Dict]
    plots: List[str]
    tables: List[str]
    report_md: Optional[str]
    problems: List[str] = field(default_factory=list)
    label: str = ''   # how pages name the folder: a relative path or its name, never an absolute path


def _read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _num(series: pd.Series) -> pd.Series:
    return pd.to_numeric(series.replace('', np.nan), errors='coerce')


def read_collection(folder: Path, info: Dict, meta: Dict) -> Collection:
    name = str(info.get('name', ''))
    if not name or '/' in name or name.startswith('.'):
        raise FolderProblem(f'{folder}/meta.json lists a collection with a bad name {name!r}; re-run `knowacq run`')
    agg_file = folder / name / 'aggregated.csv'
    if not agg_file.is_file():
        raise FolderProblem(f'{folder}: collection {name!r} has no {name}/aggregated.csv, so it is left out; '
                            're-run `knowacq run` for this folder')
    try:
        agg = _read_csv(agg_file)
    except Exception as e:  # noqa: BLE001 - any parse error is reported with the file name
        raise FolderProblem(f'{agg_file} cannot be read as CSV ({e}); re-run `knowacq run` for it') from e
    if 'name' not in agg.columns or agg.empty:
        raise FolderProblem(f'{agg_file} has no "name" column or no rows; it is not pt.Experiment output')
    declared = [str(m) for m in info.get('measures') or meta.get('measures') or []]   # a collection may have its own
    measures = [m for m in declared if m in agg.columns] or \
        [c for c in agg.columns if c != 'name' and not c.endswith(SIG_SUFFIXES)]
    if not measures:
        raise FolderProblem(f'{agg_file} has no measure columns; it is not pt.Experiment output')
    for col in agg.columns:
        if col != 'name' and not col.endswith(' reject'):
            agg[col] = _num(agg[col])
    perquery = None
    pq_file = folder / name / 'perquery.csv'
    if pq_file.is_file():
        try:
            perquery = _read_csv(pq_file)
        except Exception as e:  # noqa: BLE001
            raise FolderProblem(f'{pq_file} cannot be read as CSV ({e}); re-run `knowacq run` for it') from e
        missing = {'name', 'qid', 'measure', 'value'} - set(perquery.columns)
        if missing:
            raise FolderProblem(f'{pq_file} lacks the columns {sorted(missing)}; it is not pt.Experiment output')
        perquery['value'] = _num(perquery['value'])
    return Collection(name, info, measures, agg, perquery, _read_topics(folder / name), _baseline(meta, agg))


def _baseline(meta: Dict, agg: pd.DataFrame) -> Optional[str]:
    baseline = meta.get('baseline')
    return str(baseline) if baseline is not None and str(baseline) in set(agg['name']) else None


def _read_topics(coll_dir: Path) -> Dict[str, str]:
    """qid -> query text, exactly as run: ``topics.jsonl``, or an older folder's CSV-quoted ``topics.tsv``."""
    jsonl = coll_dir / 'topics.jsonl'
    try:
        if jsonl.is_file():
            from .._util import read_jsonl
            return {str(r['qid']): str(r['query']) for r in read_jsonl(jsonl)}
        tsv = coll_dir / 'topics.tsv'
        if tsv.is_file():   # written by pandas' to_csv: parse it as CSV (quotes undone), never split it into lines
            frame = pd.read_csv(tsv, sep='\t', header=None, names=['qid', 'query'], dtype=str, keep_default_na=False,
                                quoting=0, engine='python')
            return dict(zip(frame['qid'], frame['query']))
    except Exception as e:  # noqa: BLE001 - the texts are decoration: the tables still render without them
        raise FolderProblem(f'{coll_dir}: its topics file cannot be read ({e}); re-run `knowacq run` for it') from e
    return {}


def read_experiment(folder: Path, source_id: str, origin: str, label: Optional[str] = None) -> ExperimentData:
    """Read a (kept copy of a) results folder; a broken collection becomes a problem, a broken folder raises.
    ``origin`` names the folder in problems (the console may show its full path), ``label`` on pages."""
    meta = read_meta(folder)
    problems = []
    if meta.get('incomplete'):   # a run in which a system failed: its tables hold the systems that finished
        failed = [f for f in meta.get('failed') or [] if isinstance(f, dict)]
        named = '; '.join(f'{f.get("system") or "the run"} on {f.get("collection") or "-"}: {f.get("error", "")}'[:200]
                          for f in failed[:3])
        problems.append(f'{origin} is INCOMPLETE: {len(failed)} failure(s) ({named}); its tables show only the systems '
                        'that finished; run `knowacq run` again to resume it')
    infos = meta.get('collections')
    if not isinstance(infos, list) or not infos:
        infos = [{'name': p.parent.name} for p in sorted(folder.glob('*/aggregated.csv'))]
    collections = []
    for info in infos:
        try:
            collections.append(read_collection(folder, info if isinstance(info, dict) else {'name': str(info)}, meta))
        except FolderProblem as e:
            problems.append(str(e).replace(str(folder), origin))
    claims = []
    report = folder / 'report.json'
    if report.is_file():
        try:
            data = json.loads(report.read_text(encoding='utf-8'))
            claims = [c for c in (data.get('claims', []) if isinstance(data, dict) else data) if isinstance(c, dict)]
        except (ValueError, UnicodeDecodeError) as e:
            problems.append(f'{origin}/report.json is not valid JSON ({e}); its claims are left out')
    plots = sorted(p.name for p in folder.glob('plots/*') if p.suffix in ('.png', '.svg') and p.is_file())
    tables = sorted(p.name for p in folder.glob('tables/*.csv') if p.is_file())
    if not collections and not claims and not plots and not tables:
        raise FolderProblem(f'results folder {origin} has no readable collection (no <collection>/aggregated.csv), '
                            'no report.json and no plots or tables; re-run `knowacq run` for it'
                            + (' (' + '; '.join(problems) + ')' if problems else ''))
    config_file = folder / 'config.yaml'
    if config_file.is_file():
        config_yaml = config_file.read_text(encoding='utf-8', errors='replace')
    else:
        import yaml
        config_yaml = yaml.safe_dump(meta.get('config') or {}, sort_keys=False, allow_unicode=True)
    report_md = (folder / 'report.md').read_text(encoding='utf-8', errors='replace') \
        if (folder / 'report.md').is_file() else None
    return ExperimentData(source_id, origin, folder, meta, config_yaml, collections, claims, plots, tables,
                          report_md, problems, label or origin)


def holm(pvalues: List[float]) -> List[float]:
    """Holm-Bonferroni adjusted p-values (same as statsmodels' ``multipletests(method='holm')``, which is slow here
    because it runs the garbage collector on every call)."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted, running = [1.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(pvalues[i])))
        adjusted[i] = running
    return adjusted


def paired_p(a: pd.Series, b: pd.Series) -> Tuple[float, int]:
    """Two-sided paired t-test p-value over the queries both series share (1.0 when undefined), and their count."""
    from scipy.stats import ttest_rel
    joined = pd.concat([a, b], axis=1, join='inner').dropna()
    n = len(joined)
    if n < 2:
        return 1.0, n
    x, y = joined.iloc[:, 0].to_numpy(float), joined.iloc[:, 1].to_numpy(float)
    if np.allclose(x, y):
        return 1.0, n
    p = float(ttest_rel(x, y).pvalue)
    return (1.0 if math.isnan(p) else p), n


def paired_tests(x: np.ndarray, base: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Two-sided paired t-tests of every column of ``x`` (queries x systems, NaN = no value) against ``base`` (one
    column of the same queries), each over the queries both have; vectorised, same p-values as
    ``scipy.stats.ttest_rel``. Returns ``(p, n, better, worse)`` per column: p is 1.0 where it is undefined (fewer
    than two shared queries, or identical values) and 0.0 for a constant non-zero difference."""
    from scipy.stats import t as t_dist
    d = x - base[:, None]
    ok = ~np.isnan(d)
    n = ok.sum(axis=0)
    dz = np.where(ok, d, 0.0)
    with np.errstate(invalid='ignore', divide='ignore'):
        mean = dz.sum(axis=0) / np.maximum(n, 1)
        var = (np.where(ok, d - mean, 0.0) ** 2).sum(axis=0) / np.maximum(n - 1, 1)
        sd = np.sqrt(var)
        tstat = mean / (sd / np.sqrt(np.maximum(n, 1)))
        p = 2 * t_dist.sf(np.abs(tstat), np.maximum(n - 1, 1))
    same = np.array([np.allclose(dz[:, j], 0.0) for j in range(d.shape[1])]) if d.size else np.zeros(0, bool)
    p = np.where(n < 2, 1.0, np.where(same, 1.0, np.where(sd == 0, 0.0, p)))
    p = np.where(np.isnan(p), 1.0, p)
    better = (np.where(ok, d, 0.0) > 0).sum(axis=0)
    worse = (np.where(ok, d, 0.0) < 0).sum(axis=0)
    return p, n, better, worse


def query_matrix(perquery: Dict[str, pd.Series], ids: List[str]) -> np.ndarray:
    """The per-query values of ``ids`` as one matrix (queries in the union of their qids x ids; NaN where missing)."""
    if not ids:
        return np.zeros((0, 0))
    frame = pd.concat([perquery[i].rename(k) for k, i in enumerate(ids)], axis=1, join='outer')
    return frame.to_numpy(dtype=float)


def tie_groups(means: Dict[str, float], perquery: Dict[str, pd.Series], alpha: float = ALPHA) -> Dict[str, Dict]:
    """Rank systems by mean, sharing ranks within tie groups.

    The best remaining system leads a group; every other remaining system whose per-query values are not
    significantly different from the leader's (two-sided paired t-test on shared queries, Holm-corrected over the
    comparisons made against that leader, p >= alpha) joins its group and shares its rank. Repeat on the rest.
    Rank = 1 + the number of systems in better groups. Systems without per-query values get rank None.

    Returns ``{system: {'rank', 'leader', 'p', 'p_holm', 'size'}}`` (p values against the group's leader; size: how
    many systems share the rank).
    """
    out = {s: {'rank': None, 'leader': None, 'p': None, 'p_holm': None, 'size': None} for s in means}
    remaining = sorted((s for s in means if s in perquery and means[s] is not None and not math.isnan(means[s])),
                       key=lambda s: -means[s])
    matrix = query_matrix(perquery, remaining)
    column = {s: k for k, s in enumerate(remaining)}
    ranked = 0
    while remaining:
        leader, others = remaining[0], remaining[1:]
        if others:
            raw, _n, _b, _w = paired_tests(matrix[:, [column[o] for o in others]], matrix[:, column[leader]])
            raw = [float(v) for v in raw]
        else:
            raw = []
        adjusted = holm(raw)
        group = [leader] + [o for o, p in zip(others, adjusted) if p >= alpha]
        out[leader].update(rank=ranked + 1, leader=leader, size=len(group))
        for o, p, q in zip(others, raw, adjusted):
            if q >= alpha:
                out[o].update(rank=ranked + 1, leader=leader, p=p, p_holm=q, size=len(group))
        ranked += len(group)
        remaining = [o for o in others if o not in group]
    return out


def baseline_sig(row: pd.Series, measure: str, baseline_value: Optional[float]) -> Dict:
    """The significance of one aggregated.csv cell against the experiment's baseline (from pt.Experiment's columns)."""
    def get(suffix):
        v = row.get(measure + suffix)
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else v
    p_corr, p = get(' p-value corrected'), get(' p-value')
    reject = str(row.get(measure + ' reject', '')).strip().lower() in ('true', '1')
    value = row.get(measure)
    direction = 0
    if reject and baseline_value is not None and value is not None and not math.isnan(value):
        direction = 1 if value > baseline_value else -1 if value < baseline_value else 0
    plus, minus = get(' +'), get(' -')
    return {'p': None if p is None else float(p), 'p_corrected': None if p_corr is None else float(p_corr),
            'reject': reject, 'direction': direction,
            'better': None if plus is None else int(plus), 'worse': None if minus is None else int(minus)}
