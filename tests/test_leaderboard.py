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
from pyterrier_knowacq.leaderboard.build import LeaderboardWarning, build_site
from pyterrier_knowacq.leaderboard.data import FORMAT, tie_groups

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
    from pyterrier_knowacq.leaderboard.data import holm
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
        # our own script (src) and JSON data blocks only: no inline code, no other attributes
        assert all(set(s) <= {'src'} or (s.get('type') == 'application/json' and set(s) <= {'type', 'id', 'class', 'data-table'})
                   for s in parser.scripts), parser.scripts
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
    import pyterrier_knowacq.leaderboard.build as lb

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
    code = ('import sys; from pyterrier_knowacq.leaderboard.build import build_site; '
            f'build_site([{str(base_results["first"])!r}], {str(tmp_path / "site")!r}); '
            'bad = [m for m in ("torch", "transformers", "sentence_transformers") if m in sys.modules]; '
            'assert not bad, bad')
    subprocess.run([sys.executable, '-c', code], check=True)


def test_malformed_meta_and_many_queries(results, tmp_path):
    from pyterrier_knowacq.leaderboard.render import MAX_BARS, difference_chart
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


# --- one table per collection, one explicit baseline, smoke tests, published paths, the shipped site ------------

def _meta(folder: Path) -> dict:
    return json.loads((folder / 'meta.json').read_text())


def _set_meta(folder: Path, **changes) -> None:
    meta = _meta(folder)
    meta.update(changes)
    (folder / 'meta.json').write_text(json.dumps(meta))


def _drop_measure(folder: Path, measure: str) -> None:
    """The folder as an experiment that did not measure ``measure``: its columns, per-query rows and declaration go."""
    agg_file, pq_file = folder / 'dl19' / 'aggregated.csv', folder / 'dl19' / 'perquery.csv'
    agg = pd.read_csv(agg_file)
    agg.drop(columns=[c for c in agg.columns if c == measure or c.startswith(measure + ' ')]).to_csv(agg_file, index=False)
    pq = pd.read_csv(pq_file, dtype=str)
    pq[pq.measure != measure].to_csv(pq_file, index=False)
    keep = [m for m in MEASURES if m != measure]
    meta = _meta(folder)
    meta['measures'] = keep
    meta['collections'][0]['measures'] = keep
    (folder / 'meta.json').write_text(json.dumps(meta))


