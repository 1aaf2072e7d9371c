"""The leaderboard's model: systems with stable ids, overview tables with tie groups, per-query differences.

Plain dicts and lists only, so that the HTML pages and the CSV/JSON exports show exactly the same numbers.
"""
from __future__ import annotations

import math
import re
from typing import Dict, List, Optional, Tuple

import pandas as pd

from .leaderboard_data import (ALPHA, TAG_KEYS, Collection, ExperimentData, baseline_sig, short_hash, slugify,
                               tie_groups)


def _run_slug(name: str) -> str:
    """The run file name that ``knowacq run`` uses when meta.json gives no slug."""
    return re.sub(r'[^A-Za-z0-9._-]+', '-', str(name)).strip('-').lower() or 'system'


def _safe_slug(slug) -> Optional[str]:
    slug = str(slug) if slug is not None else ''
    return slug if re.fullmatch(r'[A-Za-z0-9_-][A-Za-z0-9._-]*', slug) else None


def _f(value) -> Optional[float]:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def build_systems(experiments: List[ExperimentData]) -> Tuple[List[Dict], List[str]]:
    """One entry per (results folder, system); ids are unique; duplicates across folders give a warning."""
    systems, used, seen, dups = [], set(), {}, {}
    for exp in experiments:
        meta = exp.meta
        declared = {str(s.get('name')): s for s in meta.get('systems') or [] if isinstance(s, dict) and 'name' in s}
        names = list(declared)
        for coll in exp.collections:
            names += [n for n in coll.agg['name'] if n not in names]
        for name in names:
            spec = declared.get(name, {})
            base = f'{slugify(meta["experiment"])}--{slugify(name)}'
            sid = base if base not in used else f'{base}--{short_hash(exp.origin + chr(0) + name)}'
            k = 2
            while sid in used:
                sid, k = f'{base}--{k}', k + 1
            used.add(sid)
            key = (meta['experiment'], name)
            if key in seen:
                dups.setdefault((meta['experiment'], seen[key][0], exp.origin), []).append(
                    f'{name!r} (ids {seen[key][1]!r} and {sid!r})')
            else:
                seen[key] = (exp.origin, sid)
            tags = {str(k): str(v) for k, v in (spec.get('tags') or {}).items()} if isinstance(spec.get('tags'), dict) else {}
            tags.setdefault('study', str(meta.get('study') or ''))
            run_slug = _safe_slug(spec.get('slug')) or _run_slug(name)
            systems.append({
                'id': sid, 'name': name, 'experiment': meta['experiment'], 'source_id': exp.source_id,
                'origin': exp.origin, 'study': str(meta.get('study') or ''), 'pipeline': str(spec.get('pipeline') or ''),
                'tags': tags, 'page': f'systems/{sid}.html', 'run_slug': run_slug,
                'is_baseline': meta.get('baseline') is not None and str(meta.get('baseline')) == name,
                'collections': {}, '_exp': exp})
    warnings = [f'experiment {experiment!r} has the same systems in two results folders, {first} and {second}: '
                f'{", ".join(names)}; both copies are kept under distinct ids (never merged); remove one folder from '
                'the site if it is a duplicate' for (experiment, first, second), names in dups.items()]
    return systems, warnings


def _series(coll: Collection, name: Optional[str], measure: str) -> Optional[pd.Series]:
    return None if name is None else coll.series(name, measure)


def build_tables(systems: List[Dict]) -> Tuple[List[Dict], List[str]]:
    """One overview table per (dataset, collection, measure set); fills ``system['collections']``."""
    groups: Dict[Tuple, List[Tuple[Dict, Collection]]] = {}
    for system in systems:
        for coll in system['_exp'].collections:
            if system['name'] in set(coll.agg['name']):
                groups.setdefault(coll.key + (tuple(coll.measures),), []).append((system, coll))
    tables, notes = [], []
    # one id may name two contents (a name given to two different folders, or data edited between runs): those are
    # different tables, told apart by the content fingerprint
    variants: Dict[Tuple[str, str], set] = {}
    for (dataset, cname, data_fp, _m) in groups:
        variants.setdefault((dataset, cname), set()).add(data_fp)
    for (dataset, cname, data_fp, measures), members in groups.items():
        tid = f't-{slugify(cname)}-{short_hash(dataset + chr(0) + cname + chr(0) + "|".join(measures) + (chr(0) + data_fp if data_fp else ""))}'
        if len(variants[(dataset, cname)]) > 1:
            dataset = f'{dataset} · data {data_fp[:8] or "unrecorded"}'
        rows = {s['id']: {'system': s, 'cells': {}} for s, _ in members}
        missing_pq = sorted({c.name + ' of ' + s['origin'] for s, c in members if c.perquery is None})
        if missing_pq:
            notes.append(f'{cname}: no perquery.csv in {", ".join(missing_pq)}; those systems get no rank')
        for m in measures:
            means, pq = {}, {}
            for s, coll in members:
                row = coll.agg[coll.agg['name'] == s['name']].iloc[0]
                means[s['id']] = _f(row.get(m))
                series = _series(coll, s['name'], m)
                if series is not None:
                    pq[s['id']] = series
                base_value = None
                if coll.baseline is not None:
                    base_value = _f(coll.agg[coll.agg['name'] == coll.baseline].iloc[0].get(m))
                sig = baseline_sig(row, m, base_value) if coll.baseline is not None and not s['is_baseline'] else None
                rows[s['id']]['cells'][m] = {'value': means[s['id']], 'vs_baseline': sig}
            valid = {k: v for k, v in means.items() if v is not None}
            groups_ = tie_groups(valid, pq)
            best = max(valid.values()) if valid else None
            for sid, cell in ((k, r['cells'][m]) for k, r in rows.items()):
                g = groups_.get(sid, {})
                cell.update(rank=g.get('rank'), p_vs_leader=g.get('p'), p_vs_leader_holm=g.get('p_holm'),
                            leader=g.get('leader'), best=best is not None and cell['value'] == best)
        primary = measures[0]
        ordered = sorted(rows.values(), key=lambda r: (r['cells'][primary]['rank'] or 10 ** 9,
                                                       -(r['cells'][primary]['value'] or -1e18)))
        for r in ordered:
            r['rank'] = r['cells'][primary]['rank']
        coll0 = members[0][1]
        table = {'id': tid, 'dataset': dataset, 'collection': cname, 'measures': list(measures), 'primary': primary,
                 'num_queries': coll0.info.get('num_queries'), 'rows': ordered,
                 'experiments': sorted({s['experiment'] for s, _ in members})}
        tables.append(table)
        for s, coll in members:
            s['collections'][cname] = system_collection(s, coll, measures, rows[s['id']]['cells'], table)
    tables.sort(key=lambda t: (t['dataset'], t['collection'], t['measures']))
    return tables, notes


