"""Seeds (`seeds: [1, 2, 3]`): each trained model is trained and evaluated once per seed, seed-independent systems run
once; per-query values carry a `seed` column, runs are written per seed, aggregated.csv holds seed-means, meta.json the
per-seed aggregates, and the multistage report tests over queries (seeds averaged) and shows a seed-variance table.

The end-to-end part runs experiments/multistage-seeds-ci.yaml (tiny BERT, 2 steps, 2 seeds, 5 topics per fold)."""
import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyterrier as pt
import pytest
import yaml

from pyterrier_knowacq import KnowacqError
from pyterrier_knowacq.experiments.runner import _seed_tables, _system_key, _Work, run_experiment
from pyterrier_knowacq.experiments.config import _measures, load_config

EXPERIMENTS = Path(__file__).resolve().parents[1] / 'experiments'
TOPICS = 5


@pytest.fixture(scope='module')
def seeded(tmp_path_factory):
    """The CI copy of the seeds grid, run once for the module."""
    root = tmp_path_factory.mktemp('seeds')
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('KNOWACQ_CACHE', str(root / 'cache'))
        out = run_experiment(EXPERIMENTS / 'multistage-seeds-ci.yaml', output=root / 'multistage-seeds-ci',
                             limit_topics=TOPICS)
    return out


def _perquery(out, coll):
    return pd.read_csv(out / coll / 'perquery.csv', dtype={'qid': str})


def test_seed_column_and_one_run_per_seed(seeded):
    meta = json.loads((seeded / 'meta.json').read_text())
    assert meta['seeds'] == [1, 2] and meta['seed'] == 42
    for coll in ('dl19', 'dl20'):
        perq = _perquery(seeded, coll)
        assert list(perq.columns) == ['name', 'qid', 'measure', 'value', 'seed']
        assert perq.loc[perq['name'] == 'BM25', 'seed'].isna().all()   # seed-independent: once, no seed
        for name in ('BM25 >> C', 'BM25 >> D'):
            sub = perq[perq['name'] == name]
            assert sorted(sub['seed'].unique()) == [1, 2]
            assert (sub.groupby('seed')['qid'].nunique() == TOPICS).all()
            assert len(sub) == 2 * TOPICS * 2   # seeds x queries x measures
        runs = sorted(p.name for p in (seeded / coll / 'runs').iterdir())
        assert runs == ['bm25-c.seed1.res.gz', 'bm25-c.seed2.res.gz', 'bm25-d.seed1.res.gz', 'bm25-d.seed2.res.gz',
                        'bm25.res.gz']
        with gzip.open(seeded / coll / 'runs' / 'bm25-c.seed2.res.gz', 'rt') as f:
            assert f.readline().split()[5] == 'bm25-c.seed2'   # the run tag names the seed too
    # each seed trained its own models, per fold; meta['models'] is the first seed's
    models = meta['seed_models']['dl19']
    assert models['1']['C'] != models['2']['C'] and models['1']['D'] != models['2']['D']
    assert meta['models']['dl19'] == models['1'] and meta['seed_models']['dl20']['1']['C'] != models['1']['C']
    assert set(meta['training']['dl20']) == {'1', '2'} and set(meta['training']['dl20']['1']) == {'C', 'D'}
    assert set(meta['seed_timings']['dl19']['BM25 >> C']) == {'1', '2'}
    assert meta['timings']['dl19']['BM25 >> C'] == pytest.approx(np.mean(list(meta['seed_timings']['dl19']['BM25 >> C'].values())), abs=1e-3)
    # the seeds really differ: the same system's two runs score differently
    c1, c2 = (pt.io.read_results(str(seeded / 'dl19' / 'runs' / f'bm25-c.seed{k}.res.gz')) for k in (1, 2))
    assert not np.allclose(c1.sort_values(['qid', 'docno'])['score'].to_numpy(),
                           c2.sort_values(['qid', 'docno'])['score'].to_numpy())


