"""The static leaderboard: result folders -> a self-contained site (``knowacq leaderboard RESULTS... -o SITE``).

Reads only result folders (format ``pyterrier_knowacq.results/1``, see DESIGN.md), never model code. The site
works from ``file://`` (no server, no network). Each build:

* keeps a copy of every results folder it has shown under ``SITE/sources/<id>/`` and lists them in
  ``SITE/manifest.json``; rebuilding with another folder adds to the site, nothing earlier is lost (re-adding the
  same folder path replaces its copy; the same experiment + system from two folders is kept twice, with a warning);
* reports every unreadable folder with a message naming it (a :class:`LeaderboardWarning` and a box on the page)
  while the others still render;
* is atomic: the site is built in a temporary folder and swapped into place only when complete.

Example::

    from pyterrier_knowacq.leaderboard import build_site
    index = build_site(['results/quickstart'], 'site')   # -> site/index.html
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Union

from ._util import KnowacqError, atomic_directory
from .leaderboard_data import FolderProblem, fingerprint, kept_files, read_experiment, read_meta, short_hash, slugify
from .leaderboard_model import build_systems, build_tables, studies, tag_values
from .leaderboard_render import (PERQUERY_HEADER, assets_dir, claims_csv, csv_text, difference_chart, environment,
                                 json_clean, overview_csv, perquery_rows, public_system, public_table, systems_csv)

SITE_FORMAT = 'pyterrier_knowacq.leaderboard/1'
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
    return data


def _copy_kept(src: Path, dst: Path) -> None:
    for rel in kept_files(src):
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, dst / rel)


def _add_sources(results: Iterable[Path], sources: List[Dict], tmp: Path, problems: List[str], out: Path) -> None:
    """Copy each new or changed results folder into ``tmp/sources``; update ``sources`` in place."""
    now = datetime.now(timezone.utc).isoformat(timespec='seconds')
    for folder in results:
        origin = str(folder.resolve())
        if folder.resolve() == out.resolve():
            problems.append(f'{folder} is the site folder itself, not a results folder; it is left out')
            continue
        try:
            meta = read_meta(folder)
            fp = fingerprint(folder)
        except FolderProblem as e:
            kept = [s for s in sources if s['origin'] == origin]
            problems.append(str(e) + ('; the site keeps its earlier copy' if kept else ''))
            continue
        except OSError as e:
            problems.append(f'results folder {folder} cannot be read ({e}); it is left out')
            continue
        same_origin = next((s for s in sources if s['origin'] == origin), None)
        if same_origin and same_origin['fingerprint'] == fp:
            continue
        twin = next((s for s in sources if s['fingerprint'] == fp), None)
        if twin and not same_origin:
            problems.append(f'results folder {folder} is identical to {twin["origin"]}, already in the site as '
                            f'{twin["id"]!r}; it is not added twice')
            continue
        if same_origin:
            sid = same_origin['id']
            shutil.rmtree(tmp / 'sources' / sid, ignore_errors=True)
            same_origin.update(fingerprint=fp, updated=now, experiment=meta['experiment'])
        else:
            sid = f'{slugify(meta["experiment"])}-{short_hash(origin)}'
            while any(s['id'] == sid for s in sources):
                sid = f'{sid}-{short_hash(sid)}'
            sources.append({'id': sid, 'origin': origin, 'experiment': meta['experiment'], 'fingerprint': fp,
                            'added': now, 'updated': now})
        _copy_kept(folder, tmp / 'sources' / sid)


def build_site(results: List[Union[str, Path]], out: Union[str, Path]) -> Path:
    """Build (or extend) the static leaderboard in ``out`` from result folders; return the path of its index.html.

    Args:
        results: result folders written by ``knowacq run`` (may be empty when ``out`` is an existing site, which
            then is re-rendered from the copies it keeps).
        out: the site folder (created, or extended when it already holds a leaderboard).

    Raises:
        KnowacqError: ``out`` is not a leaderboard site, or no results folder at all could be shown.
    """
    out = Path(out)
    if isinstance(results, (str, Path)):
        results = [results]
    results = [Path(r) for r in results]
    old = _load_manifest(out)
    if not results and not old:
        raise KnowacqError('no results folders given; pass folders written by `knowacq run`')
    sources = [dict(s) for s in (old or {}).get('sources', [])]
    problems: List[str] = []
    with atomic_directory(out, overwrite=True) as tmp:
        for s in list(sources):
            kept = out / 'sources' / s['id']
            if kept.is_dir():
                shutil.copytree(kept, tmp / 'sources' / s['id'])
            else:
                problems.append(f'the site lost its copy of {s["origin"]} (sources/{s["id"]} is missing); '
                                'add that results folder again')
                sources.remove(s)
        _add_sources(results, sources, tmp, problems, out)
        experiments = []
        for s in sources:
            try:
                exp = read_experiment(tmp / 'sources' / s['id'], s['id'], s['origin'])
            except FolderProblem as e:
                problems.append(str(e).replace(str(tmp / 'sources' / s['id']), s['origin']))
                continue
            problems.extend(exp.problems)
            experiments.append(exp)
        if not experiments:
            raise KnowacqError('no results folder could be shown: ' + ' | '.join(problems))
        systems, duplicates = build_systems(experiments)
        tables, notes = build_tables(systems)
        study_list = studies(experiments, systems)
        manifest = {'format': SITE_FORMAT, 'generated': datetime.now(timezone.utc).isoformat(timespec='seconds'),
                    'sources': sources, 'problems': problems, 'warnings': duplicates}
        _render(tmp, manifest, experiments, systems, tables, study_list, problems + duplicates, notes)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + '\n', encoding='utf-8')
    for message in problems + duplicates:
        warnings.warn(message, LeaderboardWarning, stacklevel=2)
    return out / 'index.html'


def _render(site: Path, manifest, experiments, systems, tables, study_list, problems, notes) -> None:
    from . import __version__ as version
    env = environment()
    names = {s['id']: s['name'] for s in systems}
    common = dict(generated=manifest['generated'], version=version, studies=study_list, names=names)
    shutil.copytree(assets_dir() / 'static', site / 'assets')

    def write(rel: str, text: str) -> None:
        path = site / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding='utf-8')

    filters = tag_values(systems)
    write('index.html', env.get_template('index.html').render(
        root='', title='Overview', tables=tables, problems=problems, notes=notes, filters=filters,
        sources=manifest['sources'], experiments=experiments, systems=systems, **common))
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
                           'experiments': [{**{k: v for k, v in e.items() if k != 'systems'},
                                            'systems': [s['id'] for s in e['systems']]} for e in st['experiments']]}
                          for st in study_list]}
    write('data/leaderboard.json', json.dumps(json_clean(export), indent=1, ensure_ascii=False, allow_nan=False) + '\n')


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m pyterrier_knowacq.leaderboard RESULTS... -o SITE``."""
    parser = argparse.ArgumentParser(prog='knowacq leaderboard', description=__doc__.split('\n')[0])
    parser.add_argument('results', nargs='*', help='results folders written by `knowacq run`')
    parser.add_argument('-o', '--output', default='site', help='site folder (created or extended)')
    args = parser.parse_args(argv)
    try:
        index = build_site(args.results, args.output)
    except KnowacqError as e:
        print(f'[knowacq] error: {e}', file=sys.stderr)
        return 2
    print(f'[knowacq] leaderboard: {index.resolve()}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
