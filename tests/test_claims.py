"""Claims that hold up: equivalence (TOST), effect sizes with intervals, power (MDE) and one verdict vocabulary,
checked on synthetic data where the truth is known, then end to end through `knowacq report` and the leaderboard."""
import json

import numpy as np
import pandas as pd
import pytest

from pyterrier_knowacq._util import KnowacqError
from pyterrier_knowacq.analysis import stats


def _pair(n, shift=0.0, sd=0.05, seed=0):
    """Two systems on the same n queries: b = a + shift + N(0, sd) per query."""
    rng = np.random.default_rng(seed)
    a = rng.uniform(0.2, 0.8, n)
    return a + shift + rng.normal(0, sd, n), a


def _judge(x, y, kind='equivalence', margin=0.02):
    s = stats.paired_summary(x, y, margin=margin)
    return s, stats.verdict(kind, s['diff'], s['p_diff'], s['p_tost'], margin)


def test_equal_systems_are_equivalent_with_enough_queries_and_inconclusive_with_few():
    s, v = _judge(*_pair(400))
    assert v == 'equivalent within ±0.02' and s['p_tost'] < 0.001 and s['p_diff'] > 0.05
    assert -0.02 < s['ci_low'] < s['diff'] < s['ci_high'] < 0.02
    s, v = _judge(*_pair(8, seed=2))
    assert v == 'inconclusive' and s['p_tost'] > 0.05 and s['mde'] > 0.02
    assert stats.underpowered('equivalence', s['mde'], 0.02, None) is True
    # over many draws: n=400 is (nearly) always equivalent; n=8 is inconclusive, "different" ~5% of the time (alpha)
    big = [_judge(*_pair(400, seed=i))[1] for i in range(50)]
    small = [_judge(*_pair(8, seed=i))[1] for i in range(200)]
    assert big.count('equivalent within ±0.02') == 50
    assert small.count('inconclusive') >= 170 and small.count('equivalent within ±0.02') <= 6


def test_a_shifted_system_is_different():
    s, v = _judge(*_pair(50, shift=0.1))
    assert v == 'different' and s['p_diff'] < 1e-6 and s['ci_low'] > 0.05
    # the same data read as directional claims
    assert stats.verdict('greater', s['diff'], s['p_diff'], s['p_tost'], 0.02) == 'supported (higher)'
    assert stats.verdict('less', s['diff'], s['p_diff'], s['p_tost'], 0.02) == 'different, opposite direction'
    s, _ = _judge(*_pair(400))   # no difference at all: the directional claim's effect is not there
    assert stats.verdict('greater', s['diff'], s['p_diff'], s['p_tost'], 0.02) == 'equivalent within ±0.02'
    s, _ = _judge(*_pair(8, seed=2))
    assert stats.verdict('greater', s['diff'], s['p_diff'], s['p_tost'], 0.02) == 'inconclusive'
    assert stats.verdict('greater', float('nan'), None, None, 0.02) == 'not measured'


def test_tost_agrees_with_the_90_percent_interval():
    """TOST at 5% rejects exactly when the 90% t interval lies inside ±margin."""
    for seed in range(40):
        x, y = _pair(30, shift=np.random.default_rng(seed).uniform(-0.03, 0.03), seed=seed)
        s90 = stats.paired_summary(x, y, margin=0.02, alpha=0.10)   # 90% interval
        s = stats.paired_summary(x, y, margin=0.02)
        inside = -0.02 < s90['ci_low'] and s90['ci_high'] < 0.02
        assert (s['p_tost'] < 0.05) == inside


@pytest.mark.parametrize('interval', ['t', 'bootstrap'])
def test_interval_covers_the_true_difference_about_95_percent(interval):
    rng = np.random.default_rng(7)
    true, hits, sims = 0.03, 0, 200
    for i in range(sims):
        a = rng.uniform(0.2, 0.8, 60)
        b = a - true + rng.normal(0, 0.08, 60)   # a - b has mean `true`
        s = stats.paired_summary(a, b, margin=0.02, interval=interval, seed=i, samples=2000)
        hits += s['ci_low'] <= true <= s['ci_high']
    assert 0.90 <= hits / sims <= 0.99, hits / sims


