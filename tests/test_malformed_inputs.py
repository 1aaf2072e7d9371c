"""Every reader gives one line naming the file, the line, the problem and the fix (issue 11, point 3).

A table of malformed files (BEIR corpus/queries/qrels, TREC topics/qrels/runs, DPR JSON, experiment and training
YAML), each with the line its error must name and the fix wording; then a fuzz test (hypothesis) feeding random and
mutated files to the same readers: each must succeed or raise a one-line :class:`KnowacqError`, nothing else.
"""
import json

import pytest
import yaml

from pyterrier_knowacq._util import KnowacqError
from pyterrier_knowacq.datasets.core import BeirDataset
from pyterrier_knowacq.experiments.config import KEYS, check_config, load_config
from pyterrier_knowacq.datasets.readers import (iter_beir_corpus, read_beir_qrels, read_beir_queries, read_dpr_json, read_run,
                                       read_trec_qrels, read_trec_topics, read_tsv_topics)


def _load_experiment(path):
    return check_config(load_config(path), str(path))


def _train(path):
    from pyterrier_knowacq.training.stages import train_from_config
    return train_from_config(path)


def _beir_topics(path):
    """queries.jsonl read through a BEIR folder (the dataset API, not only the reader)."""
    root = path.parent
    (root / 'corpus.jsonl').write_text('{"_id": "d1", "text": "cats purr"}\n')
    (root / 'qrels').mkdir(exist_ok=True)
    (root / 'qrels' / 'test.tsv').write_text('query-id\tcorpus-id\tscore\nq1\td1\t1\n')
    return BeirDataset(root, 'mini').get_topics('test')


def _beir_docs(path):
    return list(iter_beir_corpus(path))


def _dpr_dumps(records):
    return json.dumps(records, indent=1)


DPR_OK = {'question': 'who wrote it', 'answers': ['x'], 'positive_ctxs': [{'title': 't', 'text': 'p'}],
          'hard_negative_ctxs': [{'title': 't', 'text': 'n'}], 'negative_ctxs': []}

EXPERIMENT = """\
name: tiny
dataset: msmarco-passage
topics: [dl19]
systems:
  BM25: run(name=bm25)
  BM25 >> tiny: run(name=bm25, k=5) >> text >> biencoder(model=tiny-bert, pooling=mean)
baseline: BM25
measures: [nDCG@10, RR(rel=2)@10]
"""

FOLDS = """\
name: ood
dataset: msmarco-passage
folds:
  - {train: dl20, test: dl19}
  - {train: dl20, test: test, test_dataset: scifact}
systems:
  BM25: bm25(k=5)
baseline: BM25
"""

TRAINING = """\
dataset: msmarco-passage
seed: 1
train_split: dl20
models:
  C:
    backbone: tiny-bert
    max_length: 48
    stages:
      - {loss: lce, data: {run: bm25, negatives: 3}, lr: 1.0e-4, steps: 2}
      - {loss: ranknet, data: {teacher: rankgpt-3.5}, lr: 1.0e-4, steps: 2}
"""


def _sub(text, old, new):
    assert old in text, old
    return text.replace(old, new, 1)


