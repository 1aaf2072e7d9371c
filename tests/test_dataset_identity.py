"""Dataset identity: results and caches never mix two collections, and stored texts come back exactly.

BEIR names every dataset folder after the collection's parent (``.../scifact/beir``?), so two different collections can
both live in folders called ``beir``. They must get two ids, two PISA indexes and two leaderboard tables.
"""
import json
from pathlib import Path

import pytest

from pyterrier_knowacq._util import KnowacqError
from pyterrier_knowacq.datasets.core import BeirDataset, get_dataset


def _beir(root: Path, docs, queries, qrels) -> Path:
    (root / 'qrels').mkdir(parents=True)
    (root / 'corpus.jsonl').write_text(''.join(json.dumps({'_id': d, 'title': '', 'text': t}) + '\n' for d, t in docs))
    (root / 'queries.jsonl').write_text(''.join(json.dumps({'_id': q, 'text': t}) + '\n' for q, t in queries))
    (root / 'qrels' / 'test.tsv').write_text('query-id\tcorpus-id\tscore\n' + ''.join(f'{q}\t{d}\t{r}\n' for q, d, r in qrels))
    return root


@pytest.fixture
def two_beirs(tmp_path):
    """Two different collections, both in folders called ``beir``, with coinciding query ids and docnos."""
    a = _beir(tmp_path / 'cats' / 'beir',
              [('d1', 'cats purr and sleep all day'), ('d2', 'a cat chases a mouse'), ('d3', 'kittens play with wool'),
               ('d4', 'the weather is sunny')],
              [('q1', 'cat'), ('q2', 'kitten wool')], [('q1', 'd1', 1), ('q1', 'd2', 1), ('q2', 'd3', 1)])
    b = _beir(tmp_path / 'ships' / 'beir',
              [('d1', 'ships sail across the ocean'), ('d2', 'a harbour full of boats'), ('d3', 'the anchor is heavy'),
               ('d4', 'sailors tie knots'), ('d5', 'cat on a boat')],
              [('q1', 'ship ocean'), ('q2', 'anchor')], [('q1', 'd1', 1), ('q2', 'd3', 2), ('q2', 'd4', 1)])
    return a, b


def test_same_folder_name_gives_two_ids_and_fingerprints(two_beirs):
    a, b = (get_dataset(f'beir:{p}') for p in two_beirs)
    assert a.name == b.name == 'beir'
    assert a.id != b.id and a.id.startswith('beir-') and b.id.startswith('beir-')
    assert a.corpus_fingerprint() != b.corpus_fingerprint() and a.fingerprint() != b.fingerprint()
    assert get_dataset(f'beir:{two_beirs[0]}') is a                      # one object per folder
    named = get_dataset({'beir': str(two_beirs[0]), 'name': 'cats'})
    assert named.id == 'cats' and named.fingerprint() == a.fingerprint()


def test_fingerprint_follows_content_not_location(two_beirs, tmp_path):
    import shutil
    copy = shutil.copytree(two_beirs[0], tmp_path / 'elsewhere' / 'beir')
    a, c = BeirDataset(two_beirs[0]), BeirDataset(copy)
    assert a.fingerprint() == c.fingerprint() and a.corpus_fingerprint() == c.corpus_fingerprint()
    assert a.id != c.id                                                  # two places: never merged silently
    qrels = copy / 'qrels' / 'test.tsv'
    qrels.write_text(qrels.read_text().replace('q2\td3\t1', 'q2\td4\t1'))
    assert BeirDataset(copy).fingerprint() != a.fingerprint()           # a changed qrels file changes the data key
    assert BeirDataset(copy).corpus_fingerprint() == a.corpus_fingerprint()   # ... but not the corpus (index) key


@pytest.mark.parametrize('spec,match', [
    ({'beir': 'x', 'irds': 'y'}, 'exactly one of beir: or irds:'),
    ({'name': 'cisi'}, 'exactly one of beir: or irds:'),
    ({'beir': 'x', 'nme': 'cisi'}, 'exactly one of beir: or irds:'),
    ('scifcat', "did you mean 'scifact'"),
])
def test_bad_dataset_specs(spec, match):
    with pytest.raises(KnowacqError, match=match):
        get_dataset(spec)


def test_bad_beir_name(two_beirs):
    with pytest.raises(KnowacqError, match='short non-empty label'):
        get_dataset({'beir': str(two_beirs[0]), 'name': 'a/b'})


EXPERIMENT = """
name: {name}
dataset: {dataset}
topics: [test]
systems:
  BM25: bm25(k=10)
  BM25 k1=1.5: bm25(k=10, k1=1.5)
baseline: BM25
measures: [nDCG@10, RR@10]
"""


def test_two_beir_folders_give_two_tables_and_two_indexes(two_beirs, tmp_path, cache):
    from pyterrier_knowacq.experiments.runner import run_experiment
    from pyterrier_knowacq.leaderboard.build import build_site
    outs = []
    for label, folder in zip(('cats', 'ships'), two_beirs):
        yaml_file = tmp_path / f'{label}.yaml'
        yaml_file.write_text(EXPERIMENT.format(name=f'my-{label}', dataset=f'beir:{folder}'))
        outs.append(run_experiment(yaml_file, output=tmp_path / 'results' / label))
    metas = [json.loads((o / 'meta.json').read_text()) for o in outs]
    ids = [m['collections'][0]['dataset'] for m in metas]
    assert ids[0] != ids[1] and all(m['collections'][0]['dataset_name'] == 'beir' for m in metas)
    indexes = sorted(p.name for p in (cache / 'indexes').glob('pisa-*') if p.is_dir())
    assert len(indexes) == 2, indexes                                   # one index per corpus, not per name
    build_site(outs, tmp_path / 'site')
    board = json.loads((tmp_path / 'site' / 'data' / 'leaderboard.json').read_text())
    tables = [t for t in board['tables'] if t['collection'] == 'test']
    assert len(tables) == 2, [t['dataset'] for t in tables]
    assert sorted(t['dataset'] for t in tables) == sorted(ids)
    for t in tables:                                                    # each table holds one experiment's systems
        assert len(t['experiments']) == 1 and len(t['rows']) == 2
    # the same collection run twice (a rerun) still shares a table
    again = run_experiment(tmp_path / 'cats.yaml', output=tmp_path / 'results' / 'cats-again')
    assert json.loads((again / 'meta.json').read_text())['collections'][0]['dataset'] == ids[0]
    assert len(sorted(p for p in (cache / 'indexes').glob('pisa-*') if p.is_dir())) == 2   # index reused