def test_one_table_per_collection_with_blank_cells_and_one_baseline(results, tmp_path):
    """Two experiments on DL19 with different measure sets share one table (blank cells, never two tables); a third
    on other data content (another fingerprint) is never merged; every marker is against the one table baseline and
    equals a paired t-test + Holm computed here with scipy and statsmodels; each system can be the baseline."""
    other = tmp_path / 'other'
    write_results_folder(other, {'RepLLaMA': 'repllama', 'BM25+RM3': 'bm25-rm3'}, experiment='second', baseline='BM25+RM3')
    _drop_measure(other, 'R(rel=2)@100')
    changed = tmp_path / 'changed'
    write_results_folder(changed, {'BM25': 'bm25', 'TAS-B': 'tasb'}, experiment='edited-qrels')
    for f in (results['first'], other):
        meta = _meta(f)
        meta['collections'][0]['dataset_fingerprint'] = 'a' * 64
        (f / 'meta.json').write_text(json.dumps(meta))
    meta = _meta(changed)
    meta['collections'][0]['dataset_fingerprint'] = 'b' * 64
    (changed / 'meta.json').write_text(json.dumps(meta))
    site = build_site([results['first'], other, changed], tmp_path / 'site').parent
    board = json.loads((site / 'data' / 'leaderboard.json').read_text())
    dl19 = [t for t in board['tables'] if t['collection'] == 'dl19']
    assert len(dl19) == 2                                                 # one per data content, never merged
    table = next(t for t in dl19 if len(t['rows']) == 6)
    assert table['measures'] == MEASURES and table['partial_measures'] == ['R(rel=2)@100']
    rows = {r['system']: r for r in table['rows']}
    assert rows['RepLLaMA']['cells']['R(rel=2)@100'] is None              # blank: 'second' did not measure it
    html = (site / 'index.html').read_text()
    assert html.count('class="num blank"') == 2 and 'were not measured by every experiment' in html \
        or 'was not measured by every experiment' in html
    # one explicit baseline: the declared baseline of the most systems (BM25 of the first folder), shown and choosable
    first_bm25 = next(r['system_id'] for r in table['rows'] if r['system'] == 'BM25')
    assert table['baseline'] == first_bm25
    assert set(table['comparisons']) == {r['system_id'] for r in table['rows']}
    assert 'against the baseline' in html and 'select class="baseline"' in html
    # markers against the table baseline = scipy paired t-test over shared queries, Holm over the table's comparisons
    from scipy.stats import ttest_rel
    from statsmodels.stats.multitest import multipletests
    pq = pd.concat([pd.read_csv(f / 'dl19' / 'perquery.csv', dtype={'qid': str}).assign(src=f.name)
                    for f in (results['first'], other)])
    ids = {r['system_id']: r['system'] for r in table['rows']}
    for base in (first_bm25, next(r['system_id'] for r in table['rows'] if r['system'] == 'RepLLaMA')):
        for m in ('nDCG@10', 'RR(rel=2)@10'):
            nd = pq[pq.measure == m].pivot_table(index='qid', columns='name', values='value', aggfunc='first')
            others = [sid for sid in ids if sid != base]
            raw = [ttest_rel(nd[ids[sid]], nd[ids[base]]).pvalue for sid in others]
            adjusted = multipletests(raw, method='holm')[1]
            got = table['comparisons'][base][m]
            for sid, p in zip(others, adjusted):
                assert got[sid]['p_holm'] == pytest.approx(float(f'{p:.2g}'), rel=1e-9, abs=1e-12)
                mean_s, mean_b = nd[ids[sid]].mean(), nd[ids[base]].mean()
                assert got[sid]['direction'] == ((1 if mean_s > mean_b else -1) if p < 0.05 else 0)
    # the page's default markers are against that baseline only (the experiments' own baselines differ)
    over = pd.read_csv(site / 'data' / 'overview.csv')
    over = over[over.table == table['id']]
    assert set(over.table_baseline) == {'BM25'}
    assert set(over[over.system_id == first_bm25].vs_baseline) == {'baseline'}
    assert set(over[over.system == 'RepLLaMA'].experiment_baseline.dropna()) == {'BM25+RM3'}   # kept, on the side
    # tie groups are explained above the table, in view
    assert 'Rank = tie group on nDCG@10' in html


def test_smoke_tests_are_left_out_unless_asked_for(results, tmp_path):
    ci = tmp_path / 'knowacq-ci'
    shutil.copytree(results['xss'], ci)
    _set_meta(ci, experiment='knowacq-ci', study='knowacq')
    limited = tmp_path / 'limited'
    shutil.copytree(results['xss'], limited)
    _set_meta(limited, experiment='quick', command='knowacq run experiments/quick.yaml --limit-topics 2')
    with pytest.warns(LeaderboardWarning, match='smoke test') as record:
        site = build_site([results['first'], ci, limited], tmp_path / 'site').parent
    assert sum('smoke test' in str(w.message) for w in record) == 2
    board = json.loads((site / 'data' / 'leaderboard.json').read_text())
    assert {s['experiment'] for s in board['systems']} == {'dl19-first-stage'}
    assert not list((site / 'studies').glob('knowacq-*.html'))
    site2 = build_site([results['first'], ci], tmp_path / 'site2', include_smoke=True).parent
    assert {s['experiment'] for s in json.loads((site2 / 'data' / 'leaderboard.json').read_text())['systems']} == \
        {'dl19-first-stage', 'knowacq-ci'}
    with pytest.warns(LeaderboardWarning, match='smoke test'):            # a later build without the flag drops it
        build_site([], site2)
    assert len(json.loads((site2 / 'manifest.json').read_text())['sources']) == 1


ABSOLUTE = re.compile(r'(?<![\w.:/~$@-])/(?:tmp|root|home|work|Users|var|private|mnt|opt|srv)/')


def _published_text(site: Path):
    for path in sorted(site.rglob('*')):
        if path.is_file() and path.suffix in ('.html', '.json', '.csv', '.md', '.yaml', '.tsv', '.jsonl', '.js', '.css'):
            yield path, path.read_text(encoding='utf-8', errors='replace')