def test_aggregated_holds_seed_means_and_meta_the_per_seed_values(seeded):
    meta = json.loads((seeded / 'meta.json').read_text())
    for coll in ('dl19', 'dl20'):
        agg = pd.read_csv(seeded / coll / 'aggregated.csv').set_index('name')
        perq = _perquery(seeded, coll)
        assert list(agg.index) == ['BM25', 'BM25 >> C', 'BM25 >> D']
        per_seed = meta['seed_results'][coll]
        assert set(per_seed) == {'BM25 >> C', 'BM25 >> D'} and set(per_seed['BM25 >> C']) == {'1', '2'}
        for name in per_seed:
            for m in ('nDCG@10', 'RR(rel=2)@10'):
                values = [per_seed[name][s][m] for s in ('1', '2')]
                sub = perq[(perq['name'] == name) & (perq['measure'] == m)]
                assert values == pytest.approx([sub[sub['seed'] == k]['value'].mean() for k in (1, 2)])
                assert agg.loc[name, m] == pytest.approx(np.mean(values))   # the seed-mean
        bm25 = perq[(perq['name'] == 'BM25') & (perq['measure'] == 'nDCG@10')]['value'].mean()
        assert agg.loc['BM25', 'nDCG@10'] == pytest.approx(bm25)
        # the paired test against the baseline (BM25 >> C) runs over queries on per-query seed-means
        wide = perq[perq['measure'] == 'nDCG@10'].pivot_table(index='qid', columns='name', values='value', aggfunc='mean')
        from scipy.stats import ttest_rel
        p = ttest_rel(wide['BM25 >> D'], wide['BM25 >> C']).pvalue
        assert agg.loc['BM25 >> D', 'nDCG@10 p-value'] == pytest.approx(p, nan_ok=True)
        assert agg.loc['BM25 >> D', 'nDCG@10 +'] == int((wide['BM25 >> D'] > wide['BM25 >> C']).sum())


def test_seed_tables_reproduce_pt_experiment_for_one_seed(seeded):
    """With no seeds, the seed-mean table is pt.Experiment's own (columns, order, tests, Holm), so both modes agree."""
    from pyterrier_knowacq.datasets.core import get_dataset
    ds = get_dataset('msmarco-passage')
    topics = ds.get_topics('dl19')
    qrels = ds.get_qrels('dl19')
    topics = topics[topics['qid'].isin(set(qrels['qid']))].head(TOPICS)
    names = ['BM25', 'BM25 >> C', 'BM25 >> D']
    files = ['bm25', 'bm25-c.seed1', 'bm25-d.seed2']
    results = [pt.io.read_results(str(seeded / 'dl19' / 'runs' / f'{f}.res.gz')).drop(columns=['name'], errors='ignore')
               for f in files]
    measures = _measures(load_config(EXPERIMENTS / 'multistage-seeds-ci.yaml'))
    common = dict(names=names, baseline=1, test='t', correction='holm', correction_alpha=0.05)
    want = pt.Experiment(results, topics, qrels, measures, verbose=False, **common)
    got, perq, per_seed = _seed_tables([(n, None, r) for n, r in zip(names, results)], topics, qrels, measures, **common)
    assert list(got.columns) == list(want.columns) and per_seed == {} and perq['seed'].isna().all()
    pd.testing.assert_frame_equal(got, want, check_dtype=False)