# -- texts round-trip exactly ------------------------------------------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

NASTY = ['say "hi"', 'tab\there', 'new\nline', 'cr\rlf\r\n', 'para\u2028sep\u2029x', 'nel\x85x', 'emoji 🦀👩‍🔬',
         'שלום עולם', 'مرحبا بالعالم', '  padded  ', "it's", '\\back\\slash', 'NA', 'null', '', 'a,b;c', '<b>&amp;</b>']
# every character but surrogates (not encodable as UTF-8), NUL included
TEXTS = st.one_of(st.sampled_from(NASTY), st.text(st.characters(blacklist_categories=('Cs',)), max_size=40))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(queries=st.lists(TEXTS, min_size=1, max_size=6))
def test_topics_file_round_trips(tmp_path, queries):
    from pyterrier_knowacq._util import write_jsonl
    from pyterrier_knowacq.leaderboard.data import _read_topics
    coll = tmp_path / 'coll'
    write_jsonl(coll / 'topics.jsonl', ({'qid': f'q{i}', 'query': q} for i, q in enumerate(queries)))
    assert _read_topics(coll) == {f'q{i}': q for i, q in enumerate(queries)}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(TEXTS.filter(lambda s: s != ''), min_size=1, max_size=5, unique=True))
def test_system_names_round_trip_through_aggregated_csv(tmp_path, names):
    """The runner writes pt.Experiment's frame with ``write_csv``; the leaderboard reads it back: names are unchanged."""
    import pandas as pd
    from pyterrier_knowacq._util import write_csv
    from pyterrier_knowacq.leaderboard.data import _read_csv
    path = tmp_path / 'aggregated.csv'
    write_csv(pd.DataFrame({'name': names, 'nDCG@10': [0.5] * len(names)}), path)
    assert _read_csv(path)['name'].tolist() == names


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(TEXTS, min_size=2, max_size=5))
def test_beir_texts_round_trip(tmp_path_factory, texts):
    """Queries and passages read from a BEIR folder are the texts in its JSON, byte for byte."""
    root = _beir(tmp_path_factory.mktemp('b'), [(f'd{i}', t) for i, t in enumerate(texts)],
                 [(f'q{i}', t) for i, t in enumerate(texts)], [(f'q{i}', f'd{i}', 1) for i in range(len(texts))])
    ds = BeirDataset(root)
    topics = ds.get_topics('test')
    assert dict(zip(topics['qid'], topics['query'])) == {f'q{i}': t for i, t in enumerate(texts)}
    assert ds.get_texts([f'd{i}' for i in range(len(texts))]) == texts


def test_experiment_and_leaderboard_keep_texts_exact(tmp_path, cache):
    """End to end: nasty query texts and system names survive `knowacq run` and the leaderboard's data."""
    from pyterrier_knowacq.experiments.runner import run_experiment
    from pyterrier_knowacq.leaderboard.build import build_site
    queries = ['say "hi" to cats', 'cat\u2028mouse', 'emoji 🐈 cat', 'חתול cat', 'tab\tcat']
    root = _beir(tmp_path / 'nasty', [('d1', 'cat'), ('d2', 'mouse cat'), ('d3', 'hi cat')],
                 [(f'q{i}', q) for i, q in enumerate(queries)], [(f'q{i}', 'd1', 1) for i in range(len(queries))])
    systems = {'BM25': 'bm25(k=3)', 'BM25 "quoted", k1=1.2 <b>': 'bm25(k=3, k1=1.2)', 'BM25\u2028b=0.8 🦀': 'bm25(k=3, b=0.8)'}
    import yaml
    config = {'name': 'nasty', 'dataset': {'beir': str(root), 'name': 'nasty'}, 'topics': ['test'],
              'systems': systems, 'baseline': 'BM25', 'measures': ['nDCG@10']}
    (tmp_path / 'nasty.yaml').write_text(yaml.safe_dump(config, allow_unicode=True))
    out = run_experiment(tmp_path / 'nasty.yaml', output=tmp_path / 'res')
    build_site([out], tmp_path / 'site')
    from pyterrier_knowacq.leaderboard.data import read_experiment
    exp = read_experiment(out, 'x', 'x')
    assert exp.collections[0].topics == {f'q{i}': q for i, q in enumerate(queries)}
    assert list(exp.collections[0].agg['name']) == list(systems)
    board = json.loads((tmp_path / 'site' / 'data' / 'leaderboard.json').read_text())
    assert sorted(r['system'] for t in board['tables'] for r in t['rows']) == sorted(systems)
    html = (tmp_path / 'site' / 'index.html').read_text()
    assert 'BM25 &#34;quoted&#34;, k1=1.2 &lt;b&gt;' in html or 'BM25 &quot;quoted&quot;, k1=1.2 &lt;b&gt;' in html
