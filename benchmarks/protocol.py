"""One measurement protocol for every speed comparison: ours against a peer, interleaved, with an interval.

A single timed block per side cannot support a ratio on a shared 2-core machine (three runs gave 1.28x, 1.73x and
1.45x). So :func:`compare`

1. pins torch's intra-op threads (``BENCH_THREADS``, default: the logical cores) and prints the number;
2. runs each callable once, discarded (warm-up: lazy imports, allocator, one-off tokenizer caches);
3. runs ``rounds`` (>= 7) interleaved rounds, alternating which side goes first (A B, B A, A B, ...), so a slow
   spell of the machine hits both sides; inside a round each side repeats its callable until it has run
   ``min_round_s`` (>= 3 s) and records the time per call;
4. reports the per-round ratios ``peer_time / our_time`` (> 1: ours is faster), their median, min-max and a
   bootstrap 95% interval of the median (numpy, fixed seed), flags the run ``unstable`` when
   ``(max - min) / median > 0.15``, checks the goal against the median, and writes everything to
   ``benchmarks/results/<name>.json`` atomically.

The protocol takes any pair of zero-argument callables, so a new comparison (e.g. int8 against fp32) is one call.

Example::

    from protocol import compare
    result = compare('cross_encoder', ours=lambda: ce.score_pairs(q, d), peer=lambda: st.predict(pairs),
                     goal=1.5, workload={'pairs': len(q), 'queries': 43}, peer_label='sentence-transformers')
    result['ratio']['median'], result['ratio']['ci95'], result['goal']['met']

Settings from the environment (for short development runs; a run with fewer than 7 rounds or rounds under 3 s is
marked ``"full_protocol": false`` in its JSON): ``BENCH_ROUNDS`` (7), ``BENCH_MIN_ROUND_S`` (3),
``BENCH_THREADS`` (logical cores), ``BENCH_RESULTS_DIR`` (``benchmarks/results``).
"""
from __future__ import annotations

import datetime
import gc
import json
import os
import platform
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

ROUNDS = 7                 # the protocol's minimum; fewer is a development run
MIN_ROUND_S = 3.0
UNSTABLE_SPREAD = 0.15     # (max - min) / median of the per-round ratios
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
RESULTS_DIR = Path(__file__).resolve().parent / 'results'
PACKAGES = ('torch', 'transformers', 'sentence-transformers', 'pyterrier-dr', 'pylate', 'numpy', 'pyterrier-knowacq')


# -- timing
def time_round(fn: Callable[[], object], min_s: float, clock: Callable[[], float] = time.perf_counter
               ) -> Tuple[float, int]:
    """Repeat ``fn`` until at least ``min_s`` seconds have passed; return (seconds per call, calls)."""
    gc.collect()           # not inside the timed region: garbage left by the other side is not charged to this one
    calls, start = 0, clock()
    while True:
        fn()
        calls += 1
        elapsed = clock() - start
        if elapsed >= min_s:
            return elapsed / calls, calls


def run_rounds(ours: Callable[[], object], peer: Callable[[], object], rounds: int = ROUNDS,
               min_s: float = MIN_ROUND_S, clock: Callable[[], float] = time.perf_counter,
               log: Optional[Callable[[str], None]] = None) -> List[Dict]:
    """Warm-up of each side (discarded), then ``rounds`` interleaved rounds; round ``i`` starts with ours when ``i``
    is even, with the peer when it is odd."""
    ours()                 # warm-up, discarded
    peer()
    out = []
    for i in range(rounds):
        first = 'ours' if i % 2 == 0 else 'peer'
        sides = {'ours': ours, 'peer': peer}
        times = {}
        for side in (first, 'peer' if first == 'ours' else 'ours'):
            times[side] = time_round(sides[side], min_s, clock)
        row = {'round': i, 'first': first, 'ours_s': times['ours'][0], 'ours_calls': times['ours'][1],
               'peer_s': times['peer'][0], 'peer_calls': times['peer'][1],
               'ratio': times['peer'][0] / times['ours'][0]}
        out.append(row)
        if log:
            log(f'  round {i + 1}/{rounds} ({first} first): ours {row["ours_s"]:.3f} s x{row["ours_calls"]}, '
                f'peer {row["peer_s"]:.3f} s x{row["peer_calls"]}, ratio {row["ratio"]:.3f}')
    return out