# (id, file name, content (str or bytes), reader, line the error names, fragments the message must hold)
CASES = [
    # -- BEIR queries.jsonl
    ('beir-queries-bad-json', 'queries.jsonl', '{"_id": "q1", "text": "cat"}\n{"_id": "q2" "text": "dog"}\n',
     _beir_topics, 2, ['not valid JSON (column 14', "Expecting ',' delimiter", 'one JSON object per line']),
    ('beir-queries-missing-id', 'queries.jsonl', '{"_id": "q1", "text": "cat"}\n\n{"text": "dog"}\n',
     read_beir_queries, 3, ['has no "_id"', 'give every line an "_id"']),
    ('beir-queries-missing-text', 'queries.jsonl', '{"_id": "q1", "query": "cat"}\n', read_beir_queries, 1,
     ['has no "text"', 'give every line a "text"']),
    ('beir-queries-not-object', 'queries.jsonl', '{"_id": "q1", "text": "cat"}\n["q2", "dog"]\n', read_beir_queries, 2,
     ['is a JSON list, not an object', 'one JSON object per line']),
    ('beir-queries-null-text', 'queries.jsonl', '{"_id": "q1", "text": null}\n', read_beir_queries, 1,
     ['"text" is a JSON null, not a string', 'write it as a string']),
    ('beir-queries-duplicate-id', 'queries.jsonl', '{"_id": "q1", "text": "a"}\n{"_id": "q2", "text": "b"}\n{"_id": "q1", "text": "c"}\n',
     read_beir_queries, 3, ['appears twice (first at line 1)', 'unique "_id"']),
    # -- BEIR corpus.jsonl
    ('beir-corpus-bad-json', 'corpus.jsonl', '{"_id": "d1", "text": "a"}\n{"_id": "d2", "text": "cut sho\n',
     _beir_docs, 2, ['not valid JSON', 'one JSON object per line']),
    ('beir-corpus-missing-id', 'corpus.jsonl', '{"id": "d1", "title": "T", "text": "a"}\n', _beir_docs, 1,
     ['document has no "_id"', 'give every line an "_id"']),
    ('beir-corpus-missing-text', 'corpus.jsonl', '{"_id": "d1", "text": "a"}\n{"_id": "d2", "title": "only a title"}\n',
     _beir_docs, 2, ['has no "text"', 'give every line a "text"']),
    ('beir-corpus-not-object', 'corpus.jsonl', '"just some text"\n', _beir_docs, 1, ['is a JSON string, not an object']),
    ('beir-corpus-id-object', 'corpus.jsonl', '{"_id": {"a": 1}, "text": "a"}\n', _beir_docs, 1,
     ['"_id" is {"a": 1}, not a non-empty string', 'write the id as a string']),
    # -- BEIR qrels/<split>.tsv
    ('beir-qrels-short-line', 'test.tsv', 'query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\n', read_beir_qrels, 3,
     ['has 2 tab-separated field(s), BEIR qrels have 3', 'query-id<TAB>corpus-id<TAB>score']),
    ('beir-qrels-non-numeric-label', 'test.tsv', 'query-id\tcorpus-id\tscore\nq1\td1\trelevant\n', read_beir_qrels, 2,
     ["score 'relevant' (the 3rd field) is not a number", 'integers such as 0, 1, 2']),
    ('beir-qrels-space-header', 'test.tsv', 'query-id corpus-id score\nq1 d1 1\n', read_beir_qrels, 1,
     ['has 1 tab-separated field(s), the header has 3', 'query-id<TAB>corpus-id<TAB>score']),
    ('beir-qrels-trec-layout', 'test.tsv', 'query-id\tcorpus-id\tscore\nq1 0 d1 1\n', read_beir_qrels, 2,
     ['looks like TREC qrels', 'query-id<TAB>corpus-id<TAB>score']),
    ('beir-qrels-duplicate', 'test.tsv', 'query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td1\t2\n', read_beir_qrels, 3,
     ['judged twice', 'first at line 2', 'one judgement per']),
    # -- TREC topics: msmarco-style qid<TAB>query and classic <top> files
    ('tsv-topics-no-tab', 'dl19.tsv', '1\twhat is a cat\n2 what is a dog\n', read_tsv_topics, 2,
     ['has no tab', 'qid<TAB>query text']),
    ('tsv-topics-empty-query', 'dl19.tsv', '1\twhat is a cat\n2\t  \n', read_tsv_topics, 2,
     ["topic '2' has an empty query", 'write the query text after the tab']),
    ('tsv-topics-duplicate-qid', 'dl19.tsv', '1\tcat\n2\tdog\n1\tfish\n', read_tsv_topics, 3,
     ["qid '1' appears twice (first at line 1)", 'unique qid']),
    ('trec-topics-unclosed', 'topics.401', '<top>\n<num> Number: 401\n<title> foreign minorities\n\n<top>\n<num> Number: 402\n'
     '<title> genetics\n</top>\n', read_trec_topics, 1, ['not closed before the next <top>', 'add </top> before line 5']),
    ('trec-topics-no-num', 'topics.401', '<top>\n<num> Number: 401\n<title> a\n</top>\n\n<top>\n<title> b\n</top>\n',
     read_trec_topics, 6, ['topic has no <num>', '<num> Number: 301']),
    # -- TREC qrels
    ('trec-qrels-short-line', 'dl19.qrels', '1 0 d1 1\n1 0 d2\n', read_trec_qrels, 2,
     ['has 3 field(s), a TREC qrels line has 4', 'qid 0 docno label']),
    ('trec-qrels-bad-label', 'dl19.qrels', '1 0 d1 1\n1 0 d2 high\n', read_trec_qrels, 2,
     ["label 'high' (the 4th field) is not an integer", 'integers such as 0, 1, 2']),
    # -- TREC runs
    ('trec-run-bad-score', 'bm25.trec', 'q1 Q0 d1 1 12.5 bm25\nq1 Q0 d2 2 high bm25\n', read_run, 2,
     ["score 'high' (the 5th field) is not a number", 'qid Q0 docno rank score tag']),
    ('trec-run-short-line', 'bm25.trec', 'q1 Q0 d1 1 12.5 bm25\n\nq1 Q0 d2 2 11.0\n', read_run, 3,
     ['has 5 field(s), a TREC run line has 6', 'qid Q0 docno rank score tag']),
    ('trec-run-duplicate-docno', 'bm25.trec', 'q1 Q0 d1 1 12.5 x\nq1 Q0 d2 2 11.0 x\nq1 Q0 d1 3 10.0 x\n', read_run, 3,
     ["docno 'd1' is ranked twice for query 'q1' (first at line 1)", 'one line per (query, docno)']),
    ('trec-run-not-utf8', 'bm25.trec', b'q1 Q0 d1 1 12.5 x\nq1 Q0 d\xff 2 11.0 x\n', read_run, 2,
     ['is not valid UTF-8', 're-encode the file as UTF-8']),
    # -- DPR retriever JSON
    ('dpr-bad-json', 'dpr.json', _dpr_dumps([DPR_OK, DPR_OK]).replace('"answers"', '"answers" ', 1).replace('"who wrote it",', '"who wrote it"', 1),
     read_dpr_json, 4, ['not valid JSON', "Expecting ',' delimiter", 'DPR retriever JSON is a list']),
    ('dpr-missing-question', 'dpr.json', _dpr_dumps([DPR_OK, {k: v for k, v in DPR_OK.items() if k != 'question'}]),
     read_dpr_json, _dpr_dumps([DPR_OK]).count('\n') + 1, ['record 2 lacks "question"', 'DPR retriever JSON is a list']),
    ('dpr-missing-positives', 'dpr.json', json.dumps([{k: v for k, v in DPR_OK.items() if k != 'positive_ctxs'}]),
     read_dpr_json, 1, ['record 1 lacks "positive_ctxs"', 'DPR retriever JSON is a list']),
    ('dpr-object-not-list', 'dpr.json', '\n' + json.dumps({'data': [DPR_OK]}), read_dpr_json, 2,
     ['is an object, not a list of records', 'DPR retriever JSON is a list']),
    ('dpr-bad-context', 'dpr.json', json.dumps([dict(DPR_OK, positive_ctxs=['just text'])]), read_dpr_json, 1,
     ['record 1: context 1 of "positive_ctxs" is not {"title": str, "text": str}']),
    # -- experiment YAML
    ('yaml-tab-indent', 'exp.yaml', _sub(EXPERIMENT, '  BM25: run', '\tBM25: run'), _load_experiment, 5,
     ['not valid YAML at line 5, column 1', 'indent with spaces']),
    ('yaml-unclosed-quote', 'exp.yaml', _sub(EXPERIMENT, 'BM25: run(name=bm25)', 'BM25: "run(name=bm25)'), _load_experiment, 5,
     ['not valid YAML', 'close the quote']),
    ('yaml-unclosed-bracket', 'exp.yaml', 'name: x\ndataset: [unclosed\n', _load_experiment, 2,
     ['exp.yaml:2:10:', 'not valid YAML', 'close the bracket']),
    ('yaml-top-level-list', 'exp.yaml', '- just\n- a list\n', _load_experiment, 1,
     ['must be a YAML mapping', '`name: my-experiment`']),
    ('yaml-empty', 'exp.yaml', '# nothing here\n', _load_experiment, 1, ['is empty', 'name:, dataset: and systems:']),
    ('yaml-unknown-key', 'exp.yaml', _sub(EXPERIMENT, 'topics:', 'topic:'), _load_experiment, 3,
     ["unknown key 'topic'", "did you mean 'topics'", 'allowed keys']),
    ('yaml-duplicate-key', 'exp.yaml', EXPERIMENT + 'systems: {X: bm25}\n', _load_experiment, 9,
     ["the key 'systems' is given twice", 'first at line 4', 'merge the two entries']),
    ('yaml-unknown-stage', 'exp.yaml', _sub(EXPERIMENT, 'biencoder(model', 'bi_encoder(model'), _load_experiment, 6,
     ["unknown stage 'bi_encoder'", 'registered stages']),
    ('yaml-stage-parameter', 'exp.yaml', _sub(EXPERIMENT, 'run(name=bm25, k=5)', 'run(nme=bm25, k=5)'), _load_experiment, 6,
     ["stage 'run' has no parameter 'nme'", 'it takes: name, k']),
    ('yaml-baseline-list', 'exp.yaml', _sub(EXPERIMENT, 'baseline: BM25', 'baseline: [BM25]'), _load_experiment, 7,
     ["baseline is ['BM25']", 'the name of one of the systems']),
    ('yaml-bad-measure', 'exp.yaml', _sub(EXPERIMENT, 'nDCG@10,', 'nDCG@ten,'), _load_experiment, 8,
     ["unknown measure 'nDCG@ten'", 'ir_measures names']),
    ('yaml-measure-bad-parameter', 'exp.yaml', _sub(EXPERIMENT, 'nDCG@10,', 'RR(arel=2)@10,'), _load_experiment, 8,
     ["unknown measure 'RR(arel=2)@10'", 'trec_eval names']),
    ('yaml-bad-date', 'exp.yaml', EXPERIMENT + 'seed: 2024-13-45\n', _load_experiment, 9,
     ["the value '2024-13-45' cannot be read", 'quote it']),
    ('yaml-fold-unknown-key', 'exp.yaml', _sub(FOLDS, 'test_dataset', 'test_datset'), _load_experiment, 5,
     ["fold 2: unknown key 'test_datset'", "did you mean 'test_dataset'"]),
    ('yaml-fold-no-test', 'exp.yaml', _sub(FOLDS, '{train: dl20, test: dl19}', '{train: dl20}'), _load_experiment, 4,
     ['fold 1 needs `test:`', '{train: dl20, test: dl19}']),
    ('yaml-missing-name', 'exp.yaml', _sub(EXPERIMENT, 'name: tiny\n', ''), _load_experiment, 1,
     ["missing required key 'name'", 'add `name:` at the top level']),
    # -- training YAML (knowacq train FILE): every error comes before any training starts
    ('train-yaml-syntax', 'train.yaml', _sub(TRAINING, 'max_length: 48', 'max_length 48\n  oops: [1'), _train, 7,
     ['not valid YAML', 'train.yaml:7:5:', "could not find expected ':'", "add ': ' after the key"]),
    ('train-missing-models', 'train.yaml', TRAINING.split('models:')[0], _train, 1,
     ['needs `models:`', 'write `dataset:`, `models:`']),
    ('train-unknown-spec-key', 'train.yaml', _sub(TRAINING, '    max_length: 48', '    max_len: 48'), _train, 7,
     ["model 'C'", "unknown model spec keys ['max_len']", "did you mean 'max_length'"]),
    ('train-stage-bad-loss', 'train.yaml', _sub(TRAINING, 'loss: ranknet', 'loss: rank-net'), _train, 10,
     ["stage 2: loss 'rank-net' is not one of", "did you mean 'ranknet'?", 'set `loss:` to one of them']),
    ('train-stage-no-teacher', 'train.yaml', _sub(TRAINING, 'data: {teacher: rankgpt-3.5}, ', ''), _train, 10,
     ['stage 2: a ranknet stage needs `data: {teacher:', 'rankgpt-3.5']),
    ('train-stage-bad-lr', 'train.yaml', _sub(TRAINING, 'lr: 1.0e-4, steps: 2}\n      - {loss: ranknet', 'lr: fast, steps: 2}\n      - {loss: ranknet'),
     _train, 9, ["stage 1: lr is 'fast'", 'write a number such as 2.0e-5']),
    ('train-unknown-split', 'train.yaml', _sub(TRAINING, 'train_split: dl20', 'train_split: dl21'), _train, 3,
     ["has no split 'dl21'", 'choose one of']),
    ('train-unknown-dataset', 'train.yaml', _sub(TRAINING, 'dataset: msmarco-passage', 'dataset: msmarco'), _train, 1,
     ["unknown dataset 'msmarco'", 'choose one of']),
    ('train-kind-colbert', 'train.yaml', _sub(TRAINING, '    backbone: tiny-bert', '    kind: colbert\n    backbone: tiny-bert'),
     _train, 6, ["model 'C' has kind 'colbert'", 'knowacq run']),
]


