""":func:`make_plan`: the plan of an experiment file, every trained model, system, analysis group and index, with
totals over the seeds."""
from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any, Dict, List, Optional, Tuple

from ..._util import KnowacqError
from . import devices
from .assumptions import (BF16_ACTIVATION_FACTOR, BUDGET_FRACTION, CPU_MFU, DOC_CAP, GIB, PISA_FRACTION, QUERY_TOKENS,
                          TOKENS_PER_WORD)
from .devices import device_spec
from .estimate_inference import _add_index, _plan_analysis, _plan_system
from .estimate_training import _plan_training
from .sizes import _doc_tokens, _sizes
from .specs import _Ctx


FORMAT = 'pyterrier_knowacq.plan/1'


def _analysis_specs(config: Dict[str, Any]) -> List[Tuple[str, Dict[str, Any]]]:
    """The analysis' own ``{spec: ...}`` models that are not also one of the file's ``models:`` (same spec)."""
    section = config.get('analysis') or {}
    known = [dict(s or {}) for s in (config.get('models') or {}).values()]
    out = []
    for gname, group in (section.get('groups') or {}).items() if isinstance(section, dict) else ():
        for cname, entry in (group.get('compare') or {}).items():
            if isinstance(entry, dict) and isinstance(entry.get('spec'), dict):
                spec = {**entry['spec'], 'pooling': entry['spec'].get('pooling', group.get('pooling'))}
                spec.setdefault('kind', 'bi-encoder')
                if spec not in known and entry['spec'] not in known and spec not in [s for _, s in out]:
                    out.append((f'analysis {gname}/{cname}', spec))
    return out


def make_plan(source, gpu: Optional[str] = 'auto', *, sizes: bool = True, echo: bool = False) -> Dict[str, Any]:
    """The plan of an experiment file (or an already-read config mapping) on ``gpu``.

    ``sizes=False`` computes memory only (no data is counted, no times): what ``knowacq run`` checks before work.
    Returns a JSON-serialisable mapping (see :func:`format_plan`).
    """
    from ..config import MODEL_TRAINERS, load_config
    started = time.perf_counter()
    if isinstance(source, dict):
        config, path = source, None
    else:
        path = str(source)
        config = load_config(source)
    device = device_spec(gpu, flops=sizes)
    ctx = _Ctx(device, sizes, config, path)
    if sizes:
        _datasets(ctx)
    models, problems = [], []
    specs = [(n, dict(s or {})) for n, s in (config.get('models') or {}).items()] + _analysis_specs(config)
    for name, spec in specs:
        kind = spec.get('kind', 'cross-encoder')
        if kind not in MODEL_TRAINERS:
            continue
        if echo:
            print(f'[knowacq] plan: measuring {name} ...', flush=True)
        try:
            row = _plan_training(name, kind, spec, ctx)
        except KnowacqError as e:
            row = {'name': name, 'kind': kind, 'error': str(e), 'fits': 'unknown', 'notes': [str(e)]}
        models.append(row)
        if row.get('fits') == 'no':
            problems += [n for n in row['notes'] if 'needs about' in n][:1] or [f'model {name!r} does not fit']
    _share_stages(models)
    indexes: Dict[str, Dict[str, Any]] = {}
    systems = []
    for name, spec in (config.get('systems') or {}).items():
        try:
            row = _plan_system(name, spec, ctx, indexes)
        except KnowacqError as e:
            row = {'name': name, 'error': str(e), 'fits': 'unknown', 'notes': [str(e)]}
        systems.append(row)
        if row.get('fits') == 'no':
            problems += [n for n in row['notes'] if 'needs about' in n][:1]
    analysis = []
    if isinstance(config.get('analysis'), dict):
        analysis = _plan_analysis(config['analysis'], ctx, [s for _, s in specs])
        for row in analysis:
            if row['fits'] == 'no':
                problems.append(f'{row["name"]} needs about {row["peak_bytes"] / GIB:.1f} GiB for '
                                f'{row["largest_model"]} but {device.key} has {device.memory_bytes / GIB:.1f} GiB; '
                                'lower its batch_size or max_length')
    if sizes:
        _pisa_for_training(ctx, indexes)
    plan = {'format': FORMAT, 'file': path, 'experiment': config.get('name'), 'device': asdict(device),
            'budget_bytes': int(device.budget_bytes),
            'assumptions': {'budget_fraction': BUDGET_FRACTION, 'bf16_activation_factor': BF16_ACTIVATION_FACTOR,
                            'doc_cap': DOC_CAP, 'tokens_per_word': TOKENS_PER_WORD, 'query_tokens': QUERY_TOKENS,
                            'cpu_mfu': CPU_MFU, 'pisa_fraction': PISA_FRACTION,
                            'cpu_gflops_measured': round(devices._CPU_GFLOPS, 1) if devices._CPU_GFLOPS else None},
            'datasets': ctx.datasets.get('summary', {}), 'models': models, 'systems': systems, 'analysis': analysis,
            'indexes': list(indexes.values()), 'problems': problems, 'fits': not problems, 'notes': ctx.notes}
    if sizes:
        # seeds: every trained model is trained, and every system that loads one is run, once per seed
        n_seeds = len(config['seeds']) if isinstance(config.get('seeds'), list) and config['seeds'] else 1
        trained = set(config.get('models') or {})
        uses = {r['name']: any(m.get('model') in trained for m in r.get('models') or []) for r in systems}
        train_s = n_seeds * sum(r.get('seconds') or 0 for r in models)
        infer_s = sum((n_seeds if uses[r['name']] else 1) * (r.get('seconds') or 0) for r in systems)
        disk = n_seeds * sum(r.get('disk_bytes') or 0 for r in models) + sum(ix['bytes'] for ix in indexes.values()) + \
            sum(r.get('disk_bytes') or 0 for r in analysis)
        if n_seeds > 1:
            ctx.note(f'{n_seeds} seeds: training, checkpoints and the systems that load a trained model count '
                     f'{n_seeds} times in the totals (the rows show one seed)')
        plan['totals'] = {'training_seconds': train_s, 'inference_seconds': infer_s, 'seconds': train_s + infer_s,
                          'disk_bytes': int(disk),
                          'disk_peak_bytes': int(disk + max([r.get('disk_peak_bytes', 0) - r.get('disk_bytes', 0)
                                                             for r in models] or [0]))}
    plan['measure_seconds'] = round(ctx.measured_s, 1)
    plan['plan_seconds'] = round(time.perf_counter() - started, 1)
    return plan