def test_no_absolute_path_or_host_name_is_published(results, tmp_path):
    import socket
    meta = _meta(results['first'])
    meta['command'] = f'knowacq run {tmp_path}/experiments/dl19-first-stage.yaml -o {tmp_path}/out --overwrite'
    meta['models'] = {'dl19': {'C': f'{tmp_path}/cache/models/trained/0d83399e441ab519'}}
    meta['training'] = {'dl20': {'C': {'folder': '/root/.cache/pyterrier_knowacq/models/trained/0d83'}}}
    (results['first'] / 'meta.json').write_text(json.dumps(meta))
    (results['first'] / 'tables' / 'paths.csv').write_text(f'model,path\nC,{tmp_path}/cache/models/C\n')
    broken = tmp_path / 'broken'
    broken.mkdir()
    with pytest.warns(LeaderboardWarning) as record:
        site = build_site([results['first'], broken], tmp_path / 'site').parent
    assert any(str(broken) in str(w.message) for w in record)     # the console names the folder in full ...
    host = socket.gethostname()
    for path, text in _published_text(site):                         # ... a published file never
        assert not ABSOLUTE.search(text), (path, ABSOLUTE.search(text).group(0))
        assert str(tmp_path) not in text and str(Path.cwd()) not in text, path
        if len(host) >= 4:
            assert not re.search(r'(?<![\w.-])' + re.escape(host) + r'(?![\w-])', text), path
    page = next(p for p in (site / 'systems').glob('*tas-b.html')).read_text()
    # the rebuild commands are relative to the repository: the experiment file, results/<name>, knowacq verify
    assert '.venv/bin/knowacq run experiments/dl19-first-stage.yaml -o results/dl19-first-stage --overwrite' in page
    assert '.venv/bin/knowacq verify results/dl19-first-stage --system TAS-B' in page
    assert 'class="copy"' in page and '$KNOWACQ_CACHE/models/trained/0d83399e441ab519' in \
        (site / 'sources' / json.loads((site / 'manifest.json').read_text())['sources'][0]['id'] / 'meta.json').read_text()


def test_system_context_parameters_training_and_cost(results, tmp_path):
    from pyterrier_knowacq.leaderboard.model import system_context
    meta = {'config': {'models': {'C': {'backbone': 'minilm-l6', 'stages': [
        {'loss': 'lce', 'data': {'run': 'bm25', 'extra': ['msmarco-train']}, 'steps': 320},
        {'loss': 'ranknet', 'data': {'teacher': 'rankgpt-3.5'}, 'steps': 100}]}}},
        'timings': {'dl19': {'BM25 >> C': 43.0, 'BM25': 0.5}},
        'resources': {'train: dl20/C': {'wall_s': 812.5, 'peak_rss_mb': 2100}},
        'platform': {'cpu': 'Some CPU', 'logical_cores': 2, 'ram_gb': 8, 'gpus': [], 'cuda': None}}
    coll = {'name': 'dl19', 'train': 'dl20', 'train_dataset': 'msmarco-passage', 'num_queries': 43}
    ctx = system_context(meta, 'BM25 >> C', 'bm25(k=100) >> text >> ce(model=C)', coll)
    assert ctx['params'] == 22_713_216 and ctx['params_text'] == '22.7M'
    assert ctx['trained_on'] == 'msmarco-passage dl20 · teacher rankgpt-3.5'
    assert ctx['train_wall_s'] == 812.5 and ctx['qps'] == pytest.approx(1.0) and ctx['ms_per_query'] == pytest.approx(1000)
    assert ctx['models'][0]['losses'] == ['lce', 'ranknet'] and ctx['models'][0]['steps'] == 420
    assert 'Some CPU; 2 logical cores; 8 GB RAM; no GPU' == ctx['platform']
    bm25 = system_context(meta, 'BM25', 'bm25(k=100)', coll)
    assert (bm25['params'], bm25['trained_on'], bm25['train_wall_s']) == (0, 'none', None)
    zero_shot = system_context(meta, 'X', 'run(name=bm25) >> text >> biencoder(model=minilm-l6)', coll)
    assert zero_shot['trained_on'] == 'none' and zero_shot['params'] == 22_713_216 and zero_shot['precomputed_runs'] == ['bm25']
    site = build_site([results['first']], tmp_path / 'site').parent
    html = (site / 'index.html').read_text()
    assert '<th data-type="num" data-key="params"' in html and 'Trained on' in html and 'q/s' in html
    assert '<svg class="chart scatter"' in html                      # quality vs cost per collection
    assert 'milliseconds per query' in html


