"""The plan as readable tables (:func:`format_plan`), and the check ``knowacq run`` makes before any work
(:func:`check_plan`, :class:`PlanRefused`)."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from ..._util import KnowacqError
from .assumptions import BUDGET_FRACTION, GIB
from .plan import make_plan


def _gib(n) -> str:
    return '-' if n is None else f'{n / GIB:.1f}'


def _size(n) -> str:
    if not n:
        return '-'
    for unit, div in (('TB', 1e12), ('GB', 1e9), ('MB', 1e6)):
        if n >= div:
            return f'{n / div:.1f} {unit}'
    return f'{n / 1e3:.0f} kB'


def _duration(s) -> str:
    if s is None:
        return '-'
    if s < 90:
        return f'{s:.0f} s'
    if s < 5400:
        return f'{s / 60:.0f} min'
    if s < 2 * 86400:
        return f'{s / 3600:.1f} h'
    return f'{s / 86400:.1f} d'


def _params(n) -> str:
    return f'{n / 1e9:.2f}B' if n >= 1e9 else f'{n / 1e6:.0f}M' if n >= 1e6 else f'{n / 1e3:.0f}k'


def _table(head: List[str], rows: List[List[str]], right: set) -> List[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    fmt = lambda r: '  ' + '  '.join(str(x).rjust(w) if i in right else str(x).ljust(w)   # noqa: E731
                                     for i, (x, w) in enumerate(zip(r, widths))).rstrip()
    return [fmt(head)] + [fmt(r) for r in rows]


def format_plan(plan: Dict[str, Any]) -> str:
    """The plan as readable tables: training per model, inference per system, indexes, totals and notes."""
    d = plan['device']
    lines = [f'knowacq plan {plan.get("file") or plan.get("experiment")} --gpu {d["key"]}',
             f'device: {d["name"]}, {d["memory_bytes"] / GIB:.1f} GiB (a training step may use '
             f'{int(BUDGET_FRACTION * 100)}%: {plan["budget_bytes"] / GIB:.1f} GiB); '
             + (f'training in bf16 autocast at {d["bf16_flops"] / 1e12:.0f} TFLOP/s, fp32 inference at '
                f'{d["fp32_flops"] / 1e12:.0f} TFLOP/s (sustained)' if d['gpu'] else
                f'fp32 at {d["fp32_flops"] / 1e9:.0f} GFLOP/s (half of the measured '
                f'{plan["assumptions"]["cpu_gflops_measured"] or 0:.0f} GFLOP/s matmul rate)')]
    if plan.get('datasets'):
        parts = []
        for coll, s in plan['datasets'].items():
            docs = f', {s["docs"]:,} passages' if s.get('docs') else ''
            parts.append(f'{coll}: {s["queries"]:,} queries{docs}' if s.get('queries') is not None else f'{coll}: ?')
        lines.append('data: ' + '; '.join(parts))
    if plan['models']:
        rows = []
        for r in plan['models']:
            if r.get('error'):
                rows.append([r['name'], '?', '?', '?', '?', '?', '?', 'unknown'])
                continue
            params = f'{r["architecture"]}, {_params(r["params"])} ({_params(r["trainable_params"])} trained)'
            rows.append([r['name'], params, ' / '.join(s['loss'] for s in r['stages']), _gib(r['peak_bytes']),
                         f'{r["micro_batch"]} x {r["accumulation"]}', _duration(r.get('seconds')),
                         _size(r.get('disk_bytes')), r['fits']])
        lines += ['', 'TRAINING (per model; peak of one step at the micro-batch shown)']
        head = ['model', 'architecture, params', 'loss', 'peak GiB', 'micro x accum', 'est. time', 'disk', 'fits']
        lines += _table(head, rows, {3, 4, 5, 6})
    if plan['systems']:
        rows = []
        for r in plan['systems']:
            if r.get('error'):
                rows.append([r['name'], '?', '?', '?', '?', 'unknown'])
                continue
            colls = r.get('collections') or {}
            q = sum(c['queries'] for c in colls.values())
            rows.append([r['name'], _gib(r['peak_bytes']), f'{len(colls)} / {q:,}' if colls else '-',
                         _duration(r.get('seconds')), _size(r.get('disk_bytes')), r['fits']])
        lines += ['', 'INFERENCE (per system, every collection it runs on)']
        head = ['system', 'peak GiB', 'collections / queries', 'est. time', 'disk', 'fits']
        lines += _table(head, rows, {1, 2, 3, 4})
    if plan.get('analysis'):
        rows = [[r['name'], r.get('largest_model') or '?', _gib(r['peak_bytes']),
                 f'{r["batch_size"]} x {r["max_length"]}', _size(r.get('disk_bytes')), r['fits']]
                for r in plan['analysis']]
        lines += ['', 'ANALYSIS (encoding with every hidden state kept; time not estimated)']
        lines += _table(['group', 'largest model', 'peak GiB', 'batch x length', 'disk', 'fits'], rows, {2, 3, 4})
    if plan.get('indexes'):
        rows = [[ix['index'], f'{ix["docs"]:,}', _size(ix['bytes']), ', '.join(ix['systems'][:2]) +
                 (f' (+{len(ix["systems"]) - 2})' if len(ix['systems']) > 2 else '')] for ix in plan['indexes']]
        lines += ['', 'INDEXES (built once, cached)']
        lines += _table(['index', 'documents', 'disk', 'used by'], rows, {1, 2})
    if plan.get('totals'):
        t = plan['totals']
        lines += ['', f'total: training {_duration(t["training_seconds"])} + inference '
                      f'{_duration(t["inference_seconds"])} = {_duration(t["seconds"])} of {d["key"]} compute; disk '
                      f'{_size(t["disk_bytes"])} kept (peak while training {_size(t["disk_peak_bytes"])})']
    notes = list(plan.get('problems') or [])
    for r in plan['models'] + plan['systems'] + plan.get('analysis', []):
        notes += [f'{r["name"]}: {n}' for n in r.get('notes', []) if n not in notes and 'needs about' not in n]
    for r in plan['models']:
        for s in r.get('stages', []):
            if s.get('steps_source') not in (None, 'steps'):
                notes.append(f'{r["name"]} stage {s["stage"]}: {s["steps"]:,} steps = {s["steps_source"]}'
                             if s.get('steps') else f'{r["name"]} stage {s["stage"]}: steps {s["steps_source"]}')
    notes += plan.get('notes') or []
    verdict = 'yes, every model and system fits' if plan['fits'] else f'NO - {len(plan["problems"])} problem(s)'
    lines += ['', f'fits: {verdict}']
    if notes:
        lines += ['notes:'] + [f'  - {n}' for n in dict.fromkeys(notes)]
    lines.append(f'(activations measured on this CPU in {plan["measure_seconds"]:.0f} s of {plan["plan_seconds"]:.0f} '
                 's; times are FLOP estimates without data preparation; assumptions: pyterrier_knowacq/experiments/planning/assumptions.py)')
    return '\n'.join(lines)


# ------------------------------------------------------------------------------------------------------ run check
class PlanRefused(KnowacqError):
    """The experiment cannot fit this machine's device; ``flag`` names how to run it anyway (``force=True`` in
    Python; the command line says ``--force``)."""

    def __init__(self, message: str, flag: str = 'force=True'):
        super().__init__(message)
        self.flag = flag


def check_plan(config: Dict[str, Any], *, force: bool = False, gpu: Optional[str] = 'auto', echo: bool = True):
    """Before ``knowacq run`` does any work: the memory part of the plan on this machine's device. Raises
    :class:`PlanRefused` (one line: what does not fit, the fix, and ``force``) unless ``force``; a plan that cannot be
    made (an unknown architecture, a missing package) is a warning, never a refusal. Returns the plan or ``None``."""
    import sys
    try:
        plan = make_plan(config, gpu, sizes=False)
    except Exception as e:  # noqa: BLE001 - planning must never stop a run that could work
        if echo:
            why = ' '.join(str(e).split())[:200]
            print(f'[knowacq] warning: the memory plan was skipped ({type(e).__name__}: {why})', file=sys.stderr,
                  flush=True)
        return None
    if plan['problems']:
        device = plan['device']
        text = (f'the plan does not fit {device["name"]} ({device["memory_bytes"] / GIB:.1f} GiB): '
                + '; '.join(plan['problems']) + ' (knowacq plan FILE shows the details)')
        if not force:
            raise PlanRefused(f'{text}; pass force=True to run anyway')
        if echo:
            print(f'[knowacq] warning: {text}: running anyway (--force)', file=sys.stderr, flush=True)
    elif echo:
        peaks = [r['peak_bytes'] for r in plan['models'] + plan['systems'] if r.get('peak_bytes')]
        if peaks:
            print(f'[knowacq] plan: every model and system fits {plan["device"]["name"]} (largest step '
                  f'{max(peaks) / GIB:.1f} GiB of {plan["device"]["memory_bytes"] / GIB:.1f})', flush=True)
    return plan
