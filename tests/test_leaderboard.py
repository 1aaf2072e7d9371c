"""The static leaderboard, built from real result folders (real pt.Experiment runs on the embedded TREC DL 2019 data)."""
from __future__ import annotations

import csv
import gzip
import json
import re
import shutil
import subprocess
import sys
import warnings
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

import pyterrier_knowacq
from pyterrier_knowacq import KnowacqError
from pyterrier_knowacq.leaderboard import LeaderboardWarning, build_site
from pyterrier_knowacq.leaderboard_data import FORMAT, tie_groups

DATA = Path(pyterrier_knowacq.__file__).parent / 'data' / 'msmarco-passage'
MEASURES = ['nDCG@10', 'RR(rel=2)@10', 'R(rel=2)@100']
XSS_NAMES = ['<script>alert(1)</script>', '"><img src=x onerror=alert(1)>', "<img src=x onerror='window.__xss=1'>"]


def _slug(text):
    return re.sub(r'[^A-Za-z0-9._-]+', '-', str(text)).strip('-').lower() or 'system'


def _open(path: Path):
    return gzip.open(path, 'rt') if path.suffix == '.gz' else open(path)


def write_results_folder(folder: Path, systems: dict, experiment: str = 'dl19-first-stage', study: str = 'spine',
                         split: str = 'dl19', baseline: str | None = None, tags: dict | None = None,
                         analysis: bool = False) -> Path:
    """A results folder exactly in the DESIGN.md format, from real runs: ``systems`` maps name -> shipped run name.

    aggregated.csv / perquery.csv are the frames real ``pt.Experiment`` calls return on the embedded qrels.
    """
    import pyterrier as pt
    from ir_measures import parse_measure
    folder.mkdir(parents=True)
    qrels = pt.io.read_qrels(str(DATA / 'qrels' / f'{split}.qrels.gz'))
    topics_file = DATA / 'queries' / f'{split}.tsv'
    topics_file = topics_file if topics_file.exists() else topics_file.with_suffix('.tsv.gz')
    with _open(topics_file) as f:
        topics = pd.read_csv(f, sep='\t', names=['qid', 'query'], dtype=str)
    topics = topics[topics.qid.isin(set(qrels.qid))]
    names = list(systems)
    runs = [pt.io.read_results(str(DATA / 'runs' / 'first-stage' / f'{run}.{split}.top100.trec.gz'))
            for run in systems.values()]
    measures = [parse_measure(m) for m in MEASURES]
    baseline = baseline or names[0]
    agg = pt.Experiment(runs, topics, qrels, measures, names=names, baseline=names.index(baseline),
                        correction='holm', verbose=False)
    perq = pt.Experiment(runs, topics, qrels, measures, names=names, perquery=True, verbose=False)
    coll = folder / split
    (coll / 'runs').mkdir(parents=True)
    agg.to_csv(coll / 'aggregated.csv', index=False)
    perq.to_csv(coll / 'perquery.csv', index=False)
    for name, run in zip(names, runs):
        pt.io.write_results(run, str(coll / 'runs' / f'{_slug(name)}.res.gz'))
    config = {'name': experiment, 'study': study, 'dataset': 'msmarco-passage', 'topics': [split],
              'measures': MEASURES, 'baseline': baseline, 'systems': {n: f'{r}_run' for n, r in systems.items()}}
    import yaml
    (folder / 'config.yaml').write_text(yaml.safe_dump(config, sort_keys=False))
    meta = {'format': FORMAT, 'experiment': experiment, 'study': study, 'description': f'shipped {split} runs',
            'config': config, 'command': f'knowacq run experiments/{experiment}.yaml', 'versions':
            {'python': sys.version.split()[0], 'pyterrier': pt.__version__, 'pyterrier_knowacq': '0.1.0'},
            'git_commit': None, 'seed': 42, 'created': '2026-11-25T12:00:00+00:00', 'wall_time_s': 3.5,
            'measures': MEASURES, 'baseline': baseline, 'test': 't', 'correction': 'holm',
            'collections': [{'name': split, 'dataset': 'msmarco-passage', 'topics': split,
                             'num_queries': int(len(topics)), 'provenance': 'MS MARCO passage, TREC DL 2019 judgments.'}],
            'systems': [{'name': n, 'slug': _slug(n), 'pipeline': f'{r}_run', 'tags': {
                'study': study, 'backbone': (tags or {}).get(n, r), 'strategy': 'zero-shot', 'first_stage': r}}
                for n, r in systems.items()],
            'timings': {split: {n: 0.25 for n in names}}}
    if analysis:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        (folder / 'plots').mkdir()
        (folder / 'tables').mkdir()
        nd = perq[perq.measure == 'nDCG@10'].pivot(index='qid', columns='name', values='value')
        fig, ax = plt.subplots(figsize=(4, 3))
        for n in names:
            ax.plot(sorted(nd[n]), label=n)
        ax.legend()
        fig.savefig(folder / 'plots' / 'ndcg-per-query.png', dpi=60)
        fig.savefig(folder / 'plots' / 'ndcg-per-query.svg')
        plt.close(fig)
        nd.describe().T.to_csv(folder / 'tables' / 'ndcg-summary.csv')
        other = names[1]
        row = agg[agg.name == other].iloc[0]
        claims = [{'study': study, 'claim': f'{other} beats {baseline} on nDCG@10', 'paper': 0.717,
                   'ours': float(row['nDCG@10']), 'p_value': float(row['nDCG@10 p-value corrected']),
                   'verdict': 'reproduced' if row['nDCG@10 reject'] else 'not reproduced',
                   'detail': '<b>not bold</b> paired t-test, Holm'},
                  {'study': study, 'claim': 'an untestable claim', 'paper': None, 'ours': float('nan'),
                   'p_value': float('nan'), 'verdict': 'n/a', 'detail': 'no shared queries'}]
        (folder / 'report.json').write_text(json.dumps({'claims': claims}))
        (folder / 'report.md').write_text('| claim |\n|---|\n| <script>alert(1)</script> |\n')
    (folder / 'meta.json').write_text(json.dumps(meta, indent=2))
    return folder