def test_bootstrap_interval_is_reproducible():
    x, y = _pair(40, shift=0.02)
    one = stats.paired_summary(x, y, margin=0.02, interval='bootstrap')
    assert one == stats.paired_summary(x, y, margin=0.02, interval='bootstrap')
    assert 'bootstrap' in one['interval'] and 'seed 0' in one['interval']
    with pytest.raises(KnowacqError, match='unknown interval'):
        stats.paired_summary(x, y, margin=0.02, interval='jackknife')


def test_mde_shrinks_with_the_square_root_of_n_and_has_80_percent_power():
    sd = 0.1
    m100, m400, m1600 = (stats.mde(n, sd) for n in (100, 400, 1600))
    assert m400 / m100 == pytest.approx(0.5, rel=0.03) and m1600 / m400 == pytest.approx(0.5, rel=0.02)
    assert stats.mde(100, 2 * sd) == pytest.approx(2 * m100)
    assert np.isnan(stats.mde(1, sd)) and stats.mde(10, 0.0) == 0.0
    # a true effect of exactly the MDE is detected ~80% of the time
    from scipy.stats import ttest_1samp
    rng = np.random.default_rng(3)
    n = 40
    effect = stats.mde(n, sd)
    power = np.mean([ttest_1samp(rng.normal(effect, sd, n), 0).pvalue < 0.05 for _ in range(600)])
    assert 0.74 <= power <= 0.86, power
    # the summary's MDE uses the observed sd of the paired differences
    s = stats.paired_summary(*_pair(100, sd=0.05), margin=0.02)
    assert s['mde'] == pytest.approx(stats.mde(100, s['sd']))


def test_underpowered_flags():
    assert stats.underpowered('greater', 0.05, 0.02, paper_diff=0.03) is True
    assert stats.underpowered('greater', 0.05, 0.02, paper_diff=-0.08) is False
    assert stats.underpowered('greater', 0.05, 0.02, paper_diff=None) is None
    assert stats.underpowered('equivalence', 0.05, 0.02, paper_diff=0.001) is True
    assert stats.underpowered('equivalence', 0.01, 0.02, paper_diff=0.001) is False


def test_combine_needs_every_part():
    eq = {'diff': 0.0, 'p_diff': 0.9, 'p_tost': 0.01, 'margin': 0.05}
    open_ = {'diff': 0.03, 'p_diff': 0.5, 'p_tost': 0.3, 'margin': 0.05}
    diff = {'diff': 0.2, 'p_diff': 0.001, 'p_tost': 0.99, 'margin': 0.05}
    assert stats.combine([eq, eq], 'equivalence')['verdict'] == 'equivalent within ±0.05'
    d = stats.combine([eq, open_], 'equivalence')
    assert d['verdict'] == 'inconclusive' and d['index'] == 1 and d['p_tost'] == 0.3
    d = stats.combine([eq, open_, diff], 'equivalence')
    assert d['verdict'] == 'different' and d['index'] == 2 and d['p_diff'] == 0.001
    up = {'diff': 0.1, 'p_diff': 0.01, 'p_tost': 0.9, 'margin': 0.05}
    up2 = {'diff': 0.2, 'p_diff': 0.001, 'p_tost': 0.9, 'margin': 0.05}
    d = stats.combine([up, up2], 'greater')
    assert d['verdict'] == 'supported (higher)' and d['index'] == 0 and d['p_diff'] == 0.01
    assert stats.combine([up, open_], 'greater')['verdict'] == 'inconclusive'
    assert stats.combine([up, {**diff, 'diff': -0.2}], 'greater')['verdict'] == 'different, opposite direction'
    assert stats.combine([], 'greater')['verdict'] == 'not measured'