def _share_stages(models: List[Dict[str, Any]]) -> None:
    """A stage another model trains first (same spec prefix) is trained once: its time and checkpoint count there."""
    owner: Dict[str, Tuple[str, int]] = {}
    for row in models:
        shared = []
        for st in row.get('stages') or []:
            if st.get('key') in owner:
                st['shared_with'] = owner[st['key']]
                shared.append(st)
            else:
                owner[st['key']] = (row['name'], st['stage'])
        if not shared:
            continue
        row['seconds'] = None if row.get('seconds') is None else sum(s['seconds'] or 0 for s in row['stages']
                                                                     if 'shared_with' not in s)
        row['disk_bytes'] = max(0, row['disk_bytes'] - len(shared) * row['checkpoint_bytes'])
        row['disk_peak_bytes'] = max(0, row['disk_peak_bytes'] - len(shared) * row['checkpoint_bytes'])
        for st in shared:
            row['notes'].append(f'stage {st["stage"]} is {st["shared_with"][0]}\'s stage {st["shared_with"][1]}, '
                                'trained once (time and disk counted there)')


def _datasets(ctx: _Ctx) -> None:
    from ...datasets.core import get_dataset
    from ..config import _fold_data, folds_of
    config = ctx.config
    try:
        dataset = get_dataset(config['dataset'])
        folds = folds_of(config, ctx.path or '<config>')
    except Exception as e:  # noqa: BLE001
        ctx.note(f'data sizes not counted ({e})')
        return
    tests, summary = [], {}
    train = None
    for fold in folds:
        try:
            test = fold.test_data(dataset)
            tests.append((fold, test))
            s = _sizes(*test)
            summary[fold.folder] = {'dataset': test[0].name, 'split': test[1], 'queries': s.get('queries'),
                                    'docs': s.get('docs'), 'mean_doc_tokens': round(_doc_tokens(s), 1),
                                    'source': s.get('queries_source')}
        except Exception as e:  # noqa: BLE001
            ctx.note(f'{fold.folder}: sizes not counted ({e})')
        if fold.train is not None and train is None:
            try:
                train = _fold_data(dataset, fold.train)
            except Exception:  # noqa: BLE001
                pass
    ctx.datasets.update(tests=tests, summary=summary)
    if train is not None:
        ctx.datasets['train'] = train
        s = _sizes(*train)
        summary['train'] = {'dataset': train[0].name, 'split': train[1], 'queries': s.get('queries'),
                            'docs': s.get('docs'), 'source': s.get('queries_source')}


def _pisa_for_training(ctx: _Ctx, indexes) -> None:
    """Training data drawn from ``run: bm25`` on a dataset that ships no BM25 run builds a PISA index of its corpus."""
    ds, split = ctx.datasets.get('train') or (None, None)
    if ds is None:
        return
    needs = False
    for spec in (ctx.config.get('models') or {}).values():
        spec = spec or {}
        datas = [spec.get('data') or {}] + [st.get('data') or {} for st in spec.get('stages') or []]
        needs |= any(d.get('run', 'bm25') == 'bm25' and not d.get('teacher') for d in datas if isinstance(d, dict))
    if needs and 'bm25' not in [n.split(':')[0] for n in (ds.run_names(split) or [])]:
        _add_index(indexes, 'pisa', ds, _sizes(ds, split), None, 'training data (run: bm25)')