@pytest.fixture(scope='session')
def base_results(tmp_path_factory):
    root = tmp_path_factory.mktemp('results')
    return {
        'first': write_results_folder(root / 'first-stage', {'BM25': 'bm25', 'TAS-B': 'tasb', 'SPLADE++': 'splade-pp-ed',
                                                              'BM25+RM3': 'bm25-rm3'}, analysis=True),
        'xss': write_results_folder(root / 'xss', {XSS_NAMES[0]: 'bm25', XSS_NAMES[1]: 'tasb', XSS_NAMES[2]: 'repllama'},
                                    experiment='xss</script><script>alert(2)</script>', study='<u>study</u>',
                                    tags={XSS_NAMES[0]: '</script><img src=x onerror=alert(3)>'}),
    }


@pytest.fixture
def results(base_results, tmp_path):
    """Fresh copies (tests may damage them)."""
    out = {}
    for k, v in base_results.items():
        shutil.copytree(v, tmp_path / 'in' / v.name)
        out[k] = tmp_path / 'in' / v.name
    return out


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.scripts, self.imgs = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ('href', 'src'):
            if attrs.get(key):
                self.links.append(attrs[key])
        if tag == 'script':
            self.scripts.append(attrs)
        if tag == 'img':
            self.imgs.append(attrs)


def _pages(site: Path):
    return sorted(site.rglob('*.html'))


