"""The leaderboard's model: systems with stable ids and their context (size, training, cost, the commands that
rebuild them), overview tables with tie groups and one explicit baseline, per-query differences, study pages.

Plain dicts and lists only, so that the HTML pages and the CSV/JSON exports show exactly the same numbers.
"""
from __future__ import annotations

import math
import re
import shlex
import struct
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pandas as pd

from .data import (ALPHA, REPO_ROOT, TAG_KEYS, Collection, ExperimentData, baseline_sig, holm,
                               paired_tests, query_matrix, short_hash, slugify, tie_groups)


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


# --- context: model size, training, cost ------------------------------------------------------------------------

#: parameters of the packaged and common backbones (encoder body; a ranking head adds < 0.1%)
KNOWN_PARAMS = {
    'minilm-l6': 22_713_216, 'sentence-transformers/all-minilm-l6-v2': 22_713_216,
    'cross-encoder/ms-marco-minilm-l-6-v2': 22_713_601, 'nreimers/minilm-l6-h384-uncased': 22_713_216,
    'smollm2-135m': 134_515_008, 'huggingfacetb/smollm2-135m': 134_515_008,
    'huggingfacetb/smollm2-135m-instruct': 134_515_008,
    'bert-base-uncased': 109_482_240, 'google-bert/bert-base-uncased': 109_482_240,
    'colbert-ir/colbertv2.0': 109_580_544, 'facebook/contriever': 109_482_240,
    'sebastian-hofstaetter/distilbert-dot-tas_b-b256-msmarco': 66_362_880,
    'google/electra-base-discriminator': 108_891_648, 'roberta-base': 124_645_632,
    'facebook/dpr-ctx_encoder-single-nq-base': 108_891_648, 'facebook/dpr-question_encoder-single-nq-base': 108_891_648,
}
_MODEL_PARAM = re.compile(r'\bmodel\s*=\s*([^,\s)]+)')
_RUN_STAGE = re.compile(r'\brun\s*\(\s*name\s*=\s*([^,\s)]+)')


def _known_params(name: Optional[str]) -> Optional[int]:
    if not name:
        return None
    key = str(name).lower()
    key = key[len('random:'):] if key.startswith('random:') else key
    return KNOWN_PARAMS.get(key)


def human_count(n: Optional[int]) -> str:
    if n is None:
        return '–'
    if n == 0:
        return '0'
    for div, unit in ((1e9, 'B'), (1e6, 'M'), (1e3, 'k')):
        if n >= div:
            return f'{n / div:.3g}{unit}'
    return str(n)


def _stages(spec: Dict) -> List[Dict]:
    stages = spec.get('stages') if isinstance(spec.get('stages'), list) else None
    return [s for s in stages if isinstance(s, dict)] if stages else [spec]


def _model_info(name: str, cfg_models: Dict, meta: Dict, train: Optional[str]) -> Dict:
    spec = cfg_models.get(name)
    if not isinstance(spec, dict):   # a packaged alias, a hub id or a folder: used as is, not trained here
        params = _known_params(name)
        return {'name': name, 'trained': False, 'backbone': name, 'params': params, 'params_text': human_count(params),
                'random_init': str(name).startswith('random:')}
    stages = _stages(spec)
    teachers, losses, extra = [], [], []
    for st in stages:
        data = st.get('data') if isinstance(st.get('data'), dict) else {}
        if data.get('teacher') and str(data['teacher']) not in teachers:
            teachers.append(str(data['teacher']))
        loss = st.get('loss') or spec.get('loss')
        if loss:
            losses.append(str(loss))
        for e in data.get('extra') or []:
            if str(e) not in extra:
                extra.append(str(e))
    steps = sum(int(st['steps']) for st in stages if isinstance(st.get('steps'), (int, float)))
    backbone = str(spec.get('backbone') or '')
    summary = ((meta.get('training') or {}).get(str(train)) or {}).get(name) or {}
    params = summary.get('params') if isinstance(summary.get('params'), int) else _known_params(backbone)
    wall = ((meta.get('resources') or {}).get(f'train: {train}/{name}') or {}).get('wall_s')
    return {'name': name, 'trained': True, 'kind': str(spec.get('kind') or 'cross-encoder'), 'backbone': backbone,
            'random_init': backbone.startswith('random:'), 'params': params, 'params_text': human_count(params),
            'teachers': teachers, 'losses': losses,
            'extra': extra, 'steps': steps or None, 'train_wall_s': _f(wall),
            'teacher_coverage': summary.get('teacher_coverage')}