def test_enough_malformed_cases():
    assert len(CASES) >= 25 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize('name,filename,content,reader,line,fragments', CASES, ids=[c[0] for c in CASES])
def test_malformed_input_gives_one_line_with_file_line_and_fix(tmp_path, monkeypatch, name, filename, content, reader,
                                                               line, fragments):
    import pyterrier_knowacq.training.stages as stages
    monkeypatch.setattr(stages, 'train_model', lambda *a, **k: pytest.fail('training started before the file was checked'))
    path = tmp_path / filename
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding='utf-8')
    with pytest.raises(KnowacqError) as info:
        reader(path)
    msg = str(info.value)
    assert '\n' not in msg and '\r' not in msg, msg
    assert f'{path}:{line}:' in msg, msg
    for fragment in fragments:
        assert fragment in msg, msg


def test_good_files_still_read(tmp_path):
    text = 'a\u2028b\ttab "quoted" \U0001F600'
    (tmp_path / 'q.jsonl').write_text('\ufeff' + json.dumps({'_id': 7, 'text': text}, ensure_ascii=False) + '\n\n', encoding='utf-8')
    assert read_beir_queries(tmp_path / 'q.jsonl') == {'7': text}
    (tmp_path / 'q.tsv').write_text('1\ta\u2028b\x85c "d"\t e\r\n\n', newline='')
    assert read_tsv_topics(tmp_path / 'q.tsv').values.tolist() == [['1', 'a\u2028b\x85c "d"\t e']]
    (tmp_path / 'qrels.tsv').write_text('q1\td1\t1\nq1\td2\t0.0\n')  # no header: the first line is kept
    assert read_beir_qrels(tmp_path / 'qrels.tsv')['label'].tolist() == [1, 0]
    (tmp_path / 't.401').write_text('<top>\n<num> Number: 401\n<title> Topic: foreign\n minorities\n<desc> x\n</top>\n')
    assert read_trec_topics(tmp_path / 't.401').values.tolist() == [['401', 'foreign minorities']]
    (tmp_path / 'd.json').write_text(json.dumps([DPR_OK, DPR_OK]))
    assert len(read_dpr_json(tmp_path / 'd.json')) == 2
    (tmp_path / 'exp.yaml').write_text(EXPERIMENT)
    assert _load_experiment(tmp_path / 'exp.yaml')['name'] == 'tiny'