def test_overview_numbers_ranks_and_significance(results, tmp_path):
    index = build_site([results['first']], tmp_path / 'site')
    site = index.parent
    assert index.name == 'index.html' and index.is_file()
    agg = pd.read_csv(results['first'] / 'dl19' / 'aggregated.csv')
    perq = pd.read_csv(results['first'] / 'dl19' / 'perquery.csv', dtype={'qid': str})
    over = pd.read_csv(site / 'data' / 'overview.csv', dtype={'system': str})
    # every aggregated value is shown unchanged
    for _, row in agg.iterrows():
        for m in MEASURES:
            shown = over[(over.system == row['name']) & (over.measure == m)]
            assert len(shown) == 1 and shown.value.iloc[0] == pytest.approx(row[m], abs=1e-12)
            assert bool(shown.best.iloc[0]) == (row[m] == agg[m].max())
            if row['name'] != 'BM25':
                expect = ('better' if row[m] > agg.loc[agg.name == 'BM25', m].iloc[0] else 'worse') \
                    if row[f'{m} reject'] else 'n.s.'
                assert shown.vs_baseline.iloc[0] == expect
    # tie groups recomputed independently with scipy + statsmodels
    from scipy.stats import ttest_rel
    from statsmodels.stats.multitest import multipletests
    nd = perq[perq.measure == 'nDCG@10'].pivot(index='qid', columns='name', values='value')
    order = nd.mean().sort_values(ascending=False).index.tolist()
    best = order[0]
    ps = [ttest_rel(nd[best], nd[o]).pvalue for o in order[1:]]
    holm = multipletests(ps, method='holm')[1]
    tied = {best} | {o for o, p in zip(order[1:], holm) if p >= 0.05}
    ranks = over[over.measure == 'nDCG@10'].set_index('system')['measure_rank']
    assert {s for s in ranks.index if ranks[s] == 1} == tied
    assert ranks['BM25'] > 1  # BM25 is far below the neural runs on DL19
    html = index.read_text()
    assert 'paired t-test' in html and 'Holm' in html  # the rule is stated on the page
    assert html.count('class="num best"') == len(MEASURES)
    assert '▲' in html


def test_holm_matches_statsmodels():
    import numpy as np
    from statsmodels.stats.multitest import multipletests
    from pyterrier_knowacq.leaderboard_data import holm
    rng = np.random.default_rng(1)
    for m in (1, 2, 5, 17):
        p = list(rng.uniform(0, 0.2, m)) if m != 5 else [0.01, 0.04, 0.03, 0.5, 0.04]
        assert holm(p) == pytest.approx(list(multipletests(p, method='holm')[1]))
    assert holm([]) == []


def test_tie_groups_rule():
    qids = [str(i) for i in range(30)]
    import numpy as np
    rng = np.random.default_rng(0)
    a = pd.Series(rng.uniform(0.5, 1, 30), index=qids)
    b = a + rng.normal(0, 0.02, 30) - 0.001    # indistinguishable from a
    c = a + rng.normal(-0.3, 0.05, 30)         # clearly worse
    d = c + rng.normal(0, 0.02, 30)            # tied with c
    out = tie_groups({'a': a.mean(), 'b': b.mean(), 'c': c.mean(), 'd': d.mean()}, {'a': a, 'b': b, 'c': c, 'd': d})
    assert out['a']['rank'] == out['b']['rank'] == 1
    assert out['c']['rank'] == out['d']['rank'] == 3
    follower = out['b'] if out['b']['leader'] == 'a' else out['a']
    assert 0.05 <= follower['p'] <= follower['p_holm'] <= 1
    assert out['c']['p'] is None or out['d']['p'] is None  # one of them leads group 3
    # a system without per-query values gets no rank rather than a made-up one
    assert tie_groups({'a': 1.0, 'x': 2.0}, {'a': a})['x']['rank'] is None