def platform_text(meta: Dict) -> str:
    """Where the timings were measured, in one line (``not recorded`` for folders written before it was recorded)."""
    plat = meta.get('platform') if isinstance(meta.get('platform'), dict) else None
    if not plat:
        os_name = (meta.get('versions') or {}).get('platform')
        return f'{os_name}; CPU and GPU not recorded' if os_name else 'not recorded'
    parts = [str(plat.get('cpu') or 'CPU unknown')]
    if plat.get('logical_cores'):
        parts.append(f'{plat["logical_cores"]} logical cores')
    if plat.get('ram_gb'):
        parts.append(f'{plat["ram_gb"]:g} GB RAM')
    gpus = plat.get('gpus') or []
    parts.append(', '.join(str(g) for g in gpus) + (f' (CUDA {plat["cuda"]})' if plat.get('cuda') else '')
                 if gpus else 'no GPU')
    return '; '.join(parts)


def system_context(meta: Dict, name: str, pipeline: str, collection: Optional[Dict] = None) -> Dict:
    """What a system is and costs on one collection: its models (trained here or not, on what, with which teacher),
    parameters, training wall time, query throughput from the run's timings, and the hardware."""
    collection = collection or {}
    cfg = meta.get('config') if isinstance(meta.get('config'), dict) else {}
    cfg_models = cfg.get('models') if isinstance(cfg.get('models'), dict) else {}
    train = collection.get('train')
    used = []
    for m in _MODEL_PARAM.findall(pipeline or ''):
        if m not in used:
            used.append(m)
    models = [_model_info(m, cfg_models, meta, train) for m in used]
    runs = _RUN_STAGE.findall(pipeline or '')
    params = None
    if models and all(m['params'] is not None for m in models):
        params = sum(m['params'] for m in models)
    elif not models and not runs:
        params = 0   # lexical (BM25 over an index): no learned parameters
    trained = [m for m in models if m['trained']]
    split = f'{collection.get("train_dataset") or ""} {train}'.strip() if train else None
    if trained:
        teachers = sorted({t for m in trained for t in m['teachers']})
        trained_on = (split or 'the training split') + (f' · teacher {", ".join(teachers)}' if teachers else '')
        if any(m['random_init'] for m in trained):
            trained_on += ' · from random init'
    else:
        trained_on = 'none'
    walls = [m['train_wall_s'] for m in trained]
    train_wall = sum(walls) if trained and all(w is not None for w in walls) else None
    name_col = collection.get('name')
    seconds = _f(((meta.get('timings') or {}).get(name_col) or {}).get(name)) if name_col else None
    nq = collection.get('num_queries')
    qps = ms = None
    if seconds and isinstance(nq, int) and nq > 0:
        qps, ms = nq / seconds, 1000.0 * seconds / nq
    return {'models': models, 'params': params, 'params_text': human_count(params), 'trained_on': trained_on,
            'trained': bool(trained), 'train_wall_s': train_wall, 'seconds': seconds, 'num_queries': nq,
            'qps': qps, 'ms_per_query': ms, 'precomputed_runs': runs,
            'reused': name in ((meta.get('reused') or {}).get(name_col) or []), 'platform': platform_text(meta)}


# --- reproduction -----------------------------------------------------------------------------------------------

def _relative_file(arg: str) -> Tuple[str, Optional[str]]:
    """An experiment file argument as a path relative to the repository, and a note when it is not in it."""
    base = arg.replace('\\', '/').rstrip('/').split('/')[-1]
    if not arg.startswith(('/', '…', '$', '~')) and not re.match(r'^[A-Za-z]:', arg):
        return arg, None
    shipped = REPO_ROOT / 'experiments' / base
    if shipped.is_file():
        return f'experiments/{base}', None
    return 'config.yaml', 'config.yaml: the experiment file as run, kept with this results folder (link above)'