# -- statistics
def bootstrap_median_ci(values: Sequence[float], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                        level: float = 0.95) -> Tuple[float, float]:
    """Percentile bootstrap interval of the median (resampling the rounds with replacement)."""
    x = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    medians = np.median(x[rng.integers(0, len(x), size=(resamples, len(x)))], axis=1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(medians, [tail, 100 - tail])
    return float(lo), float(hi)


def summarize(ratios: Sequence[float], goal: Optional[float] = None, seed: int = BOOTSTRAP_SEED) -> Dict:
    """Median, min, max, bootstrap 95% interval, spread and the unstable flag of per-round ratios; the goal (a
    minimum ratio) is met when the median reaches it (``met_by_interval``: when the whole interval does)."""
    r = np.asarray(ratios, dtype=float)
    med = float(np.median(r))
    lo, hi = bootstrap_median_ci(r, seed=seed)
    spread = float((r.max() - r.min()) / med)
    stats = {'median': med, 'min': float(r.min()), 'max': float(r.max()), 'ci95': [lo, hi],
             'spread': spread, 'unstable': spread > UNSTABLE_SPREAD}
    goal_info = None
    if goal is not None:
        goal_info = {'text': f'>= {goal:g}x', 'ratio': float(goal), 'met': med >= goal, 'met_by_interval': lo >= goal}
    return {'ratio': stats, 'goal': goal_info}


# -- provenance
def machine_info(threads: Optional[int] = None) -> Dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    return {'cpu': cpu, 'logical_cores': os.cpu_count(), 'torch_threads': threads, 'platform': platform.platform(),
            'python': platform.python_version()}


def versions(packages: Sequence[str] = PACKAGES) -> Dict[str, Optional[str]]:
    """Installed versions (``None``: not installed), as the running process sees them: packages on PYTHONPATH (the
    pylate folder of scripts/install-bench-deps.sh) come first, as they do for imports."""
    out = {}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def write_json_atomic(path: Path, obj) -> Path:
    """Write JSON to a temporary file in the same folder, then ``os.replace`` it: a reader (or a crash) never sees
    half a file, and the previous result stays until the new one is complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
    try:
        with os.fdopen(fd, 'w') as f:
            json.dump(obj, f, indent=2, sort_keys=False)
            f.write('\n')
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _env_number(name, default, kind=float):
    value = os.environ.get(name)
    return kind(value) if value else default


def set_threads(threads: Optional[int] = None) -> int:
    """Pin torch's intra-op threads (default ``BENCH_THREADS`` or the logical cores) and return the number."""
    import torch
    n = threads or _env_number('BENCH_THREADS', None, int) or os.cpu_count() or 1
    torch.set_num_threads(n)
    return torch.get_num_threads()


# -- the whole protocol
def compare(name: str, ours: Callable[[], object], peer: Callable[[], object], *, goal: Optional[float],
            workload: Dict, ours_label: str = 'ours', peer_label: str = 'peer', rounds: Optional[int] = None,
            min_round_s: Optional[float] = None, threads: Optional[int] = None, out_dir: Optional[Path] = None,
            clock: Callable[[], float] = time.perf_counter, pin_threads: bool = True, log=print) -> Dict:
    """Run the protocol on two zero-argument callables doing the same work; write and return the result dict."""
    rounds = rounds or _env_number('BENCH_ROUNDS', ROUNDS, int)
    min_round_s = min_round_s if min_round_s is not None else _env_number('BENCH_MIN_ROUND_S', MIN_ROUND_S)
    n_threads = set_threads(threads) if pin_threads else threads
    log(f'\n[{name}] {ours_label} vs {peer_label}: torch threads {n_threads}, {rounds} rounds of >= {min_round_s:g} s '
        f'per side, warm-up first; workload {workload}')
    rows = run_rounds(ours, peer, rounds, min_round_s, clock, log)
    summary = summarize([r['ratio'] for r in rows], goal)
    result = {
        'name': name,
        'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        'ours': ours_label, 'peer': peer_label,
        'goal': summary['goal'],
        'ratio': summary['ratio'],
        'full_protocol': rounds >= ROUNDS and min_round_s >= MIN_ROUND_S,
        'protocol': {'rounds': rounds, 'min_round_s': min_round_s, 'warmup_calls': 1, 'order': 'alternating',
                     'ratio': 'peer_s / ours_s per round', 'bootstrap': {'resamples': BOOTSTRAP_RESAMPLES,
                                                                         'seed': BOOTSTRAP_SEED, 'level': 0.95},
                     'unstable_when_spread_above': UNSTABLE_SPREAD},
        'workload': workload,
        'machine': machine_info(n_threads),
        'versions': versions(),
        'rounds': rows,
    }
    out_dir = Path(out_dir or os.environ.get('BENCH_RESULTS_DIR') or RESULTS_DIR)
    path = write_json_atomic(out_dir / f'{name}.json', result)
    log(format_result(result) + f'\n  -> {path}')
    return result


def format_result(result: Dict) -> str:
    r, g = result['ratio'], result['goal']
    line = (f'[{result["name"]}] {result["ours"]} is {r["median"]:.2f}x {result["peer"]} (median of '
            f'{len(result["rounds"])} rounds; min-max {r["min"]:.2f}-{r["max"]:.2f}; 95% CI of the median '
            f'{r["ci95"][0]:.2f}-{r["ci95"][1]:.2f})')
    if r['unstable']:
        line += f' UNSTABLE (spread {r["spread"]:.0%} > {UNSTABLE_SPREAD:.0%}: rerun on a quiet machine)'
    if g:
        line += f'; goal {g["text"]}: {"met" if g["met"] else "NOT met"}'
    if not result['full_protocol']:
        line += ' [reduced development run, not a measurement]'
    return line


# -- pytest-benchmark glue
def benchmarks_disabled(config) -> bool:
    """True under ``--benchmark-disable`` (CI, ``make test``) unless ``--benchmark-enable`` overrides it."""
    return bool(config.getoption('benchmark_disable', False)) and not config.getoption('benchmark_enable', False)


def run_benchmark(benchmark, name: str, ours, peer, **kwargs) -> Dict:
    """:func:`compare` inside a pytest-benchmark test: skips when benchmarks are disabled, puts the protocol's numbers
    in ``benchmark.extra_info`` and our side's per-call round times in pytest-benchmark's statistics (so
    ``--benchmark-json`` / ``--benchmark-compare`` see them). Never asserts the goal: a speed goal is reported, not
    tested."""
    import pytest
    if benchmark.disabled:
        pytest.skip('benchmarks disabled (--benchmark-disable)')
    result = compare(name, ours, peer, **kwargs)
    r = result['ratio']
    benchmark.extra_info.update(ratio_median=r['median'], ratio_min=r['min'], ratio_max=r['max'],
                                ratio_ci95=r['ci95'], unstable=r['unstable'], full_protocol=result['full_protocol'],
                                goal=result['goal'], peer=result['peer'],
                                peer_s=[row['peer_s'] for row in result['rounds']])
    # pytest-benchmark has no public call to record timings measured elsewhere; _make_stats is what pedantic uses
    # and _mode marks the fixture as used (both stable from 3.x to 5.x). Without them the JSON in
    # benchmarks/results/ is still the full record.
    if hasattr(benchmark, '_make_stats'):
        benchmark._mode = 'protocol.run_benchmark(...)'
        stats = benchmark._make_stats(1)
        for row in result['rounds']:
            stats.update(row['ours_s'])
    return result
