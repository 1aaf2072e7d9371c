import numpy as np
import pytest

from pyterrier_knowacq._util import KnowacqError
from pyterrier_knowacq.analysis import stats
from pyterrier_knowacq.analysis.probe_data import build_probe_set
from pyterrier_knowacq.analysis.probing import probe_layer, probe_layers


def _synthetic(seed=0, E=400, N=4, H=16, signal=1.0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(E, H)).astype('f4')
    p = rng.normal(size=(E, N, H)).astype('f4')
    label = rng.integers(0, N, E)
    p[np.arange(E), label] += signal * q
    split = rng.choice(3, E, p=[.6, .15, .25])
    return q, p, label, split == 0, split == 1, split == 2


def test_interaction_probe_sees_match_concat_cannot():
    q, p, y, tr, va, te = _synthetic()
    inter = probe_layer('interaction', q, p, y, tr, va, te, seed=0)
    concat = probe_layer('concat', q, p, y, tr, va, te, seed=0)
    assert inter.accuracy > 0.9
    assert concat.accuracy < 0.45   # a linear map of [q; p1..pN] cannot compute q·p_i (chance is 0.25)
    assert inter.correct.shape == (te.sum(),)
    again = probe_layer('interaction', q, p, y, tr, va, te, seed=0)
    np.testing.assert_array_equal(inter.correct, again.correct)


def test_parallel_fits_equal_one_by_one():
    # fits on a thread pool (one torch thread each) give exactly what probe_layer gives one at a time, with seeds
    # that differ per fit (their initialisations come from torch's global generator), both probes mixed, and jobs
    # given as dicts or as functions that build them
    import torch
    jobs = []
    for i, probe in enumerate(['interaction', 'concat', 'interaction', 'concat', 'interaction', 'concat']):
        q, p, y, tr, va, te = _synthetic(seed=i, E=300, signal=0.3 * i)
        jobs.append(dict(probe=probe, q=q, p=p, label=y, train=tr, val=va, test=te, seed=10 + i, max_epochs=60))
    threads = torch.get_num_threads()
    one_by_one = [probe_layer(**job) for job in jobs]
    parallel = probe_layers([job if i % 2 else (lambda job=job: job) for i, job in enumerate(jobs)], workers=3)
    assert torch.get_num_threads() == threads
    assert len(parallel) == len(jobs)
    for a, b in zip(one_by_one, parallel):
        np.testing.assert_array_equal(a.correct, b.correct)
        assert (a.accuracy, a.val_accuracy, a.l2, a.epochs) == (b.accuracy, b.val_accuracy, b.l2, b.epochs)
    assert len({r.accuracy for r in parallel}) > 1   # the jobs differ, so a mix-up of results would show


def test_concat_probe_learns_positional_signal():
    # a feature only the positive passage has in dimension 0 is linearly visible to the concat probe
    q, p, y, tr, va, te = _synthetic(signal=0.0)
    p[np.arange(len(y)), y, 0] += 4.0
    assert probe_layer('concat', q, p, y, tr, va, te).accuracy > 0.9


def test_probe_bad_input():
    q, p, y, tr, va, te = _synthetic(E=50)
    with pytest.raises(KnowacqError, match='unknown probe'):
        probe_layer('mlp', q, p, y, tr, va, te)
    with pytest.raises(KnowacqError, match='empty'):
        probe_layer('concat', q, p, y, tr, va, np.zeros_like(te))


def test_probe_set_split_by_query_and_n():
    groups = [(f'q{i}', f'query {i}', [f'pos {i} {j}' for j in range(2)], [f'neg {i} {j}' for j in range(6)]) for i in range(12)]
    ps = build_probe_set(groups, n_max=5, seed=1)
    qids = np.asarray(ps.qids)
    parts = [set(qids[ps.mask(s)]) for s in ('train', 'val', 'test')]
    assert all(parts) and not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    for n in range(2, 6):
        qi, pi, label = ps.for_n(n)
        assert pi.shape == (len(ps), n)
        assert all(ps.passages[pi[e, label[e]]].startswith('pos') for e in range(len(ps)))
        assert all(ps.passages[x].startswith('neg') for e in range(len(ps)) for j, x in enumerate(pi[e]) if j != label[e])
    assert len(set(ps.for_n(5)[2])) > 1   # positions are shuffled
    np.testing.assert_array_equal(ps.for_n(4)[1], build_probe_set(groups, n_max=5, seed=1).for_n(4)[1])
    with pytest.raises(KnowacqError, match='n_max'):
        ps.for_n(6)


def test_too_few_negatives():
    groups = [(f'q{i}', f'query {i}', ['pos'], [f'neg {j}' for j in range(2)]) for i in range(10)]
    with pytest.raises(KnowacqError, match='too few negatives for N=5'):
        build_probe_set(groups, n_max=5)


def test_dpr_json(tmp_path):
    import json
    from pyterrier_knowacq.analysis.probe_data import probe_set_from_dpr_json
    recs = [{'question': f'q{i}', 'answers': [], 'positive_ctxs': [{'title': 't', 'text': f'pos {i}'}],
             'hard_negative_ctxs': [{'title': '', 'text': f'hn {i} {j}'} for j in range(3)], 'negative_ctxs': []} for i in range(8)]
    (tmp_path / 'd.json').write_text(json.dumps(recs))
    ps = probe_set_from_dpr_json(tmp_path / 'd.json', n_max=4, seed=0)
    assert len(ps) == 8 and 't pos 0' in ps.passages
    (tmp_path / 'bad.json').write_text('[{"x": 1}]')
    with pytest.raises(KnowacqError, match='DPR'):
        probe_set_from_dpr_json(tmp_path / 'bad.json')


def test_stats():
    lo, hi = stats.wilson_interval(80, 100)
    assert abs(lo - 0.7112) < 1e-3 and abs(hi - 0.8666) < 1e-3
    a = np.array([True] * 30 + [False] * 10)
    b = np.array([True] * 12 + [False] * 28)
    assert stats.mcnemar_exact(a, b) < 0.001
    assert stats.mcnemar_exact(a, a) == 1.0
    assert stats.paired_bootstrap(a, b, samples=2000) < 0.01
    reject, adj = stats.holm([0.01, 0.04, 0.03, np.nan])
    np.testing.assert_allclose(adj[:3], [0.03, 0.06, 0.06])
    assert list(reject[:3]) == [True, False, False] and np.isnan(adj[3])
    from statsmodels.stats.multitest import multipletests
    ps = np.random.default_rng(0).uniform(0, 0.1, 12)
    r_sm, adj_sm, _, _ = multipletests(ps, method='holm')
    r, a = stats.holm(ps)
    np.testing.assert_allclose(a, adj_sm)
    assert list(r) == list(r_sm)
    with pytest.raises(KnowacqError):
        stats.mcnemar_exact(a, b[:5])