# -- fuzz ----------------------------------------------------------------------------------------------------------

hypothesis = pytest.importorskip('hypothesis')
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

FUZZ = settings(max_examples=200, deadline=None, database=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def _one_line_or_success(fn, path):
    try:
        fn(path)
    except KnowacqError as e:
        assert '\n' not in str(e) and '\r' not in str(e), str(e)
        assert str(path) in str(e) or 'does not exist' in str(e), str(e)


@pytest.fixture(scope='module')
def fuzz_dir(tmp_path_factory):
    return tmp_path_factory.mktemp('fuzz')


_YAML_CHARS = st.sampled_from(list('abcdn:-[]{},"\'#&*!|>%@`\t\n  ') + ['\n  ', ': ', '- ', '\u2028', '\x85', '\x07', '2024-13-45'])


def _mutate(text: str, ops) -> str:
    for kind, pos, piece in ops:
        pos = pos % (len(text) + 1)
        if kind == 'insert':
            text = text[:pos] + piece + text[pos:]
        elif kind == 'delete':
            text = text[:pos] + text[pos + len(piece) + 1:]
        elif kind == 'dup-line':
            lines = text.split('\n')
            i = pos % len(lines)
            text = '\n'.join(lines[:i + 1] + [lines[i]] + lines[i + 1:])
        else:  # swap the line at pos with the next one
            lines = text.split('\n')
            i = pos % len(lines)
            if i + 1 < len(lines):
                lines[i], lines[i + 1] = lines[i + 1], lines[i]
            text = '\n'.join(lines)
    return text


_OPS = st.lists(st.tuples(st.sampled_from(['insert', 'delete', 'dup-line', 'swap']), st.integers(0, 400),
                          st.lists(_YAML_CHARS, min_size=1, max_size=6).map(''.join)), min_size=1, max_size=4)

_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=True), st.text(max_size=8),
                    st.sampled_from(['bm25', 'run(name=bm25)', 'dl19', 'dl20', 'test', 'scifact', 'nDCG@10', 'BM25',
                                     'ce(model=x)', 'cross-encoder', 'colbert', 'beir:/nowhere', 'irds:nope']))
