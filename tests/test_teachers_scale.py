"""Teachers and data at scale: RankGPT's released orderings converted to a teacher run (a fixture in the released format
written from the embedded DL19 slice), training on the queries a teacher covers, and a synthetic irds-like corpus of
100k passages whose docstore counts its look-ups (texts fetched in batches, the store opened once, no whole-corpus
dict, zero-hit queries skipped and counted)."""
import gzip
import json
import random
import zipfile

import pandas as pd
import pytest

from pyterrier_knowacq._util import KnowacqError
from pyterrier_knowacq.datasets.core import IrdsDataset, get_dataset, read_run
from pyterrier_knowacq.training.rankgpt_convert import convert_rankgpt, main, parse_permutation


# -- RankGPT release format ------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def rankgpt_fixture(tmp_path_factory):
    """5 DL19 queries with their BM25 top 10 (texts from the embedded corpus), permuted at random and written as
    ``marco-train-*.jsonl`` + ``marco-train-*-gpt3.5.json``; record 2 gains a passage that is in no corpus, and a 6th
    record's query is in no topic set."""
    ds = get_dataset('msmarco-passage')
    topics = ds.get_topics('dl19')
    run = ds.get_run('bm25', 'dl19')
    rng = random.Random(7)
    root = tmp_path_factory.mktemp('rankgpt')
    records, answers, expected = [], [], {}
    for qid in sorted(topics['qid'])[:5]:
        docnos = run[run['qid'] == qid].sort_values('rank')['docno'].tolist()
        docnos = [d for d, t in zip(docnos, ds.find_texts(docnos)) if t is not None][:10]
        texts = ds.get_texts(docnos)
        passages = [{'docid': d, 'title': '-', 'text': t, 'rank': r} for r, (d, t) in enumerate(zip(docnos, texts), 1)]
        order = list(range(len(passages)))
        rng.shuffle(order)
        expected[qid] = [docnos[k] for k in order]
        query = topics.set_index('qid').loc[qid, 'query']
        records.append({'query_id': f'train-{qid}', 'query': '  ' + query.replace(' ', '   ') + ' ',   # whitespace differs
                        'positive_passages': [], 'retrieved_passages': passages})
        answers.append(' > '.join(f'[{k + 1}]' for k in order))
    # an unmappable passage, ranked first by the teacher: dropped, the rest keep their order
    records[1]['retrieved_passages'].append({'docid': 'x', 'title': '-', 'text': 'no corpus holds this passage text'})
    n = len(records[1]['retrieved_passages'])
    answers[1] = f'[{n}] > ' + answers[1]
    # an unmappable query (its passages are in the corpus)
    records.append({'query': 'a query that is in no topic set', 'positive_passages': [],
                    'retrieved_passages': records[0]['retrieved_passages'][:3]})
    answers.append('[3] > [2] > [1]')
    jsonl = root / 'marco-train-fixture.jsonl'
    jsonl.write_text(''.join(json.dumps(r) + '\n' for r in records))
    perms = root / 'marco-train-fixture-gpt3.5.json'
    perms.write_text(json.dumps(answers))
    return {'dataset': ds, 'jsonl': jsonl, 'perms': perms, 'expected': expected, 'records': records,
            'answers': answers, 'root': root}


def _lists(path):
    run = read_run(path)
    return {q: g.sort_values('rank')['docno'].tolist() for q, g in run.groupby('qid')}


def test_convert_rankgpt_release_format(rankgpt_fixture, tmp_path):
    fx = rankgpt_fixture
    out = tmp_path / 'rankgpt.trec.gz'
    report = convert_rankgpt(fx['jsonl'], fx['dataset'], out, permutation=fx['perms'], split='dl19')
    assert _lists(out) == fx['expected']                 # rank order == the teacher's permutation
    assert report['records'] == 6 and report['queries_written'] == 5
    assert report['queries_unmapped'] == 1 and report['queries_mapped'] == 5
    assert report['passages_unmapped'] == 1 and report['passages'] == 50 + 1 + 3
    assert report['passages_mapped'] == 53 and report['permutations_repaired'] == 0
    assert '1 queries unmapped' in report['message'] and '53 of 54 passages mapped' in report['message']
    with gzip.open(out, 'rt') as f:
        first = f.readline().split()
    assert first[1] == 'Q0' and first[3] == '1' and first[5] == 'rankgpt-3.5'
    # every split by default gives the same run
    again = tmp_path / 'again.trec'
    convert_rankgpt(fx['jsonl'], fx['dataset'], again, permutation=fx['perms'])
    assert _lists(again) == fx['expected']


