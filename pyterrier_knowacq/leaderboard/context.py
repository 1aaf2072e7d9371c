"""What a system is and costs (its models, their size and training, query throughput, the hardware), and the
commands that rebuild it, as the leaderboard's pages show them.

Example::

    system_context(meta, 'BM25 >> C', 'run(name=bm25) >> text >> ce(model=C)', meta['collections'][0])['params_text']
    reproduction(meta, 'BM25 >> C', source_id)['commands']   # git checkout ..., make install, knowacq run ..., verify
"""
from __future__ import annotations

import math
import re
import shlex
from typing import Dict, List, Optional, Tuple

from .data import REPO_ROOT, slugify

__all__ = ['KNOWN_PARAMS', 'human_count', 'platform_text', 'system_context', 'reproduction', 'public_arg']


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