def test_holm_is_statsmodels_and_keeps_nan():
    from statsmodels.stats.multitest import multipletests
    p = np.random.default_rng(0).uniform(0, 0.1, 9)
    reject, adj = stats.holm(list(p) + [np.nan])
    r_sm, adj_sm, _, _ = multipletests(p, method='holm')
    np.testing.assert_allclose(adj[:9], adj_sm)
    assert list(reject[:9]) == list(r_sm) and np.isnan(adj[9]) and not reject[9]


def test_discordant_counts_from_the_mcnemar_p():
    rng = np.random.default_rng(1)
    exact = 0
    for _ in range(60):
        n = int(rng.integers(20, 250))
        a, b = rng.random(n) < rng.uniform(0.2, 0.8), rng.random(n) < rng.uniform(0.2, 0.8)
        gains, losses = int(np.sum(a & ~b)), int(np.sum(~a & b))
        g, l, ok = stats.discordant_from_mcnemar(n, int(a.sum()), int(b.sum()), stats.mcnemar_exact(a, b))
        assert g - l == gains - losses
        if ok:
            exact += 1
            assert (g, l) == (gains, losses)
        else:   # p = 1: the widest counts the accuracies allow (never narrower than the truth)
            assert g + l >= gains + losses
    assert exact >= 40
    s = stats.summary_from_counts(100, 30, 10, margin=0.05)
    assert s['diff'] == pytest.approx(0.2) and s['n'] == 100


def test_per_seed_values_average_per_unit():
    x, y = _pair(50, shift=0.05)
    per_seed = np.stack([x + 0.01, x - 0.01, x])
    s = stats.paired_summary(per_seed, y, margin=0.02)
    assert s['seeds'] == 3 and s['n'] == 50
    assert s['diff'] == pytest.approx(stats.paired_summary(x, y, margin=0.02)['diff'])


def test_claim_settings_defaults_and_yaml():
    default = stats.claim_settings(None)
    assert default.margin('nDCG@10') == 0.02 and default.margin('probe_accuracy') == 0.05 and not default.declared
    s = stats.claim_settings({'config': {'claims': {'equivalence_margin': 0.03, 'per_claim': {'cd_eq_c': 0.01},
                                                    'interval': 'bootstrap'}}})
    assert s.margin('nDCG@10') == 0.03 and s.margin('RR@10') == 0.03 and s.margin('nDCG@10', 'cd_eq_c') == 0.01
    assert s.interval == 'bootstrap' and 'experiment YAML' in s.describe()
    for bad in ({'equivalence_margin': -1}, {'margins': 1}, {'interval': 'x'}, {'per_claim': [1]}, 'x'):
        with pytest.raises(KnowacqError):
            stats.claim_settings({'claims': bad})


# --- end to end: report.json / report.md of small synthetic results folders, and the leaderboard's study page ---

def _multistage_folder(root, n=(43, 54)):
    """Per-query nDCG@10 of five multistage systems: C = BM25 + 0.1, D = BM25 + 0.04, C->D = D->C = C."""
    rng = np.random.default_rng(0)
    shifts = {'BM25': 0.0, 'BM25 >> C': 0.1, 'BM25 >> D': 0.04, 'BM25 >> C-D': 0.1, 'BM25 >> D-C': 0.1}
    for coll, k in zip(('dl19', 'dl20'), n):
        base = rng.uniform(0.2, 0.6, k)
        rows = [(name, f'q{i}', 'nDCG@10', float(np.clip(base[i] + add + rng.normal(0, 0.02), 0, 1)))
                for name, add in shifts.items() for i in range(k)]
        (root / coll).mkdir(parents=True)
        pd.DataFrame(rows, columns=['name', 'qid', 'measure', 'value']).to_csv(root / coll / 'perquery.csv', index=False)
    # a claims-only folder for the leaderboard (no aggregated.csv): the report reads <collection>/perquery.csv itself
    meta = {'format': 'pyterrier_knowacq.results/1', 'experiment': 'ms-synthetic', 'study': 'multistage',
            'description': 'synthetic multistage claims', 'config': {'name': 'ms-synthetic'}, 'command': 'test',
            'created': '2025-01-01T00:00:00+00:00', 'seed': 0, 'git_commit': None, 'versions': {}, 'wall_time_s': 0.0,
            'measures': ['nDCG@10'], 'baseline': None, 'systems': [], 'collections': [], 'timings': {}}
    (root / 'meta.json').write_text(json.dumps(meta))
    return root