def test_report_tests_over_queries_and_shows_the_seed_variance(seeded):
    from pyterrier_knowacq.reports.multistage import seed_table, write_report
    rows = write_report(seeded)
    meta = json.loads((seeded / 'meta.json').read_text())
    by = {r['id']: r for r in rows}
    c_gt_d = by['c_gt_d']
    assert c_gt_d['seeds'] == 2 and c_gt_d['n'] == 2 * TOPICS   # queries pooled over both folds, seeds averaged
    assert 'averaged over 2 seeds per query' in c_gt_d['detail'] and 'query×seed bootstrap' in c_gt_d['detail']
    lo, hi = c_gt_d['seed_ci']
    assert lo <= hi and ' ± ' in c_gt_d['ours']
    table = seed_table(seeded)
    assert [(r['system'], r['collection']) for r in table] == [
        ('BM25 >> C', 'all'), ('BM25 >> C', 'dl19'), ('BM25 >> C', 'dl20'),
        ('BM25 >> D', 'all'), ('BM25 >> D', 'dl19'), ('BM25 >> D', 'dl20')]
    for r in table:
        if r['collection'] != 'all':   # a collection's row: the per-seed aggregates of meta.json
            want = {int(s): v['nDCG@10'] for s, v in meta['seed_results'][r['collection']][r['system']].items()}
            assert r['values'] == pytest.approx(want) and r['queries'] == TOPICS
            assert r['sd'] == pytest.approx(np.std(list(want.values()), ddof=1))
    md = (seeded / 'report.md').read_text()
    assert '## Seed variance (nDCG@10)' in md and '| system | queries | seed 1 | seed 2 | mean ± sd |' in md
    first = table[0]
    assert (f'| BM25 >> C | all ({2 * TOPICS}) | {first["values"][1]:.4f} | {first["values"][2]:.4f} | '
            f'{first["mean"]:.4f} ± {first["sd"]:.4f} |') in md
    assert json.loads((seeded / 'report.json').read_text())['seed_variance'][0]['system'] == 'BM25 >> C'


def test_cli_report_and_leaderboard_show_the_seed_variance(seeded, tmp_path):
    """`knowacq report` (the dispatcher) keeps the seed rows in report.json, and the study page renders them as a
    table with the same numbers (include_smoke: the CI grid is a smoke experiment)."""
    import shutil
    from pyterrier_knowacq.leaderboard.build import build_site
    from pyterrier_knowacq.reports.dispatch import write_report
    from pyterrier_knowacq.reports.multistage import seed_table
    folder = tmp_path / 'multistage-seeds-ci'
    shutil.copytree(seeded, folder)
    write_report([folder])
    stored = json.loads((folder / 'report.json').read_text())['seed_variance']
    table = seed_table(folder)
    assert [(r['system'], r['collection'], r['mean']) for r in stored] == \
        [(r['system'], r['collection'], pytest.approx(r['mean'])) for r in table]
    site = build_site([folder], tmp_path / 'site', include_smoke=True).parent
    page = next((site / 'studies').glob('multistage-*.html')).read_text()
    section = page[page.index('<h3>Seed variance'):]
    section = section[:section.index('</table>')]
    first = table[0]
    assert 'BM25 &gt;&gt; C' in section and '>seed 1<' in section and '>seed 2<' in section
    assert f'{first["mean"]:.4f} ± {first["sd"]:.4f}' in section and f'>{first["values"][2]:.4f}<' in section


def test_seed_table_from_an_inline_folder(tmp_path):
    """mean ± sd over seeds of each seed's mean over queries; seed-independent systems are left out."""
    from pyterrier_knowacq.reports.multistage import seed_markdown, seed_table
    (tmp_path / 'meta.json').write_text(json.dumps({'experiment': 'multistage'}))
    (tmp_path / 'dl19').mkdir()
    rows = [('BM25', 'q1', 'nDCG@10', 0.5, None), ('BM25', 'q2', 'nDCG@10', 0.3, None)]
    for seed, (a, b) in {1: (0.6, 0.4), 2: (0.7, 0.5), 3: (0.8, 0.6)}.items():
        rows += [('BM25 >> D', 'q1', 'nDCG@10', a - 0.1, seed), ('BM25 >> D', 'q2', 'nDCG@10', b - 0.1, seed),
                 ('BM25 >> C', 'q1', 'nDCG@10', a, seed), ('BM25 >> C', 'q2', 'nDCG@10', b, seed)]
    frame = pd.DataFrame(rows, columns=['name', 'qid', 'measure', 'value', 'seed'])
    frame.assign(seed=frame['seed'].astype('Int64')).to_csv(tmp_path / 'dl19' / 'perquery.csv', index=False)
    table = seed_table(tmp_path)
    assert [r['system'] for r in table] == ['BM25 >> C', 'BM25 >> D']   # C first, then D; one collection: no extra rows
    c = table[0]
    assert c['values'] == pytest.approx({1: 0.5, 2: 0.6, 3: 0.7}) and c['mean'] == pytest.approx(0.6)
    assert c['sd'] == pytest.approx(0.1) and c['queries'] == 2
    assert '| BM25 >> C | all (2) | 0.5000 | 0.6000 | 0.7000 | 0.6000 ± 0.1000 |' in seed_markdown(tmp_path)
    frame[frame['name'] == 'BM25'].drop(columns='seed').to_csv(tmp_path / 'dl19' / 'perquery.csv', index=False)
    assert seed_table(tmp_path) == [] and seed_markdown(tmp_path) == ''   # no seeds: no table