_VALUE = st.recursive(_SCALAR, lambda kids: st.one_of(st.lists(kids, max_size=3),
                                                      st.dictionaries(st.sampled_from(['pipeline', 'collections', 'tags',
                                                                                       'train', 'test', 'test_dataset',
                                                                                       'measures', 'kind', 'x', 'BM25']),
                                                                      kids, max_size=3)), max_leaves=8)
_CONFIG = st.dictionaries(st.sampled_from(sorted(KEYS) + ['topic', 'x']), _VALUE, max_size=8)


@FUZZ
@given(ops=_OPS)
def test_fuzz_mutated_experiment_yaml(fuzz_dir, ops):
    path = fuzz_dir / 'mutated.yaml'
    path.write_text(_mutate(FOLDS if len(ops) % 2 else EXPERIMENT, ops), encoding='utf-8')
    _one_line_or_success(_load_experiment, path)


@FUZZ
@given(text=st.lists(_YAML_CHARS, max_size=40).map(''.join))
def test_fuzz_random_yaml_text(fuzz_dir, text):
    path = fuzz_dir / 'random.yaml'
    path.write_text(text, encoding='utf-8')
    _one_line_or_success(_load_experiment, path)


@FUZZ
@given(config=_CONFIG, base=st.booleans())
def test_fuzz_random_yaml_structures(fuzz_dir, config, base):
    if base:  # a mostly valid experiment with random values
        config = dict(yaml.safe_load(EXPERIMENT), **config)
    path = fuzz_dir / 'structure.yaml'
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding='utf-8')
    _one_line_or_success(_load_experiment, path)


