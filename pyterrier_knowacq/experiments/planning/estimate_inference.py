"""The cost of inference: per system the memory of the models its stages load and the FLOPs over every test
collection it runs on, the indexes it builds (PISA, Terrier, dense, ColBERT), and the analysis' encoders."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from ..._util import KnowacqError
from .architectures import architecture, param_counts
from .assumptions import COLBERT_TOKEN_OVERHEAD, GIB, PISA_FRACTION, QUERY_TOKENS
from .measure import measure_encoder
from .sizes import _doc_tokens, _sizes
from .specs import _Ctx, _fits, _normalised_spec, _spec_backbone


def _model_of(name: str, ctx: _Ctx) -> Tuple[str, Optional[Dict[str, Any]]]:
    """``(backbone, spec)`` of a stage's ``model=``: a trained model of the file (its spec), else the name."""
    models = ctx.config.get('models') or {}
    if name in models:
        spec = dict(models[name] or {})
        kind = spec.get('kind', 'cross-encoder')
        return _spec_backbone(kind, _normalised_spec(kind, spec)), {**spec, 'kind': kind}
    return name, None


def _inference_model(stage, ctx: _Ctx) -> Dict[str, Any]:
    """Memory and per-token FLOPs of the model a re-ranking/encoding stage loads."""
    from ...models.backbones import paired_query_encoder
    name = str(stage.params.get('model', 'colbert-ir/colbertv2.0' if stage.name.startswith('colbert') else ''))
    backbone, spec = _model_of(name, ctx)
    arch = architecture(backbone)
    counts = param_counts(arch)
    encoders = 1
    if spec is not None and spec['kind'] == 'bi-encoder' and not spec.get('shared', True):
        encoders = 2
    elif spec is None and stage.name in ('dense', 'biencoder') and paired_query_encoder(name):
        encoders = 2
    colbert = stage.name.startswith('colbert')
    half = colbert and ctx.device.gpu
    dim = (spec or {}).get('dim') or arch.colbert_dim or 128
    params = counts['total'] * encoders + (arch.hidden * dim if colbert else 0)
    if colbert:
        length = int(stage.params.get('doc_maxlen') or (spec or {}).get('doc_maxlen') or 180)
    else:
        length = int(stage.params.get('max_length') or (256 if stage.name in ('dense', 'biencoder') else 512))
    batch = int(stage.params.get('batch_size') or 32)
    m = measure_encoder(arch, length)
    working = batch * m['per_layer_seq'] * (0.5 if half else 1.0)
    return {'model': name, 'backbone': backbone, 'architecture': arch.label(), 'arch': arch, 'params': int(params),
            'weights_bytes': params * (2 if half else 4), 'working_bytes': working, 'length': length, 'batch': batch,
            'dense_params': (counts['total'] - counts['embedding'] - counts['pooler']
                             + (arch.hidden * dim if colbert else 0)),
            'half': half, 'dim': dim if colbert else arch.hidden}


def _flops(model: Dict[str, Any], tokens: float, length: float) -> float:
    arch = model['arch']
    return tokens * (2 * model['dense_params'] + 4 * arch.layers * length * arch.hidden)