def reproduction(meta: Dict, name: str, source_id: str) -> Dict:
    """The commands that rebuild one system, relative to the repository (never an absolute path): the commit, the
    environment, the experiment run that trains its models and runs it, and ``knowacq verify`` for this system."""
    slug = slugify(meta.get('experiment') or 'results')
    command = str(meta.get('command') or '').strip()
    notes = []
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    if words and words[0].endswith('knowacq'):
        words = words[1:]
    elif len(words) > 2 and words[0].startswith('python') and words[1] == '-m' and 'cli' in words[2]:
        words = words[3:]
    if not words or words[0] not in ('run', 'quickstart'):
        words = ['run', f'experiments/{slug}.yaml']
        notes.append('the recorded command was not a `knowacq run`; this is the equivalent run of its config')
    out = f'results/{slug}'
    fixed, i, has_output = [words[0]], 1, False
    while i < len(words):
        w = words[i]
        if w in ('-o', '--output') and i + 1 < len(words):
            fixed += [w, out]
            has_output, i = True, i + 2
            continue
        if w.startswith('--output='):
            fixed.append(f'--output={out}')
            has_output, i = True, i + 1
            continue
        if w == '--site' and i + 1 < len(words):
            fixed += [w, 'site']
            i += 2
            continue
        if words[0] == 'run' and not w.startswith('-') and len([x for x in fixed[1:] if not x.startswith('-')]) == 0:
            rel, note = _relative_file(w)
            fixed.append(rel)
            if note:
                notes.append(note)
            i += 1
            continue
        fixed.append(public_arg(w))
        i += 1
    if not has_output:
        fixed += ['-o', out]
    commit = str(meta.get('git_commit') or '')
    lines = []
    if commit and commit not in ('unknown', 'None'):
        clean = commit.split('-')[0]
        lines.append(f'git checkout {shlex.quote(clean[:12])}' + ('   # the run had uncommitted changes on top of it'
                                                                  if commit.endswith('-dirty') else ''))
    else:
        notes.append('no git commit was recorded: use the version listed below')
    lines.append('make install   # .venv with the pinned dependencies')
    cfg = meta.get('config') if isinstance(meta.get('config'), dict) else {}
    trains = sorted((cfg.get('models') or {}).keys()) if isinstance(cfg.get('models'), dict) else []
    n_sys = len(meta.get('systems') or [])
    what = (f'trains {", ".join(trains)} and runs' if trains else 'runs') + \
        f' all {n_sys} system{"s" if n_sys != 1 else ""}' + (' and the analysis' if cfg.get('analysis') else '')
    lines.append('.venv/bin/knowacq ' + ' '.join(shlex.quote(w) for w in fixed) + f'   # {what}')
    lines.append(f'.venv/bin/knowacq verify {out} --system {shlex.quote(name)}   # re-run this system alone, compare')
    return {'commands': '\n'.join(lines), 'results': out, 'notes': notes}


def public_arg(word: str) -> str:
    from .data import public_text
    return public_text(word)


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
    run_file = f'sources/{exp.source_id}/{coll.name}/runs/{system["run_slug"]}.res.gz'
    has_run = (exp.folder / coll.name / 'runs' / f'{system["run_slug"]}.res.gz').is_file()
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


# --- studies ----------------------------------------------------------------------------------------------------

def studies(experiments: List[ExperimentData], systems: List[Dict]) -> List[Dict]:
    """Study pages: experiments grouped by meta.json's study, with their claims, plots (each once) and tables."""
    by_study: Dict[str, Dict] = {}
    for exp in experiments:
        name = str(exp.meta.get('study') or 'unspecified')
        st = by_study.setdefault(name, {'name': name, 'id': slugify(name) + '-' + short_hash(name, 4),
                                        'experiments': []})
        st['experiments'].append({
            'experiment': exp.meta['experiment'], 'source_id': exp.source_id, 'origin': exp.label,
            'description': str(exp.meta.get('description') or ''), 'claims': exp.claims,
            'plots': plot_entries(exp),
            'tables': [{'name': t, 'file': f'sources/{exp.source_id}/tables/{t}',
                        'frame': _small_table(exp.folder / 'tables' / t)} for t in exp.tables],
            'report_md': exp.report_md,
            'systems': [s for s in systems if s['source_id'] == exp.source_id]})
    for st in by_study.values():
        st['page'] = f'studies/{st["id"]}.html'
    return sorted(by_study.values(), key=lambda s: s['name'])