def test_every_string_is_escaped(results, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # no warnings expected for valid folders
        index = build_site([results['xss'], results['first']], tmp_path / 'site')
    site = index.parent
    pages = _pages(site)
    assert len(pages) >= 1 + 7 + 2
    for page in pages:
        text = page.read_text()
        for payload in ('<script>alert', '<img src=x', "onerror='window", '<u>study</u>', '<b>not bold</b>'):
            assert payload not in text, (page, payload)
        parser = _Links()
        parser.feed(text)
        assert all(set(s) <= {'src', 'type', 'id'} for s in parser.scripts)
        assert all(i.get('src', '').startswith('../sources/') for i in parser.imgs), parser.imgs
        # embedded JSON never contains a raw < > &
        for block in re.findall(r'<script type="application/json"[^>]*>(.*?)</script>', text, re.S):
            assert not set('<>&') & set(block)
    index_html = index.read_text()
    assert '&lt;script&gt;alert(1)&lt;/script&gt;' in index_html
    assert '&#34;&gt;&lt;img src=x onerror=alert(1)&gt;' in index_html
    filters = json.loads(re.search(r'id="lb-filters">(.*?)</script>', index_html, re.S).group(1))
    assert '</script><img src=x onerror=alert(3)>' in filters['backbone']  # decoded back to the exact text


def test_system_page_per_query_chart_and_run_files(results, tmp_path):
    site = build_site([results['first']], tmp_path / 'site').parent
    page = next(p for p in (site / 'systems').glob('*.html') if 'tas-b' in p.name).read_text()
    for text in ('bm25_run', 'tasb_run', 'knowacq run experiments/dl19-first-stage.yaml', 'pyterrier', '42',
                 'MS MARCO passage, TREC DL 2019 judgments.', 'dl19'):
        assert text in page
    agg = pd.read_csv(results['first'] / 'dl19' / 'aggregated.csv').set_index('name')
    # the chart's better/worse counts are the +/- counts pt.Experiment reports against the baseline
    caption = re.findall(r'(\d+) queries, sorted by difference: (\d+) better, (\d+) worse', page)
    assert len(caption) == len(MEASURES)
    n, better, worse = map(int, caption[0])
    assert (better, worse) == (int(agg.loc['TAS-B', 'nDCG@10 +']), int(agg.loc['TAS-B', 'nDCG@10 -']))
    assert n == 43 and page.count('<rect') == sum(int(c[0]) for c in caption)
    # run files are copied into the site and are the same runs
    run = re.search(r'href="\.\./(sources/[^"]+\.res\.gz)"', page).group(1)
    assert (site / run).read_bytes() == (results['first'] / 'dl19' / 'runs' / 'tas-b.res.gz').read_bytes()
    # per-query export matches perquery.csv
    pq = pd.read_csv(next((site / 'data' / 'perquery').glob('*tas-b.csv')), dtype={'qid': str})
    src = pd.read_csv(results['first'] / 'dl19' / 'perquery.csv', dtype={'qid': str})
    src = src[src.name == 'TAS-B'].set_index(['qid', 'measure'])['value']
    assert len(pq) == len(src)
    for _, r in pq.iterrows():
        assert r.value == pytest.approx(src[(r.qid, r.measure)])


def test_all_links_resolve_and_study_page(results, tmp_path):
    site = build_site([results['first'], results['xss']], tmp_path / 'site').parent
    for page in _pages(site):
        parser = _Links()
        parser.feed(page.read_text())
        for link in parser.links:
            if link.startswith(('data:', '#')):
                continue
            assert '://' not in link, f'{page}: external link {link}'
            target = (page.parent / link.split('#')[0]).resolve()
            assert target.is_file(), f'{page}: broken link {link}'
    study = (site / 'studies').glob('spine-*.html').__next__().read_text()
    assert 'ndcg-per-query.png' in study and 'ndcg-per-query.svg' in study
    assert 'TAS-B beats BM25 on nDCG@10' in study and 'reproduced' in study and '0.717' in study
    assert 'an untestable claim' in study and 'nan' not in study.lower().replace('nanum', '')
    claims = list(csv.DictReader(open(site / 'data' / 'claims.csv')))
    json.loads((site / 'data' / 'leaderboard.json').read_text(), parse_constant=lambda c: pytest.fail(f'{c} in JSON'))
    assert claims[0]['claim'] == 'TAS-B beats BM25 on nDCG@10'
    export = json.loads((site / 'data' / 'leaderboard.json').read_text())
    assert {s['name'] for s in export['systems']} >= set(XSS_NAMES) | {'BM25', 'TAS-B'}
    assert len(export['tables']) == 1 and len(export['tables'][0]['rows']) == 7


def test_incremental_rebuild_keeps_earlier_results(results, tmp_path):
    site = tmp_path / 'site'
    build_site([results['first']], site)
    first_pages = {p.name for p in (site / 'systems').glob('*.html')}
    shutil.rmtree(results['first'])  # the original folder is gone; the site keeps its copy
    build_site([results['xss']], site)
    pages = {p.name for p in (site / 'systems').glob('*.html')}
    assert first_pages < pages and len(pages) == 7
    manifest = json.loads((site / 'manifest.json').read_text())
    assert len(manifest['sources']) == 2
    build_site([], site)  # re-render from the kept copies
    assert {p.name for p in (site / 'systems').glob('*.html')} == pages


def test_same_system_from_two_folders_is_kept_twice_with_warning(results, tmp_path):
    twin = tmp_path / 'rerun'
    shutil.copytree(results['first'], twin)
    meta = json.loads((twin / 'meta.json').read_text())
    meta['created'] = '2026-11-26T00:00:00+00:00'
    (twin / 'meta.json').write_text(json.dumps(meta))
    site = tmp_path / 'site'
    build_site([results['first']], site)
    with pytest.warns(LeaderboardWarning, match=r"experiment 'dl19-first-stage' has the same systems in two results folders.*'TAS-B'"):
        build_site([twin], site)
    over = pd.read_csv(site / 'data' / 'overview.csv')
    ids = set(over[over.system == 'TAS-B'].system_id)
    assert len(ids) == 2
    # an identical copy is recognised and not added a third time
    same = tmp_path / 'same'
    shutil.copytree(twin, same)
    with pytest.warns(LeaderboardWarning) as record:
        build_site([same], site)
    assert any('identical to' in str(w.message) and str(same) in str(w.message) for w in record)
    assert len(json.loads((site / 'manifest.json').read_text())['sources']) == 2


def test_bad_folders_are_named_and_the_rest_renders(results, tmp_path):
    no_meta = tmp_path / 'no-meta'
    shutil.copytree(results['xss'], no_meta)
    (no_meta / 'meta.json').unlink()
    old = tmp_path / 'old-format'
    shutil.copytree(results['xss'], old)
    meta = json.loads((old / 'meta.json').read_text())
    meta['format'] = 'pyterrier_knowacq.results/0'
    (old / 'meta.json').write_text(json.dumps(meta))
    no_agg = tmp_path / 'no-agg'
    shutil.copytree(results['xss'], no_agg)
    (no_agg / 'dl19' / 'aggregated.csv').unlink()
    with pytest.warns(LeaderboardWarning) as record:
        index = build_site([no_meta, results['first'], old, no_agg, tmp_path / 'missing'], tmp_path / 'site')
    messages = [str(w.message) for w in record]
    assert any(str(no_meta) in m and 'no meta.json' in m for m in messages)
    assert any(str(old) in m and 'results/0' in m and 'incompatible' in m for m in messages)
    assert any(str(no_agg.resolve()) in m and 'aggregated.csv' in m for m in messages)
    assert any(str(tmp_path / 'missing') in m and 'does not exist' in m for m in messages)
    html = index.read_text()
    assert 'no meta.json' in html and 'TAS-B' in html
    with pytest.raises(KnowacqError, match='no results folder could be shown'):
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            build_site([no_meta], tmp_path / 'site2')
    assert not (tmp_path / 'site2').exists()


def test_refuses_to_overwrite_other_folders_and_is_atomic(results, tmp_path, monkeypatch):
    other = tmp_path / 'not-a-site'
    other.mkdir()
    (other / 'precious.txt').write_text('keep me')
    with pytest.raises(KnowacqError, match='not a leaderboard site'):
        build_site([results['first']], other)
    assert (other / 'precious.txt').read_text() == 'keep me'
    site = tmp_path / 'site'
    build_site([results['first']], site)
    before = sorted(p.relative_to(site) for p in site.rglob('*'))
    import pyterrier_knowacq.leaderboard as lb

    def boom(*args, **kwargs):
        raise RuntimeError('disk full')
    monkeypatch.setattr(lb, '_render', boom)
    with pytest.raises(RuntimeError):
        build_site([results['xss']], site)
    assert sorted(p.relative_to(site) for p in site.rglob('*')) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('.site')]


