"""The benchmark protocol's bookkeeping and statistics (benchmarks/protocol.py), with fake callables and a fake
clock: no model, no real timing, milliseconds."""
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

def _bench_module(name: str):
    """A module of benchmarks/ (not a package: the benchmarks put their folder on sys.path themselves)."""
    spec = importlib.util.spec_from_file_location(f'bench_{name}', Path(__file__).resolve().parents[1] / 'benchmarks' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


protocol = _bench_module('protocol')


class FakeClock:
    """Time advances only when a fake callable 'works'."""

    def __init__(self):
        self.t = 0.0
        self.calls = []

    def __call__(self):
        return self.t

    def side(self, name, costs):
        """A callable whose k-th call costs costs[k] seconds (the last cost repeats)."""
        costs = list(costs)

        def fn():
            k = sum(1 for c in self.calls if c == name)
            self.calls.append(name)
            self.t += costs[min(k, len(costs) - 1)]
        return fn


def quiet(*_):
    pass


def test_rounds_interleave_warm_up_first_and_calibrate_to_min_time():
    clock = FakeClock()
    ours, peer = clock.side('ours', [9.0, 1.0]), clock.side('peer', [9.0, 2.0])   # slow first call: the warm-up
    rows = protocol.run_rounds(ours, peer, rounds=4, min_s=3.0, clock=clock)
    assert clock.calls[:2] == ['ours', 'peer']                       # warm-up, discarded
    assert [r['first'] for r in rows] == ['ours', 'peer', 'ours', 'peer']
    # round 2 starts with the peer: after the warm-up and round 1 (3 ours + 2 peer calls), the peer runs next
    assert clock.calls[2:7] == ['ours'] * 3 + ['peer'] * 2 and clock.calls[7:9] == ['peer'] * 2
    for r in rows:                                                   # repeated until >= 3 s, per-call time kept
        assert (r['ours_s'], r['ours_calls'], r['peer_s'], r['peer_calls']) == (1.0, 3, 2.0, 2)
        assert r['ratio'] == 2.0                                     # peer / ours: > 1 means ours is faster


def test_summary_median_interval_and_goal():
    ratios = [1.50, 1.52, 1.55, 1.49, 1.58, 1.51, 1.53]
    s = protocol.summarize(ratios, goal=1.5)
    r = s['ratio']
    assert r['median'] == pytest.approx(1.52) and (r['min'], r['max']) == (1.49, 1.58)
    lo, hi = r['ci95']
    assert min(ratios) <= lo <= r['median'] <= hi <= max(ratios)
    assert r['spread'] == pytest.approx(0.09 / 1.52) and not r['unstable']
    assert s['goal'] == {'text': '>= 1.5x', 'ratio': 1.5, 'met': True, 'met_by_interval': lo >= 1.5}
    assert protocol.summarize(ratios, goal=1.6)['goal']['met'] is False
    assert protocol.summarize(ratios)['goal'] is None
    # the interval is reproducible (fixed seed) and exact for identical rounds
    assert protocol.bootstrap_median_ci(ratios) == protocol.bootstrap_median_ci(ratios)
    assert protocol.bootstrap_median_ci([2.0] * 7) == (2.0, 2.0)


def test_bootstrap_interval_matches_a_direct_resampling():
    ratios = [1.1, 1.3, 1.2, 1.6, 1.25, 1.15, 1.4]
    rng = np.random.default_rng(0)
    medians = np.median(np.asarray(ratios)[rng.integers(0, 7, size=(10_000, 7))], axis=1)
    assert protocol.bootstrap_median_ci(ratios) == tuple(np.percentile(medians, [2.5, 97.5]))


def test_unstable_when_the_spread_exceeds_15_percent():
    assert not protocol.summarize([1.0, 1.0, 1.15, 1.0, 1.0, 1.0, 1.0])['ratio']['unstable']    # 0.15: not above
    r = protocol.summarize([1.0, 1.0, 1.2, 1.0, 1.0, 1.0, 1.0])['ratio']
    assert r['unstable'] and r['spread'] == pytest.approx(0.2)


def test_compare_writes_the_full_json_record(tmp_path):
    clock = FakeClock()
    res = protocol.compare('fake', clock.side('ours', [0.5]), clock.side('peer', [1.0]), goal=1.5,
                           workload={'pairs': 10}, ours_label='A', peer_label='B', rounds=7, min_round_s=3.0,
                           threads=1, pin_threads=False, out_dir=tmp_path, clock=clock, log=quiet)
    on_disk = json.loads((tmp_path / 'fake.json').read_text())
    assert on_disk == json.loads(json.dumps(res))
    assert set(on_disk) >= {'name', 'date', 'ours', 'peer', 'goal', 'ratio', 'full_protocol', 'protocol', 'workload',
                            'machine', 'versions', 'rounds'}
    assert on_disk['date'].endswith('+00:00')
    assert set(on_disk['machine']) >= {'cpu', 'logical_cores', 'torch_threads'}
    assert on_disk['machine']['torch_threads'] == 1
    assert set(on_disk['versions']) >= {'torch', 'transformers', 'sentence-transformers', 'pyterrier-dr', 'pylate',
                                        'pyterrier-knowacq'}
    assert on_disk['workload'] == {'pairs': 10} and on_disk['full_protocol'] is True
    assert len(on_disk['rounds']) == 7
    assert set(on_disk['rounds'][0]) == {'round', 'first', 'ours_s', 'ours_calls', 'peer_s', 'peer_calls', 'ratio'}
    assert on_disk['ratio']['median'] == 2.0 and on_disk['ratio']['ci95'] == [2.0, 2.0]
    assert on_disk['goal']['met'] is True
    assert not [p for p in os.listdir(tmp_path) if p != 'fake.json']          # no temporary file left behind


def test_a_reduced_run_is_marked_as_not_the_protocol(tmp_path):
    clock = FakeClock()
    res = protocol.compare('short', clock.side('ours', [1.0]), clock.side('peer', [1.0]), goal=None, workload={},
                           rounds=2, min_round_s=0.5, threads=1, pin_threads=False, out_dir=tmp_path, clock=clock,
                           log=quiet)
    assert res['full_protocol'] is False and 'not a measurement' in protocol.format_result(res)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / 'r.json'
    protocol.write_json_atomic(path, {'v': 1})

    def broken_replace(src, dst):
        raise OSError('disk full')
    monkeypatch.setattr(protocol.os, 'replace', broken_replace)
    with pytest.raises(OSError):
        protocol.write_json_atomic(path, {'v': 2})
    assert json.loads(path.read_text()) == {'v': 1}
    assert os.listdir(tmp_path) == ['r.json']                                # the temporary file was removed
    monkeypatch.undo()
    with pytest.raises(TypeError):                                            # not serialisable: same guarantee
        protocol.write_json_atomic(path, {'v': object()})
    assert json.loads(path.read_text()) == {'v': 1} and os.listdir(tmp_path) == ['r.json']


class FakeBenchmark:
    def __init__(self, disabled):
        self.disabled = disabled
        self.extra_info = {}


def test_run_benchmark_does_nothing_when_benchmarks_are_disabled():
    def boom():
        raise AssertionError('a disabled benchmark must not run its callables')
    with pytest.raises(pytest.skip.Exception):
        protocol.run_benchmark(FakeBenchmark(disabled=True), 'x', boom, boom, goal=1.0, workload={})


def test_run_benchmark_reports_without_asserting_the_goal(tmp_path, monkeypatch):
    monkeypatch.setenv('BENCH_RESULTS_DIR', str(tmp_path))
    clock = FakeClock()
    bench = FakeBenchmark(disabled=False)
    res = protocol.run_benchmark(bench, 'slow', clock.side('ours', [2.0]), clock.side('peer', [1.0]), goal=1.5,
                                 workload={}, rounds=7, min_round_s=3.0, threads=1, pin_threads=False, clock=clock,
                                 log=quiet)
    assert res['goal']['met'] is False                                       # reported, not failed
    assert bench.extra_info['ratio_median'] == 0.5 and bench.extra_info['goal']['met'] is False
    assert (tmp_path / 'slow.json').exists()


def test_summary_of_several_runs_gives_each_run_and_the_median_of_their_medians(tmp_path, capsys):
    summary = _bench_module('summary')
    for run, ours in enumerate((0.5, 0.8, 0.4)):   # peer 1.0 s: ratios 2.0, 1.25, 2.5
        clock = FakeClock()
        protocol.compare('cross_encoder', clock.side('ours', [ours]), clock.side('peer', [1.0]), goal=1.5,
                         workload={'pairs': 10, 'queries': 1}, ours_label='A', peer_label='B', rounds=7,
                         min_round_s=3.0, threads=1, pin_threads=False, out_dir=tmp_path / str(run), clock=clock,
                         log=quiet)
    (tmp_path / '0' / 'int8_effectiveness.json').write_text('{"rows": []}')   # not a protocol result: no row
    summary.main(*(str(tmp_path / str(r)) for r in range(3)))
    out = capsys.readouterr().out
    assert '| run 1 | run 2 | run 3 | median of the runs |' in out
    assert '| A vs B | 2.00x (2.00–2.00) | 1.25x (1.25–1.25) | 2.50x (2.50–2.50) | **2.00x** | >= 1.5x | 2 of 3 runs |' in out
