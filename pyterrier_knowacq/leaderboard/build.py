"""The static leaderboard: result folders -> a self-contained site (``knowacq leaderboard RESULTS... -o SITE``).

Reads only result folders (format ``pyterrier_knowacq.results/1``, see DESIGN.md) or ``.tar.gz`` archives of them,
never model code. The site works from ``file://`` (no server, no network). Each build:

* keeps a copy of every results folder it has shown under ``SITE/sources/<id>/`` and lists them in
  ``SITE/manifest.json``; rebuilding with another folder adds to the site, nothing earlier is lost (re-adding the
  same folder path replaces its copy; the same experiment + system from two folders is kept twice, with a warning);
* reports every unreadable folder with a message naming it (a :class:`LeaderboardWarning` and a box on the page)
  while the others still render;
* leaves out smoke tests (``*-ci`` experiments, ``--dry-run`` / ``--limit-topics`` runs) unless asked for;
* publishes no absolute path and no host name (paths become relative to the repository, ``$KNOWACQ_CACHE/...`` or
  ``…/<name>``), and is deterministic: the same inputs give the same bytes (dates come from the results);
* is atomic: the site is built in a temporary folder and swapped into place only when complete.

The repository's own site is built, never committed: ``make leaderboard`` (``knowacq leaderboard`` with no
arguments) renders ``leaderboard/results/*.tar.gz`` into ``leaderboard/site``; :func:`pack_results` writes such an
archive from a results folder (only the files the site shows).

Example::

    from pyterrier_knowacq.leaderboard.build import build_site
    index = build_site(['results/quickstart'], 'site')   # -> site/index.html
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional, Union

from .._util import KnowacqError, atomic_directory
from .data import FolderProblem, public_json, public_text, read_experiment, smoke_reason
from .model import build_systems, build_tables, studies, tag_values
from .render import (PERQUERY_HEADER, assets_dir, claims_csv, csv_text, difference_chart, environment,
                                 json_clean, overview_csv, perquery_rows, public_system, public_table, scatter_chart,
                                 systems_csv, table_script)
# the kept copies of the results folders, and archives of them: their names stay importable from here
from .pack import PACK_PATTERNS, _tar_info, pack_results  # noqa: F401
from .sources import (ARCHIVE_SUFFIXES, TEXT_SUFFIXES, _add_sources, _copy_kept, _copy_public,  # noqa: F401
                      _copy_tree, _extract, _key, _label, _origin_key, _results_folder)

SITE_FORMAT = 'pyterrier_knowacq.leaderboard.build/1'
MANIFEST = 'manifest.json'


class LeaderboardWarning(UserWarning):
    """A results folder (or part of one) that is not shown, or two folders holding the same system."""


def _load_manifest(out: Path) -> Optional[Dict]:
    if not out.exists():
        return None
    if not out.is_dir():
        raise KnowacqError(f'{out} exists and is not a folder; give a new or existing leaderboard folder with -o')
    manifest = out / MANIFEST
    if not manifest.is_file():
        if any(out.iterdir()):
            raise KnowacqError(f'{out} is not empty and is not a leaderboard site (no {MANIFEST}); give a new folder '
                               'or an existing leaderboard site with -o')
        return None
    try:
        data = json.loads(manifest.read_text(encoding='utf-8'))
    except (ValueError, UnicodeDecodeError) as e:
        raise KnowacqError(f'{manifest} is not valid JSON ({e}); delete the site folder {out} and rebuild it') from e
    if not isinstance(data, dict) or data.get('format') != SITE_FORMAT:
        raise KnowacqError(f'{out} was built by an incompatible leaderboard (format {data.get("format")!r}, expected '
                           f'{SITE_FORMAT!r}); delete it and rebuild from the results folders')
    for s in data.get('sources', []):   # sites built before paths were kept private: key and label from the path
        if 'origin_key' not in s and s.get('origin'):
            s['origin_key'] = _key(s['origin'])
            s['label'] = Path(s['origin']).name
        s.pop('origin', None)
        s.pop('added', None)
        s.pop('updated', None)
    return data


def _generated(experiments) -> str:
    """The site's date: ``$SOURCE_DATE_EPOCH`` when set, else the newest ``created`` of its results (so that the same
    inputs give the same site), else now."""
    epoch = os.environ.get('SOURCE_DATE_EPOCH')
    if epoch and epoch.strip().isdigit():
        return datetime.fromtimestamp(int(epoch), timezone.utc).isoformat(timespec='seconds')
    created = sorted(str(e.meta.get('created')) for e in experiments if e.meta.get('created'))
    return created[-1] if created else datetime.now(timezone.utc).isoformat(timespec='seconds')


def build_site(results: List[Union[str, Path]], out: Union[str, Path], include_smoke: bool = False,
               fresh: bool = False) -> Path:
    """Build (or extend) the static leaderboard in ``out`` from result folders; return the path of its index.html.

    Args:
        results: result folders written by ``knowacq run``, or ``.tar.gz`` archives of them (may be empty when
            ``out`` is an existing site, which then is re-rendered from the copies it keeps).
        out: the site folder (created, or extended when it already holds a leaderboard).
        include_smoke: also show smoke tests (``*-ci`` experiments, ``--dry-run`` / ``--limit-topics`` runs).
        fresh: start from nothing: the copies an existing site keeps are dropped (the site is replaced).

    Raises:
        KnowacqError: ``out`` is not a leaderboard site, or no results folder at all could be shown.
    """
    out = Path(out)
    if isinstance(results, (str, Path)):
        results = [results]
    results = [Path(r) for r in results]
    old = _load_manifest(out)
    if fresh:
        old = None
    if not results and not old:
        raise KnowacqError('no results folders given; pass folders written by `knowacq run`')
    sources = [dict(s) for s in (old or {}).get('sources', [])]
    problems: List[str] = []
    with atomic_directory(out, overwrite=True) as tmp, tempfile.TemporaryDirectory(prefix='knowacq-lb-') as scratch:
        for s in list(sources):
            kept = out / 'sources' / s['id']
            if kept.is_dir():
                _copy_tree(kept, tmp / 'sources' / s['id'])
            else:
                problems.append(f'the site lost its copy of {s.get("label")} (sources/{s["id"]} is missing); '
                                'add that results folder again')
                sources.remove(s)
        _add_sources(results, sources, tmp, problems, out, include_smoke, Path(scratch))
        experiments = []
        for s in list(sources):
            folder = tmp / 'sources' / s['id']
            try:
                exp = read_experiment(folder, s['id'], s.get('_origin') or s.get('label') or s['id'], s.get('label'))
            except FolderProblem as e:
                problems.append(str(e).replace(str(folder), s.get('_origin') or s.get('label') or s['id']))
                continue
            reason = smoke_reason(exp.meta)
            if reason and not include_smoke:   # kept by an earlier build with --include-smoke
                problems.append(f'{s.get("label")} is a smoke test ({reason}); it is left out of this build '
                                '(pass --include-smoke to keep it)')
                sources.remove(s)
                shutil.rmtree(folder, ignore_errors=True)
                continue
            problems.extend(exp.problems)
            experiments.append(exp)
        if not experiments:
            raise KnowacqError('no results folder could be shown: ' + ' | '.join(problems))
        systems, duplicates = build_systems(experiments)
        tables, notes = build_tables(systems)
        study_list = studies(experiments, systems)
        public = [public_text(p) for p in problems + duplicates]
        manifest = {'format': SITE_FORMAT, 'generated': _generated(experiments),
                    'sources': [{k: v for k, v in s.items() if not k.startswith('_')} for s in sources],
                    'problems': [public_text(p) for p in problems], 'warnings': [public_text(d) for d in duplicates]}
        _render(tmp, manifest, experiments, systems, tables, study_list, public, [public_text(n) for n in notes])
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + '\n', encoding='utf-8')
    for message in problems + duplicates:
        warnings.warn(message, LeaderboardWarning, stacklevel=2)
    return out / 'index.html'


def _render(site: Path, manifest, experiments, systems, tables, study_list, problems, notes) -> None:
    from .. import __version__ as version
    env = environment()
    names = {s['id']: s['name'] for s in systems}
    common = dict(generated=manifest['generated'], version=version, studies=study_list, names=names)
    shutil.copytree(assets_dir() / 'static', site / 'assets')

    def write(rel: str, text: str) -> None:
        path = site / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(public_text(text, hosts=False), encoding='utf-8')   # (data: scrubbed when read)

    filters = tag_values(systems)
    scatters = {t['id']: scatter_chart(t) for t in tables}
    scripts = {t['id']: table_script(t) for t in tables}
    write('index.html', env.get_template('index.html').render(
        root='', title='Overview', tables=tables, problems=problems, notes=notes, filters=filters,
        sources=manifest['sources'], experiments=experiments, systems=systems, scatters=scatters, scripts=scripts,
        **common))
    for s in systems:
        charts = {c: {m: difference_chart(v['perquery'], m, v['baseline']) if v['baseline'] and not s['is_baseline']
                      else '' for m in v['measures']} for c, v in s['collections'].items()}
        write(s['page'], env.get_template('system.html').render(
            root='../', title=s['name'], s=s, meta=s['_exp'].meta, config_yaml=s['_exp'].config_yaml, charts=charts,
            **common))
        write(f'data/perquery/{s["id"]}.csv', csv_text(PERQUERY_HEADER, perquery_rows(s)))
    for st in study_list:
        write(st['page'], env.get_template('study.html').render(root='../', title=f'Study: {st["name"]}', st=st,
                                                                **common))
    write('data/overview.csv', overview_csv(tables))
    write('data/systems.csv', systems_csv(systems))
    write('data/perquery.csv', csv_text(PERQUERY_HEADER, [r for s in systems for r in perquery_rows(s)]))
    write('data/claims.csv', claims_csv(study_list))
    export = {'format': SITE_FORMAT, 'generated': manifest['generated'], 'sources': manifest['sources'],
              'problems': problems, 'notes': notes, 'systems': [public_system(s) for s in systems],
              'tables': [public_table(t) for t in tables],
              'studies': [{**{k: v for k, v in st.items() if k != 'experiments'},
                           'experiments': [{**{k: v for k, v in e.items() if k not in ('systems', 'tables')},
                                            'tables': [{'name': t['name'], 'file': t['file']} for t in e['tables']],
                                            'systems': [s['id'] for s in e['systems']]} for e in st['experiments']]}
                          for st in study_list]}
    write('data/leaderboard.json',
          json.dumps(public_json(json_clean(export)), indent=1, ensure_ascii=False, allow_nan=False) + '\n')


# --- the repository's own site: built from compressed inputs, never committed ------------------------------------

def shipped_inputs() -> List[Path]:
    """The archives the repository's site is built from (``leaderboard/results/*.tar.gz``), sorted."""
    folder = assets_dir() / 'results'
    found = sorted(p for p in folder.glob('*') if p.name.endswith(ARCHIVE_SUFFIXES)) if folder.is_dir() else []
    if not found:
        raise KnowacqError(f'no shipped results in {folder} (leaderboard/results/*.tar.gz of a source checkout); give '
                           'results folders: knowacq leaderboard RESULTS... -o SITE')
    return found