def test_topics_file_shows_query_text(results, tmp_path):
    (results['first'] / 'dl19' / 'topics.tsv').write_text('1037798\twho is robert gray <b>\n')
    site = build_site([results['first']], tmp_path / 'site').parent
    page = next(p for p in (site / 'systems').glob('*.html') if 'tas-b' in p.name).read_text()
    assert 'who is robert gray &lt;b&gt;' in page


def test_reads_no_model_code(base_results, tmp_path):
    code = ('import sys; from pyterrier_knowacq.leaderboard import build_site; '
            f'build_site([{str(base_results["first"])!r}], {str(tmp_path / "site")!r}); '
            'bad = [m for m in ("torch", "transformers", "sentence_transformers") if m in sys.modules]; '
            'assert not bad, bad')
    subprocess.run([sys.executable, '-c', code], check=True)


def test_malformed_meta_and_many_queries(results, tmp_path):
    from pyterrier_knowacq.leaderboard_render import MAX_BARS, difference_chart
    bad = tmp_path / 'bad-meta'
    shutil.copytree(results['xss'], bad)
    meta = json.loads((bad / 'meta.json').read_text())
    meta['timings'] = ['not', 'a', 'mapping']
    (bad / 'meta.json').write_text(json.dumps(meta))
    with pytest.warns(LeaderboardWarning, match=r'bad-meta/meta.json: "timings" should be a JSON object'):
        index = build_site([bad, results['first']], tmp_path / 'site')
    assert 'TAS-B' in index.read_text()
    entries = [{'qid': str(i), 'query': None, 'values': {'m': {'difference': (i % 7 - 3) / 10}}}
               for i in range(MAX_BARS + 1)]
    svg = difference_chart(entries, 'm', 'base')
    assert '<polygon' in svg and '<rect' not in svg and f'{MAX_BARS + 1} queries' in svg
    assert svg.count('<rect') == 0 and difference_chart(entries[:5], 'm', 'b').count('<rect') == 5