PLOT_PREFERENCE = ('.svg', '.png')


def plot_entries(exp: ExperimentData) -> List[Dict]:
    """Each plot once (the SVG when there is one: it stays sharp when enlarged), the other formats as downloads, and
    its aspect ratio (a wide plot gets the full width of the page)."""
    stems: Dict[str, List[str]] = {}
    for p in exp.plots:
        stems.setdefault(Path(p).stem, []).append(p)
    out = []
    for stem in sorted(stems):
        files = sorted(stems[stem], key=lambda f: PLOT_PREFERENCE.index(Path(f).suffix) if Path(f).suffix in PLOT_PREFERENCE else 9)
        shown = files[0]
        size = image_size(exp.folder / 'plots' / shown)
        out.append({'name': stem, 'src': f'sources/{exp.source_id}/plots/{shown}', 'file': shown,
                    'others': [{'name': f, 'src': f'sources/{exp.source_id}/plots/{f}'} for f in files[1:]],
                    'width': size[0] if size else None, 'height': size[1] if size else None,
                    'wide': bool(size and size[1] and size[0] / size[1] >= 1.6)})
    return out


def image_size(path: Path) -> Optional[Tuple[float, float]]:
    """Width and height of a PNG (pixels) or an SVG (its width/height or viewBox), or None."""
    try:
        with open(path, 'rb') as f:
            head = f.read(4096)
    except OSError:
        return None
    if head[:8] == b'\x89PNG\r\n\x1a\n' and len(head) >= 24:
        w, h = struct.unpack('>II', head[16:24])
        return float(w), float(h)
    text = head.decode('utf-8', errors='replace')
    tag = re.search(r'<svg\b[^>]*>', text, re.S)
    if not tag:
        return None
    attrs = tag.group(0)
    w = re.search(r'\bwidth="([\d.]+)', attrs)
    h = re.search(r'\bheight="([\d.]+)', attrs)
    if w and h:
        return float(w.group(1)), float(h.group(1))
    vb = re.search(r'viewBox="[\d.\s-]*?([\d.]+)\s+([\d.]+)"', attrs)
    return (float(vb.group(1)), float(vb.group(2))) if vb else None


_P_COLUMN = re.compile(r'(?:^|[_\s-])p(?:$|[_\s-])|p[-_\s]?val|^p_|_p$|pvalue', re.I)
TABLE_ROWS = 200


def format_number(column: str, text: str) -> str:
    """A CSV value as the study page shows it: 2 significant digits for p-values, 4 decimals for other non-integers
    (tiny values in 2-digit scientific notation), integers and text unchanged."""
    if text == '' or not re.fullmatch(r'[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?', text.strip()):
        return text
    value = float(text)
    if not math.isfinite(value):
        return text
    if _P_COLUMN.search(column):
        return f'{value:.2g}'
    if re.fullmatch(r'[-+]?\d+', text.strip()):
        return text
    if value != 0 and abs(value) < 1e-4:
        return f'{value:.2e}'
    return f'{value:.4f}'


def _small_table(path, limit: int = TABLE_ROWS) -> Dict:
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as e:  # noqa: BLE001 - shown on the page instead of the table
        return {'columns': [], 'rows': [], 'error': f'{path.name} cannot be read as CSV: {e}', 'total': 0}
    columns = [str(c) for c in df.columns]
    head = df.head(limit).values.tolist()
    numeric = []
    for k, col in enumerate(columns):
        vals = [r[k] for r in head if r[k] != '']
        numeric.append(bool(vals) and all(re.fullmatch(r'[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf|-inf',
                                                       v.strip(), re.I) for v in vals))
    rows = [[{'v': v, 'text': format_number(col, v) if numeric[k] else v} for k, (col, v) in enumerate(zip(columns, r))]
            for r in head]
    return {'columns': columns, 'numeric': numeric, 'rows': rows, 'error': None, 'total': len(df),
            'wide': len(columns) > 8}


ALPHA_TEXT = f'{ALPHA:g}'
