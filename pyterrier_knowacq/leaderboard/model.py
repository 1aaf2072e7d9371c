"""The leaderboard's model: systems with stable ids and their context (size, training, cost, the commands that
rebuild them), overview tables with tie groups and one explicit baseline, per-query differences, study pages.

Plain dicts and lists only, so that the HTML pages and the CSV/JSON exports show exactly the same numbers. A
system's context and reproduction commands are in :mod:`.context`, the study pages in :mod:`.studies`; their names
stay importable from here.
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Tuple

import pandas as pd

from .. import results
from .data import (ALPHA, TAG_KEYS, Collection, ExperimentData, baseline_sig, holm, paired_tests, query_matrix,
                   short_hash, slugify, tie_groups)
from .context import (KNOWN_PARAMS, _f, _known_params, _model_info, _relative_file, _stages,  # noqa: F401
                      human_count, platform_text, public_arg, reproduction, system_context)
from .studies import (ALPHA_TEXT, PLOT_PREFERENCE, TABLE_ROWS, _small_table, format_number,  # noqa: F401
                      image_size, plot_entries, studies)


def _run_slug(name: str) -> str:
    """The run file name that ``knowacq run`` uses when meta.json gives no slug."""
    return results.slug(name)


def _safe_slug(slug) -> Optional[str]:
    slug = str(slug) if slug is not None else ''
    return slug if re.fullmatch(r'[A-Za-z0-9_-][A-Za-z0-9._-]*', slug) else None


# --- systems ----------------------------------------------------------------------------------------------------

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
            sid = base if base not in used else f'{base}--{short_hash(exp.source_id + chr(0) + name)}'
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
            pipeline = str(spec.get('pipeline') or '')
            systems.append({
                'id': sid, 'name': name, 'experiment': meta['experiment'], 'source_id': exp.source_id,
                'origin': exp.label, 'study': str(meta.get('study') or ''), 'pipeline': pipeline,
                'tags': tags, 'page': f'systems/{sid}.html', 'run_slug': run_slug,
                'is_baseline': meta.get('baseline') is not None and str(meta.get('baseline')) == name,
                'repro': reproduction(meta, name, exp.source_id), 'collections': {}, '_exp': exp})
    warnings = [f'experiment {experiment!r} has the same systems in two results folders, {first} and {second}: '
                f'{", ".join(names)}; both copies are kept under distinct ids (never merged); remove one folder from '
                'the site if it is a duplicate' for (experiment, first, second), names in dups.items()]
    return systems, warnings


def _series(coll: Collection, name: Optional[str], measure: str) -> Optional[pd.Series]:
    return None if name is None else coll.series(name, measure)


def _p2(p) -> Optional[float]:
    """A p-value kept to 2 significant digits (what the page shows; smaller exports)."""
    return None if p is None else float(f'{float(p):.2g}')


def _default_baseline(members: List[Tuple[Dict, Collection]], have_pq: set) -> Optional[str]:
    """The table's baseline: the declared experiment baseline that most of the table's systems were declared against
    (ties: the earlier folder); ``None`` when no experiment declared one with per-query values."""
    votes: Dict[str, List] = {}
    for order, (s, coll) in enumerate(members):
        if coll.baseline is None:
            continue
        base = next((b for b, c in members if b['_exp'] is s['_exp'] and b['name'] == coll.baseline), None)
        if base is None or base['id'] not in have_pq:
            continue
        entry = votes.setdefault(base['id'], [0, order])
        entry[0] += 1
    if not votes:
        return None
    return min(votes, key=lambda sid: (-votes[sid][0], votes[sid][1]))


def build_tables(systems: List[Dict]) -> Tuple[List[Dict], List[str]]:
    """One overview table per (dataset id, collection, data content fingerprint): the measures of all its systems
    (blank where a system's experiment did not measure one), tie-group ranks per measure, and significance against
    one explicit table baseline (any system of the table; precomputed for each). Fills ``system['collections']``."""
    groups: Dict[Tuple, List[Tuple[Dict, Collection]]] = {}
    for system in systems:
        for coll in system['_exp'].collections:
            if system['name'] in set(coll.agg['name']):
                groups.setdefault(coll.key, []).append((system, coll))
    tables, notes = [], []
    # one id may name two contents (a name given to two different folders, or data edited between runs): those are
    # different tables, told apart by the content fingerprint
    variants: Dict[Tuple[str, str], set] = {}
    for (dataset, cname, data_fp) in groups:
        variants.setdefault((dataset, cname), set()).add(data_fp)
    for (dataset, cname, data_fp), members in groups.items():
        tid = f't-{slugify(cname)}-{short_hash(dataset + chr(0) + cname + (chr(0) + data_fp if data_fp else ""))}'
        label = dataset
        if len(variants[(dataset, cname)]) > 1:
            label = f'{dataset} · data {data_fp[:8] or "unrecorded"}'
        measures: List[str] = []
        coverage: Dict[str, int] = {}
        for _s, coll in members:
            for m in coll.measures:
                if m not in measures:
                    measures.append(m)
                coverage[m] = coverage.get(m, 0) + 1
        primary = max(measures, key=lambda m: (coverage[m], -measures.index(m)))
        rows = {s['id']: {'system': s, 'cells': {}} for s, _ in members}
        missing_pq = sorted({c.name + ' of ' + s['origin'] for s, c in members if c.perquery is None})
        if missing_pq:
            notes.append(f'{cname}: no perquery.csv in {", ".join(missing_pq)}; those systems get no rank')
        pq_by_m: Dict[str, Dict[str, pd.Series]] = {}
        for m in measures:
            means, pq = {}, {}
            for s, coll in members:
                if m not in coll.measures:
                    rows[s['id']]['cells'][m] = None   # not measured by this system's experiment: a blank cell
                    continue
                row = coll.agg[coll.agg['name'] == s['name']].iloc[0]
                means[s['id']] = _f(row.get(m))
                series = _series(coll, s['name'], m)
                if series is not None:
                    pq[s['id']] = series
                base_value = None
                if coll.baseline is not None:
                    base_value = _f(coll.agg[coll.agg['name'] == coll.baseline].iloc[0].get(m))
                sig = baseline_sig(row, m, base_value) if coll.baseline is not None and not s['is_baseline'] else None
                rows[s['id']]['cells'][m] = {'value': means[s['id']], 'vs_experiment_baseline': sig}
            pq_by_m[m] = pq
            valid = {k: v for k, v in means.items() if v is not None}
            ranks = tie_groups(valid, pq)
            best = max(valid.values()) if valid else None
            for sid, r in rows.items():
                cell = r['cells'][m]
                if cell is None:
                    continue
                g = ranks.get(sid, {})
                cell.update(rank=g.get('rank'), p_vs_leader=g.get('p'), p_vs_leader_holm=g.get('p_holm'),
                            leader=g.get('leader'), tie_size=g.get('size'),
                            best=best is not None and cell['value'] == best)
        have_pq = {sid for sid in rows if any(sid in pq_by_m[m] for m in measures)}
        comparisons = _baseline_comparisons(rows, measures, pq_by_m)
        default = _default_baseline(members, have_pq) or next(
            (r['system']['id'] for r in sorted(rows.values(), key=lambda r: -((r['cells'][primary] or {}).get('value')
                                                                             or -1e18)) if r['system']['id'] in have_pq), None)
        for sid, r in rows.items():
            for m in measures:
                if r['cells'][m] is not None:
                    r['cells'][m]['vs_baseline'] = None if default is None or sid == default else \
                        (comparisons.get(default, {}).get(m, {}).get(sid))
        ordered = sorted(rows.values(), key=lambda r: ((r['cells'][primary] or {}).get('rank') or 10 ** 9,
                                                       -((r['cells'][primary] or {}).get('value') or -1e18)))
        for r in ordered:
            r['rank'] = (r['cells'][primary] or {}).get('rank')
            r['tied'] = ((r['cells'][primary] or {}).get('tie_size') or 1) > 1
        nqs = sorted({c.info.get('num_queries') for _s, c in members if isinstance(c.info.get('num_queries'), int)})
        table = {'id': tid, 'dataset': label, 'dataset_name': str(members[0][1].info.get('dataset_name') or ''),
                 'collection': cname, 'fingerprint': data_fp, 'measures': measures, 'primary': primary,
                 'num_queries': nqs[0] if len(nqs) == 1 else (f'{nqs[0]}–{nqs[-1]}' if nqs else None),
                 'rows': ordered, 'experiments': sorted({s['experiment'] for s, _ in members}),
                 'baseline': default, 'baselines': [r['system']['id'] for r in ordered if r['system']['id'] in have_pq],
                 'comparisons': comparisons, 'ties': tie_summary(ordered, primary),
                 'partial_measures': [m for m in measures if coverage[m] < len(members)]}
        tables.append(table)
        for s, coll in members:
            s['collections'][cname] = system_collection(s, coll, coll.measures, rows[s['id']]['cells'], table)
    tables.sort(key=lambda t: (t['dataset'], t['collection'], t['fingerprint']))
    return tables, notes


def _baseline_comparisons(rows: Dict[str, Dict], measures: List[str],
                          pq_by_m: Dict[str, Dict[str, pd.Series]]) -> Dict[str, Dict[str, Dict[str, Dict]]]:
    """``{baseline id: {measure: {system id: {direction, p, p_holm, better, worse, n}}}}`` for every system with
    per-query values as the baseline: paired t-tests over shared queries, Holm over the table's comparisons with that
    baseline (per measure); direction +1/-1 when significant (by the mean), else 0."""
    out: Dict[str, Dict[str, Dict[str, Dict]]] = {}
    for m in measures:
        pq = pq_by_m[m]
        ids = [sid for sid in rows if sid in pq]
        if len(ids) < 2:
            continue
        matrix = query_matrix(pq, ids)
        values = {sid: (rows[sid]['cells'][m] or {}).get('value') for sid in ids}
        for j, base in enumerate(ids):
            others = [k for k in range(len(ids)) if k != j]
            p, n, better, worse = paired_tests(matrix[:, others], matrix[:, j])
            adjusted = holm([float(v) for v in p])
            target = out.setdefault(base, {}).setdefault(m, {})
            for k, praw, padj, nn, b, w in zip(others, p, adjusted, n, better, worse):
                sid = ids[k]
                v, bv = values[sid], values[base]
                direction = 0
                if padj < ALPHA and v is not None and bv is not None and v != bv:
                    direction = 1 if v > bv else -1
                target[sid] = {'direction': direction, 'p': _p2(praw), 'p_holm': _p2(padj), 'better': int(b),
                               'worse': int(w), 'n': int(nn)}
    return out


def tie_summary(rows: List[Dict], measure: str) -> List[Dict]:
    """The tie groups of a table on its primary measure, in rank order: rank, leader, members (names)."""
    groups: Dict[int, Dict] = {}
    for r in rows:
        cell = r['cells'][measure] or {}
        if cell.get('rank') is None:
            continue
        g = groups.setdefault(cell['rank'], {'rank': cell['rank'], 'leader': None, 'members': []})
        g['members'].append(r['system']['name'])
        if cell.get('leader') == r['system']['id']:
            g['leader'] = r['system']['name']
    for g in groups.values():
        g['shared'] = len(g['members']) > 1
    return [groups[k] for k in sorted(groups)]


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
    run_file = f'sources/{exp.source_id}/{coll.name}/{results.RUNS}/{results.run_name(system["run_slug"])}'
    has_run = results.run_path(exp.folder, coll.name, system['run_slug']).is_file()
    context = system_context(exp.meta, system['name'], system['pipeline'], {**coll.info, 'name': coll.name})
    return {'name': coll.name, 'dataset': table['dataset'], 'table': table['id'], 'info': coll.info,
            'measures': list(measures), 'cells': {m: cells[m] for m in measures if cells.get(m) is not None},
            'baseline': baseline, 'perquery': perquery, 'run_file': run_file if has_run else None,
            'wall_time_s': context['seconds'], 'context': context}


def _qid_key(qid: str):
    return (0, int(qid), '') if str(qid).isdigit() else (1, 0, str(qid))


def tag_values(systems: List[Dict]) -> Dict[str, List[str]]:
    """The filter choices: for each tag key, the sorted values the systems have."""
    return {k: sorted({s['tags'].get(k, '') for s in systems} - {''}) for k in TAG_KEYS}