def test_rebuilding_the_same_folder_replaces_its_copy(results, tmp_path):
    site = tmp_path / 'site'
    build_site([results['first']], site)
    (results['first'] / 'report.json').unlink()
    meta = json.loads((results['first'] / 'meta.json').read_text())
    meta['description'] = 'second run of the same folder'
    (results['first'] / 'meta.json').write_text(json.dumps(meta))
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # a re-run of the same folder is an update, not a duplicate
        build_site([results['first']], site)
    manifest = json.loads((site / 'manifest.json').read_text())
    assert len(manifest['sources']) == 1
    assert 'second run of the same folder' in (site / 'index.html').read_text()
    assert not (site / 'sources' / manifest['sources'][0]['id'] / 'report.json').exists()
    assert len(list((site / 'systems').glob('*.html'))) == 4


def test_analysis_only_folder_gets_a_study_page(results, tmp_path):
    only = tmp_path / 'probe-analysis'
    shutil.copytree(results['first'], only)
    shutil.rmtree(only / 'dl19')
    (only / 'report.json').unlink()
    meta = json.loads((only / 'meta.json').read_text())
    meta.update(study='knowacq', experiment='probes', collections=[], systems=[], timings={})
    (only / 'meta.json').write_text(json.dumps(meta))
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        site = build_site([only, results['first']], tmp_path / 'site').parent
    page = next((site / 'studies').glob('knowacq-*.html')).read_text()
    assert 'ndcg-per-query.png' in page and 'ndcg-summary.csv' in page and 'No claims' in page
    assert 'v-good' in next((site / 'studies').glob('spine-*.html')).read_text()
