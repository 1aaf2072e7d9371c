"""Reading result folders for the leaderboard.

Reads only the files of the result folder format (``pyterrier_knowacq.results/1``, see DESIGN.md), through
:mod:`pyterrier_knowacq.results`; never imports model code. Every problem with a folder is returned as a message that
names the folder, so that the other folders still render. :func:`public_text` (:mod:`.public`) strips what a
published page must not show (absolute paths, the host name); the statistics it shows (tie groups) are in
:mod:`.significance`; both stay importable from here.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import pandas as pd

from .. import results
from ..results import FORMAT, SIG_SUFFIXES  # noqa: F401  (re-exported)
from .public import REPO_ROOT, _host_names, public_json, public_path, public_text  # noqa: F401  (re-exported)
from .significance import (ALPHA, baseline_sig, holm, paired_p, paired_tests, query_matrix,  # noqa: F401
                           tie_groups)

TAG_KEYS = ('study', 'backbone', 'strategy', 'first_stage')
# the files of a results folder that the site keeps a copy of (relative glob patterns): every file of the format
KEPT_PATTERNS = results.FILE_PATTERNS


META_TYPES = {'systems': list, 'collections': list, 'timings': dict, 'versions': dict, 'config': dict,
              'measures': list, 'study': str, 'description': str, 'command': str}
KIND_NAMES = {list: 'list', dict: 'object', str: 'string'}


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
    meta_file = results.meta_path(folder)
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
    seed_variance: List[Dict] = field(default_factory=list)   # report.json's per-seed rows (several seeds only)


def _read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _num(series: pd.Series) -> pd.Series:
    return pd.to_numeric(series.replace('', np.nan), errors='coerce')


def read_collection(folder: Path, info: Dict, meta: Dict) -> Collection:
    name = str(info.get('name', ''))
    if not name or '/' in name or name.startswith('.'):
        raise FolderProblem(f'{folder}/meta.json lists a collection with a bad name {name!r}; re-run `knowacq run`')
    agg_file = results.aggregated_path(folder, name)
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
    pq_file = results.perquery_path(folder, name)
    if pq_file.is_file():
        try:
            perquery = _read_csv(pq_file)
        except Exception as e:  # noqa: BLE001
            raise FolderProblem(f'{pq_file} cannot be read as CSV ({e}); re-run `knowacq run` for it') from e
        missing = set(results.PERQUERY_COLUMNS) - set(perquery.columns)
        if missing:
            raise FolderProblem(f'{pq_file} lacks the columns {sorted(missing)}; it is not pt.Experiment output')
        perquery['value'] = _num(perquery['value'])
    return Collection(name, info, measures, agg, perquery, _read_topics(results.collection_dir(folder, name)),
                      _baseline(meta, agg))


def _baseline(meta: Dict, agg: pd.DataFrame) -> Optional[str]:
    baseline = meta.get('baseline')
    return str(baseline) if baseline is not None and str(baseline) in set(agg['name']) else None


def _read_topics(coll_dir: Path) -> Dict[str, str]:
    """qid -> query text, exactly as run: ``topics.jsonl``, or an older folder's CSV-quoted ``topics.tsv``."""
    try:
        return results.read_topics(coll_dir.parent, coll_dir.name)
    except Exception as e:  # noqa: BLE001 - the texts are decoration: the tables still render without them
        raise FolderProblem(f'{coll_dir}: its topics file cannot be read ({e}); re-run `knowacq run` for it') from e


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
        infos = [{'name': d.name} for d in results.collection_dirs(folder, results.AGGREGATED)]
    collections = []
    for info in infos:
        try:
            collections.append(read_collection(folder, info if isinstance(info, dict) else {'name': str(info)}, meta))
        except FolderProblem as e:
            problems.append(str(e).replace(str(folder), origin))
    claims, seed_variance = [], []
    report = folder / results.REPORT_JSON
    if report.is_file():
        try:
            data = json.loads(report.read_text(encoding='utf-8'))
            claims = [c for c in (data.get('claims', []) if isinstance(data, dict) else data) if isinstance(c, dict)]
            seed_variance = _seed_rows(data.get('seed_variance') if isinstance(data, dict) else None)
        except (ValueError, UnicodeDecodeError) as e:
            problems.append(f'{origin}/{results.REPORT_JSON} is not valid JSON ({e}); its claims are left out')
    plots = sorted(p.name for p in folder.glob(f'{results.PLOTS}/*') if p.suffix in ('.png', '.svg') and p.is_file())
    tables = sorted(p.name for p in folder.glob(f'{results.TABLES}/*.csv') if p.is_file())
    if not collections and not claims and not plots and not tables:
        raise FolderProblem(f'results folder {origin} has no readable collection (no <collection>/aggregated.csv), '
                            'no report.json and no plots or tables; re-run `knowacq run` for it'
                            + (' (' + '; '.join(problems) + ')' if problems else ''))
    config_file = folder / results.CONFIG
    if config_file.is_file():
        config_yaml = config_file.read_text(encoding='utf-8', errors='replace')
    else:
        import yaml
        config_yaml = yaml.safe_dump(meta.get('config') or {}, sort_keys=False, allow_unicode=True)
    report_md = (folder / results.REPORT_MD).read_text(encoding='utf-8', errors='replace') \
        if (folder / results.REPORT_MD).is_file() else None
    return ExperimentData(source_id, origin, folder, meta, config_yaml, collections, claims, plots, tables,
                          report_md, problems, label or origin, seed_variance)


def _seed_rows(rows) -> List[Dict]:
    """report.json's seed-variance rows that have the expected shape (others are dropped rather than half-shown)."""
    out = []
    for r in rows if isinstance(rows, list) else []:
        if isinstance(r, dict) and isinstance(r.get('values'), dict) and isinstance(r.get('mean'), (int, float)):
            out.append(r)
    return out