def _plan_system(name: str, spec, ctx: _Ctx, indexes: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """One system: the models its stages load (memory), and per collection its candidates and FLOPs."""
    from ..config import runs_on
    from ..expressions import parse_pipeline
    expr = spec['pipeline'] if isinstance(spec, dict) else spec
    stages = parse_pipeline(expr)
    row = {'name': name, 'pipeline': expr, 'models': [], 'notes': [], 'collections': {}}
    models = []
    for st in stages:
        if st.name in ('ce', 'biencoder', 'dense', 'colbert', 'colbert_retrieve'):
            try:
                models.append((st, _inference_model(st, ctx)))
            except KnowacqError as e:
                row['notes'].append(str(e))
    weights = sum(m['weights_bytes'] for _, m in models)
    working = max([m['working_bytes'] for _, m in models] or [0])
    row['models'] = [{k: v for k, v in m.items() if k != 'arch'} for _, m in models]
    row['peak_bytes'] = int(weights + working)
    row['fits'] = 'yes' if row['peak_bytes'] <= ctx.device.budget_bytes else (
        'tight' if row['peak_bytes'] <= ctx.device.memory_bytes else 'no')
    if row['fits'] == 'no':
        row['notes'].append(f'system {name!r} needs about {row["peak_bytes"] / GIB:.1f} GiB for its models at '
                            f'inference but {ctx.device.key} has {ctx.device.memory_bytes / GIB:.1f} GiB; lower '
                            'batch_size or use smaller models')
    by_stage = {id(st): m for st, m in models}
    if not ctx.sizes:
        row['seconds'] = None
        return row
    total = 0.0
    rerank_depth = ctx.config.get('rerank_depth')
    for fold, (test_ds, split) in ctx.datasets.get('tests', []):
        if not runs_on(spec, fold.folder):
            continue
        s = _sizes(test_ds, split)
        queries = int(s.get('queries') or 0)
        d_tok = _doc_tokens(s)
        q_tok = QUERY_TOKENS
        depth = None
        flops = {'bf16': 0.0, 'fp32': 0.0}
        for i, st in enumerate(stages):
            p = st.params
            m = by_stage.get(id(st))
            if st.name in ('bm25', 'terrier_bm25'):
                depth = int(p.get('k', 1000))
                _add_index(indexes, 'pisa' if st.name == 'bm25' else 'terrier', test_ds, s, None, name)
            elif st.name == 'run':
                depth = int(p['k']) if p.get('k') else _run_depth(test_ds, str(p.get('name', 'bm25')), split)
            elif st.name in ('dense', 'colbert_retrieve') and m is not None:
                depth = int(p.get('k', 1000))
                length = min(m['length'], d_tok)
                key = _add_index(indexes, st.name, test_ds, s, m, name)
                if key is not None:   # the corpus is encoded once per (corpus, model)
                    flops['bf16' if m['half'] else 'fp32'] += _flops(m, s.get('docs', 0) * length, length)
                flops['bf16' if m['half'] else 'fp32'] += _flops(m, queries * q_tok, q_tok)
            elif st.name in ('ce', 'biencoder', 'colbert') and m is not None:
                cands = queries * (depth or 0)
                if st.name == 'ce':
                    length = min(m['length'], q_tok + d_tok + 1)
                    flops['fp32'] += _flops(m, cands * length, length)
                else:
                    length = min(m['length'], d_tok)
                    flops['bf16' if m['half'] else 'fp32'] += _flops(m, cands * length, length) + \
                        _flops(m, queries * (32 if m['half'] or st.name == 'colbert' else q_tok), q_tok)
            if i == 0 and rerank_depth and len(stages) > 1 and st.cutoff is None and depth:
                depth = min(depth, int(rerank_depth))
            if st.cutoff is not None and depth:
                depth = min(depth, int(st.cutoff))
        rate_h = ctx.device.bf16_flops if ctx.device.gpu else ctx.device.fp32_flops
        seconds = flops['bf16'] / rate_h + flops['fp32'] / ctx.device.fp32_flops if rate_h else 0.0
        row['collections'][fold.folder] = {'queries': queries, 'flops': flops['bf16'] + flops['fp32'],
                                           'seconds': seconds}
        total += seconds
    row['seconds'] = total
    row['disk_bytes'] = sum(ix['bytes'] for ix in indexes.values() if name in ix['systems'] and ix['first'] == name)
    return row


def _run_depth(ds, name: str, split) -> int:
    try:
        run = ds.get_run(name, split)
        return int(run.groupby('qid').size().max())
    except Exception:  # noqa: BLE001 - a run that cannot be read here: TREC's usual depth
        return 1000


def _add_index(indexes, kind: str, ds, s: Dict[str, Any], model: Optional[Dict[str, Any]],
               system: str) -> Optional[str]:
    """Record an index a system builds; returns its key when it is new (built by this system)."""
    key = f'{kind}|{ds.corpus_name}|{model["model"] if model else ""}|{model["length"] if model else ""}'
    if key in indexes:
        if system not in indexes[key]['systems']:
            indexes[key]['systems'].append(system)
        return None
    docs = int(s.get('docs') or 0)
    if kind in ('pisa', 'terrier'):
        size = PISA_FRACTION * docs * float(s.get('doc_chars') or 600)
        label = f'{"PISA" if kind == "pisa" else "Terrier"} BM25 of {ds.corpus_name}'
    elif kind == 'dense':
        size = docs * model['dim'] * 4 + docs * 12
        label = f'dense FlexIndex of {ds.corpus_name} by {model["model"]}'
    else:
        tokens = docs * min(model['length'], _doc_tokens(s))
        size = tokens * (model['dim'] * 2 + COLBERT_TOKEN_OVERHEAD) + docs * 16
        label = f'ColBERT index of {ds.corpus_name} by {model["model"]}'
    indexes[key] = {'index': label, 'kind': kind, 'docs': docs, 'bytes': int(size), 'systems': [system],
                    'first': system}
    return key


# -------------------------------------------------------------------------------------------------------- analysis
def _plan_analysis(section: Dict[str, Any], ctx: _Ctx, trained_specs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    rows = []
    length = int(section.get('max_length', 128))
    batch = int(section.get('batch_size', 32))
    for gname, group in (section.get('groups') or {}).items():
        names = [group.get('backbone')]
        merged = []
        for cname, entry in (group.get('compare') or {}).items():
            if isinstance(entry, dict) and 'spec' in entry:
                names.append(entry['spec'].get('backbone'))
            elif isinstance(entry, dict) and 'adapter' in entry:
                names.append(entry.get('base') or entry.get('adapter'))
                merged.append(entry.get('adapter'))
            elif isinstance(entry, dict):
                names += [entry.get('query'), entry.get('doc')]
            else:
                names.append(entry)
        worst, notes = None, []
        for n in dict.fromkeys(str(x) for x in names if x):
            try:
                arch = architecture(n)
            except KnowacqError as e:
                notes.append(str(e))
                continue
            counts = param_counts(arch)
            m = measure_encoder(arch, length)
            states = (arch.layers + 1) * batch * length * arch.hidden * 4   # output_hidden_states
            peak = counts['total'] * 4 + batch * m['per_layer_seq'] + states
            if worst is None or peak > worst[1]:
                worst = (n, peak)
        disk = 0
        for adapter in merged:
            try:
                disk += param_counts(architecture(str(adapter)))['total'] * 4   # the merged model, cached in fp32
            except KnowacqError:
                pass
        peak = int(worst[1]) if worst else 0
        rows.append({'name': f'analysis {gname}', 'largest_model': worst[0] if worst else None, 'peak_bytes': peak,
                     'batch_size': batch, 'max_length': length, 'disk_bytes': disk,
                     'fits': _fits(peak, ctx.device, False),
                     'seconds': None, 'notes': notes})
    return rows