def test_study_page_rounds_numbers_and_shows_each_plot_once(results, tmp_path):
    (results['first'] / 'tables' / 'probe.csv').write_text(
        'layer,accuracy,p_value,p_holm,n_test,label\n0,0.5045871559633027,0.000123456789,0.0489123,218,a\n'
        '1,0.61,1.0,0.5,218,b\n')
    site = build_site([results['first']], tmp_path / 'site').parent
    page = next((site / 'studies').glob('spine-*.html')).read_text()
    assert '>0.5046<' in page and '>0.00012<' in page and '>0.049<' in page and '>218<' in page
    assert '0.5045871559633027' in page                              # the full value stays in the sort key / hover
    assert page.count('<img ') == 1                                  # ndcg-per-query: the SVG, once ...
    assert 'ndcg-per-query.svg' in page and '>PNG</a>' in page       # ... the PNG as a download
    assert 'class="zoom"' in page
    claims = page[page.index('class="lb sortable claims'):].split('</table>')[0]
    assert '>0.7170<' in claims                                       # measures: 4 decimals
    p = json.loads((results['first'] / 'report.json').read_text())['claims'][0]['p_value']
    assert f'>{p:.2g}<' in page                                      # p-values to 2 significant digits


def test_pack_and_build_from_archives(results, tmp_path):
    from pyterrier_knowacq.leaderboard.build import pack_results
    meta = _meta(results['first'])
    meta['command'] = 'knowacq run experiments/dl19-first-stage.yaml -o /tmp/somewhere/out'
    (results['first'] / 'meta.json').write_text(json.dumps(meta))
    a = pack_results(results['first'], tmp_path / 'packed')
    first = a.read_bytes()
    assert pack_results(results['first'], tmp_path / 'packed') == a and a.read_bytes() == first   # deterministic
    import tarfile
    with tarfile.open(a) as tar:
        names = sorted(tar.getnames())
        text = tar.extractfile('dl19-first-stage/meta.json').read().decode()
    assert 'dl19-first-stage/dl19/aggregated.csv' in names and not [n for n in names if n.endswith('.res.gz')]
    assert 'dl19-first-stage/plots/ndcg-per-query.svg' in names and 'dl19-first-stage/plots/ndcg-per-query.png' not in names
    assert '/tmp/somewhere' not in text and '…/out' in text
    site = build_site([a], tmp_path / 'site').parent
    assert 'TAS-B' in (site / 'index.html').read_text()
    manifest = json.loads((site / 'manifest.json').read_text())
    assert manifest['sources'][0]['label'].endswith('dl19-first-stage.tar.gz')


SHIPPED = Path(__file__).resolve().parents[1] / 'leaderboard' / 'results'


@pytest.mark.skipif(not SHIPPED.is_dir(), reason='no leaderboard/results in this checkout')
def test_shipped_site_builds_fast_deterministic_and_clean(tmp_path):
    """CI builds the published site: from leaderboard/results/*.tar.gz, byte for byte the same twice, no smoke test, no
    absolute path; DL19 is one table with every experiment's systems. (No time limit here: a timed unit test fails on
    a busy machine and proves nothing on a quiet one.)"""
    from pyterrier_knowacq.cli import main as knowacq
    assert knowacq(['leaderboard', '--shipped', '-o', str(tmp_path / 'a')]) == 0
    from pyterrier_knowacq.leaderboard.build import build_shipped
    build_shipped(tmp_path / 'b')
    files_a = sorted(p.relative_to(tmp_path / 'a') for p in (tmp_path / 'a').rglob('*') if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / 'b') for p in (tmp_path / 'b').rglob('*') if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        assert (tmp_path / 'a' / rel).read_bytes() == (tmp_path / 'b' / rel).read_bytes(), rel
    board = json.loads((tmp_path / 'a' / 'data' / 'leaderboard.json').read_text())
    assert not [s for s in board['systems'] if s['experiment'].endswith('-ci')] and not board['problems']
    dl19 = [t for t in board['tables'] if t['collection'] == 'dl19']
    assert len(dl19) == 1 and len(dl19[0]['experiments']) >= 2
    for path, text in _published_text(tmp_path / 'a'):
        assert not ABSOLUTE.search(text), (path, ABSOLUTE.search(text).group(0))