def test_work_folder_keys_and_entries_are_per_seed(tmp_path, msmarco):
    """A finished seed is kept beside the others (its own entry, its key holds the seed), so a resume reuses each."""
    topics = pd.DataFrame({'qid': ['1'], 'query': ['q']})
    key = {s: _system_key('run(name=bm25) >> ce(model=C)', 'dl19', msmarco, 'dl19', 'f', topics, {'0:ce.model=C': 'x'},
                          10, s, False) for s in (1, 2)}
    assert key[1] != key[2]
    work = _Work(tmp_path / 'res')
    res = pd.DataFrame({'qid': ['1'], 'docno': ['d'], 'score': [1.0], 'rank': [0]})
    for s in (1, 2):
        work.put('dl19', key[s], 'BM25 >> C', f'bm25-c.seed{s}', res, 1.0)
    assert work.get('dl19', key[1]) and work.get('dl19', key[2])   # seed 2 did not replace seed 1


@pytest.mark.parametrize('value,match', [
    ('[]', 'seeds is'), ('[1, 1, 2]', r'seeds repeats \[1\]'), ('[1, two]', 'seeds is'), ('3', 'seeds is'),
    ('[true, 2]', 'seeds is'), ('', 'seeds is None'),
])
def test_seeds_must_be_distinct_integers(tmp_path, value, match):
    path = tmp_path / 'x.yaml'
    path.write_text(f'name: x\ndataset: msmarco-passage\nsystems: {{a: run(name=bm25)}}\nseeds: {value}\n')
    with pytest.raises(KnowacqError, match=match) as info:
        load_config(path)
    assert str(info.value).startswith(f'{path}:4:')   # names the seeds: line
    path.write_text('name: x\ndataset: msmarco-passage\nsystems: {a: run(name=bm25)}\nseeds: [3, 1, 2]\n')
    assert load_config(path)['seeds'] == [3, 1, 2]


def test_multistage_seeds_yaml_passes_its_dry_run_checks(cache):
    from pyterrier_knowacq.experiments.preflight import check_experiment
    path = EXPERIMENTS / 'multistage-seeds.yaml'
    raw = yaml.safe_load(path.read_text())
    assert raw['seeds'] == [1, 2, 3] and set(raw['models']) == {'C', 'D'}
    assert set(raw['systems']) == {'BM25', 'BM25 >> C', 'BM25 >> D'}
    full = yaml.safe_load((EXPERIMENTS / 'multistage.yaml').read_text())
    assert all(raw['models'][m] == full['models'][m] for m in 'CD')   # the recipes of the study grid
    assert raw['folds'] == full['folds']
    report = check_experiment(path, dry_run=True, echo=False)
    assert not report.errors
    for warning in report.warnings:
        assert 'cannot be checked offline' in warning or 'only the real run reads it' in warning, warning
    entries = {p.relative_to(cache).as_posix() for p in cache.rglob('*')}
    assert entries <= {'models', 'models/tiny-bert', 'models/tiny-llama'}   # checked, nothing trained