def _knowacq_folder(root, n_test=300):
    """A probe table with per-example outcomes drawn here (so the truth is known) and McNemar p-values."""
    rng = np.random.default_rng(5)
    rows, trend = [], []
    correct = {}
    for model in ('backbone', 'fine-tuned'):
        for n in (2, 5):
            base = correct.get(('backbone', n))
            if model == 'backbone':
                c = rng.random(n_test) < (0.6 if n == 2 else 0.3)
            else:   # the fine-tuned model agrees with the backbone on 97% of the examples
                flip = rng.random(n_test) < 0.03
                c = np.where(flip, ~base, base)
            correct[(model, n)] = c
            p = np.nan if model == 'backbone' else stats.mcnemar_exact(c, base)
            rows.append({'group': 'bert-cls', 'data': 'dl19', 'model': model, 'pooling': 'cls', 'n': n, 'probe': 'concat',
                         'layer': 2, 'accuracy': c.mean(), 'n_test': n_test, 'p_value': p,
                         'diff_vs_backbone': 0.0 if model == 'backbone' else c.mean() - base.mean(), 'p_holm': p,
                         'significant': False})
    a, b = correct[('backbone', 2)], correct[('backbone', 5)]
    trend.append({'group': 'bert-cls', 'data': 'dl19', 'model': 'backbone', 'probe': 'concat', 'layer': 2,
                  'acc_n2': a.mean(), 'acc_n5': b.mean(), 'n_low': 2, 'n_high': 5, 'p_value': stats.mcnemar_exact(a, b)})
    (root / 'tables').mkdir(parents=True)
    pd.DataFrame(rows).to_csv(root / 'tables' / 'probe_accuracy.csv', index=False)
    pd.DataFrame(trend).to_csv(root / 'tables' / 'probe_n_trend.csv', index=False)
    (root / 'meta.json').write_text(json.dumps({'experiment': 'ka-synthetic', 'study': 'knowacq', 'systems': [],
                                                'collections': [], 'config': {'analysis': {'test': 'mcnemar'}}}))
    return root, correct


NEW_FIELDS = {'diff', 'ci_low', 'ci_high', 'mde', 'margin', 'underpowered', 'test'}


def test_report_json_and_md_carry_intervals_margins_and_power(tmp_path):
    from pyterrier_knowacq.reports.dispatch import write_report
    ms = _multistage_folder(tmp_path / 'ms')
    ka, correct = _knowacq_folder(tmp_path / 'ka')
    text = write_report([ms, ka])
    for folder in (ms, ka):
        claims = json.loads((folder / 'report.json').read_text())['claims']
        md = (folder / 'report.md').read_text()
        assert claims and all(NEW_FIELDS <= set(c) for c in claims)
        measured = [c for c in claims if c['verdict'] != 'not measured']
        assert measured
        for c in measured:
            assert c['ci_low'] <= c['diff'] <= c['ci_high'] and c['mde'] >= 0 and c['margin'] > 0
            assert f"{c['diff']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]" in md
            assert c['verdict'] in md and c['verdict'].split(' (')[0].split(' within')[0] in (
                'equivalent', 'different', 'different, opposite direction', 'supported', 'inconclusive')
        assert 'MDE (80%)' in md and 'TOST' in md and 'margins' in md
    by = {c['id']: c for c in json.loads((ms / 'report.json').read_text())['claims']}
    assert by['c_beats_bm25']['verdict'] == 'supported (higher)' and by['c_beats_bm25']['underpowered'] is False
    assert by['cd_eq_c']['verdict'] == 'equivalent within ±0.02' and by['cd_eq_c']['margin'] == 0.02
    assert by['c_gt_d']['paper_diff'] == pytest.approx(0.0582, abs=0.0005)   # DL19/DL20 weighted 43:54
    ka_by = {c['id']: c for c in json.loads((ka / 'report.json').read_text())['claims']}
    cls = ka_by['cls_eq']
    assert cls['kind'] == 'equivalence' and cls['margin'] == 0.05 and cls['n'] == 300
    # the interval comes from the per-example outcomes recovered from the McNemar p: it matches the truth
    part = cls['parts'][[p['label'] for p in cls['parts']].index(cls['deciding'])]
    n = int(part['label'].split('=')[1])
    d = correct[('fine-tuned', n)].astype(float) - correct[('backbone', n)].astype(float)
    truth = stats.paired_summary(d, margin=0.05)
    assert part['ci_low'] == pytest.approx(truth['ci_low']) and part['ci_high'] == pytest.approx(truth['ci_high'])
    assert cls['verdict'] == 'equivalent within ±0.05'
    assert ka_by['n_falls']['verdict'] == 'supported (lower)' and ka_by['n_falls']['diff'] < -0.2
    assert 'ms-synthetic' in text and 'ka-synthetic' in text