# --- data fingerprints of results older than their recording (leaderboard/backfill.py) ---------------------------

def _git(cwd, *args):
    import subprocess
    return subprocess.run(['git', '-C', str(cwd), *args], capture_output=True, text=True, check=True).stdout.strip()


def test_backfill_fills_only_what_git_proves(tmp_path):
    from pyterrier_knowacq.datasets.registry import get_dataset
    from pyterrier_knowacq.leaderboard.backfill import backfill_meta, repository_root
    root = repository_root()
    if root is None:
        pytest.skip('not a git checkout')
    head = _git(root, 'rev-parse', 'HEAD')
    meta = {'git_commit': head, 'collections': [
        {'name': 'dl19', 'dataset': 'msmarco-passage'},
        {'name': 'mine', 'dataset': 'beir-folder-abc'},
        {'name': 'dl20', 'dataset': 'msmarco-passage', 'dataset_fingerprint': 'kept'}]}
    filled, lines = backfill_meta(meta)
    assert meta['collections'][0].get('dataset_fingerprint') is None   # the input is not changed
    dl19, mine, dl20 = filled['collections']
    dirty = _git(root, 'status', '--porcelain', '--ignored', '--untracked-files=all', '--',
                 'pyterrier_knowacq/data/msmarco-passage')
    if dirty:
        pytest.skip('the embedded MS MARCO folder differs from HEAD in this checkout')
    assert dl19['dataset_fingerprint'] == get_dataset('msmarco-passage').fingerprint()
    assert 'backfilled' in dl19['dataset_fingerprint_source'] and head[:12] in dl19['dataset_fingerprint_source']
    assert 'dataset_fingerprint' not in mine and dl20['dataset_fingerprint'] == 'kept'
    assert any("'beir-folder-abc' is not embedded" in line for line in lines) and len(lines) == 2
    for commit, why in ((head + '-dirty', 'not a clean commit'), ('0' * 40, 'is not in this repository'),
                        (None, 'unrecorded is not a clean commit')):
        out, lines = backfill_meta({**meta, 'git_commit': commit})
        assert 'dataset_fingerprint' not in out['collections'][0] and why in lines[0], (commit, lines)


def test_backfill_refuses_data_that_changed_since_the_commit(tmp_path):
    from pyterrier_knowacq.leaderboard.backfill import _identical_since
    repo = tmp_path / 'repo'
    (repo / 'data').mkdir(parents=True)
    (repo / 'data' / 'qrels.txt').write_text('1 0 d1 1\n')
    _git(tmp_path, 'init', '-q', str(repo))
    _git(repo, '-c', 'user.name=t', '-c', 'user.email=t@t', 'add', '.')
    _git(repo, '-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm', 'a')
    first = _git(repo, 'rev-parse', 'HEAD')
    assert _identical_since(repo, first, repo / 'data') == (True, '')
    (repo / 'data' / 'extra.txt').write_text('x')   # an untracked file the fingerprint would read
    ok, why = _identical_since(repo, first, repo / 'data')
    assert not ok and 'differs from HEAD in the working tree' in why
    (repo / 'data' / 'qrels.txt').write_text('1 0 d1 2\n')
    _git(repo, '-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qam', 'b')
    (repo / 'data' / 'extra.txt').unlink()
    ok, why = _identical_since(repo, first, repo / 'data')
    assert not ok and 'changed between' in why


def test_shipped_archives_record_the_data_of_every_collection():
    """Every shipped results folder says which data it ran on, so one collection is one table."""
    import tarfile
    for archive in sorted(SHIPPED.glob('*.tar.gz')):
        with tarfile.open(archive) as tar:
            meta = next(json.load(tar.extractfile(m)) for m in tar.getmembers() if m.name.endswith('/meta.json'))
        for coll in meta['collections']:
            assert coll.get('dataset_fingerprint'), (archive.name, coll['name'])