def test_converted_run_is_a_teacher_with_coverage(rankgpt_fixture, tmp_path):
    from pyterrier_knowacq.training.stages import _stage_items, validate_spec
    fx = rankgpt_fixture
    out = tmp_path / 'teacher.trec.gz'
    convert_rankgpt(fx['jsonl'], fx['dataset'], out, permutation=fx['perms'], split='dl19')
    ds = fx['dataset']
    train_qids = sorted(set(ds.get_qrels('dl19')['qid']))
    stage = {'loss': 'ranknet', 'steps': 1, 'data': {'teacher': str(out), 'list_length': 5, 'teacher_min_coverage': 0.1}}
    validate_spec({'backbone': 'tiny-bert', 'stages': [stage]})
    notes = {}
    items, size, _, _ = _stage_items(stage, ds, 'dl19', train_qids, 0, None, notes)
    assert sorted(tl.qid for tl in items) == sorted(fx['expected'])
    assert all(tl.docnos == fx['expected'][tl.qid] for tl in items)
    cov = notes['teacher_coverage']
    assert (cov['covered'], cov['total']) == (5, 43)
    assert cov['message'] == 'teacher covers 5 of 43 training queries (11.6%)'
    stage['data']['teacher_min_coverage'] = 0.5
    with pytest.raises(KnowacqError, match='below teacher_min_coverage 0.5'):
        _stage_items(stage, ds, 'dl19', train_qids, 0, None, {})
    with pytest.raises(KnowacqError, match='teacher_min_coverage'):
        validate_spec({'backbone': 'tiny-bert', 'stages': [dict(stage, data={'teacher': 'x', 'teacher_min_coverage': 2})]})


def test_convert_rankgpt_variants(rankgpt_fixture, tmp_path):
    fx = rankgpt_fixture
    ds = fx['dataset']
    # one JSON list, gzipped, with the ordering inside each record as 0-based positions
    recs = []
    for rec, answer in zip(fx['records'], fx['answers']):
        order, _ = parse_permutation(answer, len(rec['retrieved_passages']))
        recs.append(dict(rec, permutation=order))
    listed = tmp_path / 'records.json.gz'
    listed.write_bytes(gzip.compress(json.dumps(recs).encode()))
    out = tmp_path / 'a.trec'
    assert convert_rankgpt(listed, ds, out, split='dl19')['queries_written'] == 5
    assert _lists(out) == fx['expected']
    # passages already in ChatGPT's order, "content" instead of "text", zipped JSON lines
    ranked = []
    for rec, answer in zip(fx['records'], fx['answers']):
        order, _ = parse_permutation(answer, len(rec['retrieved_passages']))
        ps = [rec['retrieved_passages'][k] for k in order]
        ranked.append({'query': rec['query'], 'hits': [{'content': p['text']} for p in ps]})
    zipped = tmp_path / 'ranked.jsonl.zip'
    with zipfile.ZipFile(zipped, 'w') as z:
        z.writestr('ranked.jsonl', ''.join(json.dumps(r) + '\n' for r in ranked))
    out = tmp_path / 'b.trec'
    convert_rankgpt(zipped, ds, out, ranked=True, split='dl19')
    assert _lists(out) == fx['expected']
    # a passage whose text differs by case and mojibake maps by its loose key (and is counted)
    mangled = [dict(r, retrieved_passages=[dict(p) for p in r['retrieved_passages']]) for r in fx['records']]
    p0 = mangled[0]['retrieved_passages'][0]
    p0['text'] = p0['text'].upper().replace(' ', ' \u00e2\u20ac\u2122 ', 1)
    p0.pop('docid')
    loose = tmp_path / 'loose.jsonl'
    loose.write_text(''.join(json.dumps(r) + '\n' for r in mangled))
    report = convert_rankgpt(loose, ds, tmp_path / 'c.trec', permutation=fx['perms'], split='dl19')
    assert report['passages_loose'] == 1 and report['passages_unmapped'] == 1
    assert _lists(tmp_path / 'c.trec') == fx['expected']
    # answers RankGPT's way: repeats and out-of-range numbers dropped, unnamed passages appended in BM25 order
    assert parse_permutation('[2] > [2] > [9] > [1]', 3) == ([1, 0, 2], True)
    assert parse_permutation("I'm sorry, I cannot rank these", 2) == ([0, 1], True)
    assert parse_permutation([0, 2, 1], 3) == ([0, 2, 1], False) and parse_permutation([3, 1, 2], 3) == ([2, 0, 1], False)