def system_collection(system: Dict, coll: Collection, measures, cells: Dict, table: Dict) -> Dict:
    """What a system's page shows for one collection: values, significance, per-query values and differences."""
    exp = system['_exp']
    baseline = coll.baseline
    perquery = []
    if coll.perquery is not None:
        own = {m: _series(coll, system['name'], m) for m in measures}
        base = {m: _series(coll, baseline, m) for m in measures} if baseline else {}
        qids = sorted(set().union(*[set(s.index) for s in own.values() if s is not None]), key=_qid_key)
        for qid in qids:
            entry = {'qid': qid, 'query': coll.topics.get(qid), 'values': {}}
            for m in measures:
                v = _f(own[m].get(qid)) if own[m] is not None else None
                b = _f(base[m].get(qid)) if base.get(m) is not None else None
                entry['values'][m] = {'value': v, 'baseline': b,
                                      'difference': None if v is None or b is None else v - b}
            perquery.append(entry)
    run_file = f'sources/{exp.source_id}/{coll.name}/runs/{system["run_slug"]}.res.gz'
    has_run = (exp.folder / coll.name / 'runs' / f'{system["run_slug"]}.res.gz').is_file()
    timing = ((exp.meta.get('timings') or {}).get(coll.name) or {}).get(system['name'])
    return {'name': coll.name, 'dataset': table['dataset'], 'table': table['id'], 'info': coll.info,
            'measures': list(measures), 'cells': cells, 'baseline': baseline, 'perquery': perquery,
            'run_file': run_file if has_run else None, 'wall_time_s': _f(timing)}


def _qid_key(qid: str):
    return (0, int(qid), '') if str(qid).isdigit() else (1, 0, str(qid))


def tag_values(systems: List[Dict]) -> Dict[str, List[str]]:
    """The filter choices: for each tag key, the sorted values the systems have."""
    return {k: sorted({s['tags'].get(k, '') for s in systems} - {''}) for k in TAG_KEYS}


def studies(experiments: List[ExperimentData], systems: List[Dict]) -> List[Dict]:
    """Study pages: experiments grouped by meta.json's study, with their claims, plots and tables."""
    by_study: Dict[str, Dict] = {}
    for exp in experiments:
        name = str(exp.meta.get('study') or 'unspecified')
        st = by_study.setdefault(name, {'name': name, 'id': slugify(name) + '-' + short_hash(name, 4),
                                        'experiments': []})
        st['experiments'].append({
            'experiment': exp.meta['experiment'], 'source_id': exp.source_id, 'origin': exp.origin,
            'description': str(exp.meta.get('description') or ''), 'claims': exp.claims,
            'plots': [f'sources/{exp.source_id}/plots/{p}' for p in exp.plots],
            'tables': [{'name': t, 'file': f'sources/{exp.source_id}/tables/{t}',
                        'frame': _small_table(exp.folder / 'tables' / t)} for t in exp.tables],
            'report_md': exp.report_md,
            'systems': [s for s in systems if s['source_id'] == exp.source_id]})
    for st in by_study.values():
        st['page'] = f'studies/{st["id"]}.html'
    return sorted(by_study.values(), key=lambda s: s['name'])


def _small_table(path, limit: int = 200) -> Dict:
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as e:  # noqa: BLE001 - shown on the page instead of the table
        return {'columns': [], 'rows': [], 'error': f'{path.name} cannot be read as CSV: {e}', 'total': 0}
    return {'columns': [str(c) for c in df.columns], 'rows': df.head(limit).values.tolist(), 'error': None,
            'total': len(df)}


ALPHA_TEXT = f'{ALPHA:g}'