def test_study_page_shows_verdict_interval_and_mde(tmp_path):
    from pyterrier_knowacq.leaderboard.render import claim_ci, verdict_class
    from pyterrier_knowacq.reports.dispatch import write_report
    ms = _multistage_folder(tmp_path / 'ms', n=(6, 6))   # few queries: every claim underpowered or inconclusive
    write_report([ms])
    claims = json.loads((ms / 'report.json').read_text())['claims']
    assert any(c['underpowered'] for c in claims)
    env_claim = claims[0]
    assert claim_ci(env_claim) == f"{env_claim['diff']:+.3f} [{env_claim['ci_low']:+.3f}, {env_claim['ci_high']:+.3f}]"
    assert claim_ci({'diff': float('nan')}) == '–' and claim_ci({}) == '–'
    assert verdict_class('equivalent within ±0.02', 'equivalence') == 'v-good'
    assert verdict_class('equivalent within ±0.02', 'greater') == 'v-bad'
    assert verdict_class('different', 'equivalence') == 'v-bad'
    assert verdict_class('different, opposite direction', 'less') == 'v-bad'
    assert verdict_class('supported (higher)', 'greater') == 'v-good'
    assert verdict_class('inconclusive', 'greater') == 'v-open'
    from pyterrier_knowacq.leaderboard.build import build_site
    site = build_site([ms], tmp_path / 'site').parent
    page = next((site / 'studies').glob('multistage-*.html')).read_text()
    assert 'difference [95% CI]' in page and 'MDE (80%)' in page and 'class="badge underpowered"' in page
    assert 'verdict v-good' in page or 'verdict v-open' in page
    assert claim_ci(env_claim) in page and 'margin ±0.02' in page
    import csv
    rows = list(csv.DictReader(open(site / 'data' / 'claims.csv')))
    assert rows and {'diff', 'ci_low', 'ci_high', 'mde', 'margin', 'underpowered', 'test'} <= set(rows[0])


def test_constant_differences_fall_back_to_the_sign_test():
    """No variance: two units prove nothing, twenty do (exact sign test instead of a degenerate t-test)."""
    two = stats.paired_summary(np.array([0.3, 0.5]), np.array([0.2, 0.4]), margin=0.02)
    assert two['p_diff'] == pytest.approx(0.5) and two['ci_low'] == two['ci_high'] == pytest.approx(0.1)
    assert stats.verdict('greater', two['diff'], two['p_diff'], two['p_tost'], 0.02) == 'inconclusive'
    x = np.linspace(0.2, 0.6, 20)
    many = stats.paired_summary(x + 0.1, x, margin=0.02)
    assert many['p_diff'] < 1e-5 and stats.verdict('greater', many['diff'], many['p_diff'], many['p_tost'], 0.02) \
        == 'supported (higher)'
    same = stats.paired_summary(x, x, margin=0.02)
    assert same['p_diff'] == 1.0 and same['p_tost'] < 1e-5