def test_convert_rankgpt_errors_name_file_and_record(rankgpt_fixture, tmp_path, capsys):
    fx = rankgpt_fixture
    ds = fx['dataset']
    bad = tmp_path / 'bad.jsonl'
    bad.write_text(json.dumps(fx['records'][0]) + '\n' + json.dumps({'question_text': 'x', 'retrieved_passages': []}) + '\n')
    with pytest.raises(KnowacqError, match=r'bad.jsonl:2: has no "query" text'):
        convert_rankgpt(bad, ds, tmp_path / 'o.trec', ranked=True)
    with pytest.raises(KnowacqError, match=r'fixture.jsonl:1: has no ChatGPT ordering; pass the permutation file'):
        convert_rankgpt(fx['jsonl'], ds, tmp_path / 'o.trec')
    short = tmp_path / 'short.json'
    short.write_text(json.dumps(fx['answers'][:2]))
    with pytest.raises(KnowacqError, match='has 2 permutations but'):
        convert_rankgpt(fx['jsonl'], ds, tmp_path / 'o.trec', permutation=short)
    listed = tmp_path / 'listed.json'
    listed.write_text(json.dumps([fx['records'][0], {'query': 'q', 'retrieved_passages': [{'title': 't'}]}]))
    with pytest.raises(KnowacqError, match=r'listed.json: record 2: passage 1 has no text'):
        convert_rankgpt(listed, ds, tmp_path / 'o.trec', ranked=True)
    for e in (KnowacqError,):
        with pytest.raises(e):
            convert_rankgpt(tmp_path / 'missing.jsonl', ds, tmp_path / 'o.trec')
    # the entry point: the report on stdout, a one-line error and exit status 2 otherwise
    out = tmp_path / 'cli.trec.gz'
    assert main([str(fx['jsonl']), str(out), '--dataset', 'msmarco-passage', '--permutation', str(fx['perms']),
                 '--split', 'dl19', '--quiet']) == 0
    assert '5 teacher lists' in capsys.readouterr().out and _lists(out) == fx['expected']
    assert main([str(fx['jsonl']), str(out), '--dataset', 'msmarco-passage', '--quiet']) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and err.count('\n') == 1


# -- a synthetic irds-like corpus --------------------------------------------------------------------------------------

WORDS = ['alpha', 'beta', 'gamma', 'delta', 'epsilon', 'zeta', 'eta', 'theta', 'iota', 'kappa', 'lambda', 'mu', 'nu',
         'xi', 'omicron', 'pi', 'rho', 'sigma', 'tau', 'upsilon', 'phi', 'chi', 'psi', 'omega', 'red', 'green', 'blue',
         'cyan', 'magenta', 'yellow', 'black', 'white', 'river', 'mountain', 'forest', 'desert', 'ocean', 'island']


class _Doc:
    __slots__ = ('doc_id', 'text')

    def __init__(self, doc_id, text):
        self.doc_id, self.text = doc_id, text


class _Store:
    """ir_datasets' docstore stand-in: texts served from a file through an index of line offsets."""

    def __init__(self, path, offsets):
        self.path, self.offsets, self.calls = path, offsets, []

    def get_many(self, doc_ids):
        self.calls.append(len(doc_ids))
        out = {}
        with open(self.path, 'rb') as f:
            for d in doc_ids:
                pos = self.offsets.get(d)
                if pos is not None:
                    f.seek(pos)
                    out[d] = _Doc(d, f.readline().decode().rstrip('\n').split('\t', 1)[1])
        return out


class _Irds:
    """ir_datasets' dataset stand-in: docs_iter / docs_store / queries_iter / qrels_iter."""

    def __init__(self, path, offsets, queries, qrels):
        self.store = _Store(path, offsets)
        self.stores_opened = 0
        self.path, self.queries, self.qrels = path, queries, qrels

    def docs_store(self):
        self.stores_opened += 1
        return self.store

    def docs_iter(self):
        with open(self.path) as f:
            for line in f:
                d, t = line.rstrip('\n').split('\t', 1)
                yield _Doc(d, t)

    def queries_iter(self):
        from collections import namedtuple
        Q = namedtuple('Q', 'query_id text')
        return iter([Q(q, t) for q, t in self.queries])

    def qrels_iter(self):
        from collections import namedtuple
        R = namedtuple('R', 'query_id doc_id relevance')
        return iter([R(q, d, r) for q, d, r in self.qrels])


class SyntheticIrds(IrdsDataset):
    def __init__(self, path, offsets, queries, qrels, name='synthetic/train'):   # noqa: super().__init__ downloads
        self.name, self.irds_id, self.splits = f'irds:{name}', name, ()
        self._ds = _Irds(path, offsets, queries, qrels)

    def get_corpus_iter(self, verbose=False):
        self.corpus_iterations = getattr(self, 'corpus_iterations', 0) + 1
        return super().get_corpus_iter(verbose)