_FIELD = st.one_of(st.sampled_from(['q1', 'd1', '0', '1', '2', '-1', '1.5', 'nan', 'inf', 'Q0', '', ' ', 'x y',
                                    '<top>', '</top>', '<num> Number: 1', '<title> t', '\u2028', '\x85', '{"_id": 1}']),
                   st.text(max_size=5))
_LINE = st.lists(_FIELD, max_size=7).flatmap(lambda fs: st.sampled_from(['\t', ' ', '  ']).map(lambda sep: sep.join(fs)))
_FILE = st.lists(_LINE, max_size=8).map('\n'.join)


@FUZZ
@given(content=_FILE, raw=st.binary(max_size=12))
def test_fuzz_topic_and_qrels_readers(fuzz_dir, content, raw):
    path = fuzz_dir / 'data.txt'
    for data in (content.encode('utf-8', 'surrogatepass'), raw + b'\n' + content.encode('utf-8', 'surrogatepass')):
        path.write_bytes(data)
        for reader in (read_tsv_topics, read_trec_topics, read_trec_qrels, read_beir_qrels, read_run, read_beir_queries):
            _one_line_or_success(reader, path)


def test_date_like_stage_parameter_stays_text():
    """`run(name=2024-13-45)` once crashed YAML's date reader; a run name that looks like a date is text."""
    from pyterrier_knowacq.experiments.expressions import parse_pipeline
    assert [s.params['name'] for s in parse_pipeline('run(name=2024-13-45) >> run(name=2024-01-31)')] == \
        ['2024-13-45', '2024-01-31']