def shipped_site_folder() -> Path:
    """Where ``knowacq leaderboard`` (no arguments) writes the repository's site: ``leaderboard/site`` of the checkout."""
    root = Path(os.path.realpath(assets_dir()))
    if not (root.parent / 'setup.cfg').is_file():
        raise KnowacqError(f'{root} is not in a source checkout; give the site folder with -o')
    return root / 'site'


def build_shipped(out: Optional[Union[str, Path]] = None, include_smoke: bool = False) -> Path:
    """Rebuild the repository's published site from ``leaderboard/results/*.tar.gz`` from scratch (deterministic)."""
    return build_site(shipped_inputs(), out or shipped_site_folder(), include_smoke=include_smoke, fresh=True)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``knowacq leaderboard`` (shared by the CLI and ``python -m pyterrier_knowacq.leaderboard.build``)."""
    parser.add_argument('results', nargs='*',
                        help='results folders written by `knowacq run`, or .tar.gz archives of them; none: rebuild '
                             "the repository's site from leaderboard/results/*.tar.gz (or re-render the site given with -o)")
    parser.add_argument('-o', '--output', default=None,
                        help='site folder, index.html inside (default: site; with no RESULTS, leaderboard/site)')
    parser.add_argument('--include-smoke', action='store_true',
                        help='also show smoke tests (*-ci experiments, --dry-run and --limit-topics runs)')
    parser.add_argument('--fresh', action='store_true',
                        help='replace the site instead of adding to it (drops the results folders it kept)')
    parser.add_argument('--shipped', action='store_true',
                        help="build the repository's site from leaderboard/results/*.tar.gz, from scratch")
    parser.add_argument('--pack', action='store_true',
                        help='instead of building, write RESULTS as archives into leaderboard/results/ (or -o): '
                             'the files the site shows, compressed, paths scrubbed')
    return parser


def run(args) -> Path:
    """Carry out ``knowacq leaderboard`` with parsed arguments; return index.html (or the last archive for --pack)."""
    if args.pack:
        if not args.results:
            raise KnowacqError('--pack needs the results folders to pack')
        dest = Path(args.output) if args.output else Path(os.path.realpath(assets_dir())) / 'results'
        last = None
        for folder in args.results:
            notes: List[str] = []
            last = pack_results(folder, dest, notes=notes)
            print(f'[knowacq] packed {folder} -> {last} ({last.stat().st_size / 1024:.0f} KiB)')
            for line in notes:
                print(f'[knowacq]   data fingerprint of {line}')
        return last
    if args.shipped or (not args.results and args.output is None):
        index = build_shipped(args.output, include_smoke=args.include_smoke)
    else:
        index = build_site(args.results, args.output or 'site', include_smoke=args.include_smoke, fresh=args.fresh)
    print(f'[knowacq] leaderboard: {Path(index).resolve()}')
    return index


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m pyterrier_knowacq.leaderboard.build RESULTS... -o SITE``."""
    parser = add_arguments(argparse.ArgumentParser(prog='knowacq leaderboard', description=__doc__.split('\n')[0]))
    args = parser.parse_args(argv)
    try:
        run(args)
    except KnowacqError as e:
        print(f'[knowacq] error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