def _synthetic(root, n):
    rng = random.Random(3)
    path = root / 'docs.tsv'
    offsets, pos = {}, 0
    with open(path, 'wb') as f:
        for i in range(n):
            line = f'd{i}\t' + ' '.join(rng.choice(WORDS) for _ in range(8)) + f' w{i}\n'
            offsets[f'd{i}'] = pos
            f.write(line.encode())
            pos += len(line.encode())
    queries = [(f'q{i}', f'w{i * 7} {WORDS[i % len(WORDS)]}') for i in range(40)] + [('q-stop', 'the of and')]
    qrels = [(f'q{i}', f'd{i * 7}', 1) for i in range(40)] + [('q-stop', 'd1', 1)]
    return SyntheticIrds(path, offsets, queries, qrels)


@pytest.fixture(scope='module')
def big(tmp_path_factory):
    return _synthetic(tmp_path_factory.mktemp('irds-big'), 100_000)


def test_irds_texts_in_batches_store_opened_once_no_corpus_dict(big):
    store = big._ds.store
    docnos = [f'd{i}' for i in range(0, 100_000, 17)]
    texts = big.get_texts(docnos)
    assert len(texts) == len(docnos) and texts[1].endswith(' w17')
    again = big.get_texts(['d5', 'd3', 'd5'])
    assert again[0] == again[2] != again[1]
    assert store.calls[:2] == [len(docnos), 2]          # one get_many per call, repeated docnos asked once
    assert big._ds.stores_opened == 1                   # the docstore is opened once, not per look-up
    with pytest.raises(KnowacqError, match='refusing to load the whole corpus'):
        big._texts                                      # noqa: B018 - a whole-corpus dict is refused
    assert big.known_docnos() is None
    assert big.find_texts(['d1', 'nope'])[1] is None
    with pytest.raises(KnowacqError, match='1 docno'):
        big.get_texts(['d1', 'nope'])
    big.GET_MANY_BATCH = 1000
    try:
        store.calls.clear()
        big.get_texts(docnos)
        assert store.calls == [1000] * 5 + [len(docnos) - 5000]   # large look-ups are cut into bounded batches
    finally:
        del big.GET_MANY_BATCH


def test_teacher_scoring_fetches_texts_per_chunk(big, tmp_path, monkeypatch):
    import pyterrier as pt
    from pyterrier_knowacq.training.teachers import score_run
    monkeypatch.setenv('KNOWACQ_CACHE', str(tmp_path))
    run = pd.DataFrame([(f'q{i}', f'd{i * 7 + j}', 10 - j, j) for i in range(10) for j in range(5)],
                       columns=['qid', 'docno', 'score', 'rank'])
    ranker = pt.apply.doc_score(lambda r: float(len(r['text'])))
    big._ds.store.calls.clear()
    scored = score_run(ranker, big, run, None, depth=5, name='len', queries_per_chunk=4)
    assert len(scored) == 50 and big._ds.store.calls == [20, 20, 10]
    assert big._ds.stores_opened == 1


@pytest.fixture()
def small(tmp_path, monkeypatch):
    monkeypatch.setenv('KNOWACQ_CACHE', str(tmp_path / 'cache'))
    return _synthetic(tmp_path, 2000)


def test_training_groups_lazy_zero_hit_query_skipped_one_index(small, tmp_path):
    from pyterrier_knowacq.models.first_stage import named_run, pisa_index
    from pyterrier_knowacq.training.examples import _slice_index
    from pyterrier_knowacq.training.stages import _stage_items
    stage = {'loss': 'lce', 'steps': 1, 'data': {'run': 'bm25', 'depth': 10, 'negatives': 3}}
    qids = sorted(set(small.get_qrels()['qid']))
    notes = {}
    groups, size, _, _ = _stage_items(stage, small, None, qids, 0, small.known_docnos(), notes)
    fs = notes['first_stage']
    assert fs['no_first_stage_hits'] == 1 and fs['no_first_stage_hits_qids'] == ['q-stop'] and fs['queries'] == 41
    assert len(groups) == 40 and all(not g.texts for g in groups)   # ids only: no texts built up front
    assert small._ds.store.calls == []                              # no text was looked up to build them
    # a batch's texts: one batched look-up
    batch = [d for g in groups[:4] for d in g.positives + g.negatives[:3]]
    small.get_texts(batch)
    assert small._ds.store.calls == [len(set(batch))]
    # one BM25 index per corpus: training-time BM25 and extra data already in the corpus reuse it
    indexes = tmp_path / 'cache' / 'indexes'
    assert len([p for p in indexes.iterdir() if p.name.startswith('pisa-')]) == 1
    assert _slice_index(small, {'d3': small.get_texts(['d3'])[0]}).path == pisa_index(small).path
    named_run(small, 'bm25', None, depth=5)
    assert small.corpus_iterations == 1                              # built once, streamed once
    plus = _slice_index(small, {'extra-1': 'alpha beta outside the corpus'})
    assert 'plus' in str(plus.path) and small.corpus_iterations == 2
    with pytest.raises(KnowacqError, match='refusing'):
        small._texts                                                  # noqa: B018
