import gzip

import ir_measures
import pandas as pd
import pyterrier as pt
import pytest

from pyterrier_knowacq import KnowacqError, get_dataset
from pyterrier_knowacq.datasets.core import BeirDataset, read_run

NDCG10 = ir_measures.parse_measure('nDCG@10')


@pytest.mark.parametrize('split,expected', [('dl19', 0.5058), ('dl20', 0.4796)])
def test_official_bm25_run_reproduces_published_ndcg(msmarco, split, expected):
    res = pt.Experiment([msmarco.run_transformer('bm25')], msmarco.get_topics(split), msmarco.get_qrels(split), [NDCG10])
    assert res['nDCG@10'].iloc[0] == pytest.approx(expected, abs=5e-5)


def test_embedded_counts(msmarco):
    assert len(msmarco.get_topics('dl19')) == 43 and len(msmarco.get_topics('dl20')) == 54
    assert len(msmarco.get_qrels('dl19')) == 9260
    assert sum(1 for _ in msmarco.get_corpus_iter()) == 31362
    counts = {n: len(get_dataset(n).get_topics('test')) for n in ('scifact', 'nfcorpus', 'vaswani', 'cranfield')}
    assert counts == {'scifact': 300, 'nfcorpus': 323, 'vaswani': 93, 'cranfield': 225}
    assert len(get_dataset('nfcorpus').get_qrels('train')['qid'].unique()) == 2590
    assert len(get_dataset('msmarco-passage-train').get_topics()) == 620


def test_teacher_orderings_and_text_loader(msmarco):
    teacher = msmarco.get_run('rankgpt-3.5:run2', 'dl19')
    assert teacher.groupby('qid').size().max() == 100
    assert teacher.groupby('qid')['rank'].min().eq(0).all()
    frame = (msmarco.run_transformer('tasb', k=3) >> msmarco.text_loader())(msmarco.get_topics('dl20').head(2))
    assert len(frame) == 6 and frame['text'].str.len().gt(0).all()


def test_run_transformer_errors_on_uncovered_topics(msmarco):
    with pytest.raises(KnowacqError, match='no results'):
        msmarco.run_transformer('bm25')(pd.DataFrame({'qid': ['nope'], 'query': ['x']}))


def test_text_loader_names_missing_docnos(msmarco):
    with pytest.raises(KnowacqError, match='no text'):
        msmarco.text_loader()(pd.DataFrame({'qid': ['1'], 'query': ['x'], 'docno': ['not-a-pid']}))


def test_text_loader_requires_docno(msmarco):
    with pytest.raises(Exception, match='docno'):
        msmarco.text_loader()(pd.DataFrame({'qid': ['1'], 'query': ['x']}))


def test_beir_folder(beir_folder):
    ds = get_dataset(f'beir:{beir_folder}')
    assert ds.splits == ('test',)
    assert ds.get_topics().set_index('qid')['query'].to_dict() == {'q1': 'cat', 'q2': 'dog barking'}
    assert ds.get_texts(['d2']) == ['Dogs dogs bark at the postman']
    assert ds.get_qrels()['label'].tolist() == [1, 2, 1]


def test_bad_names_and_splits(tmp_path):
    with pytest.raises(KnowacqError, match='unknown dataset'):
        get_dataset('msmarco')
    with pytest.raises(KnowacqError, match='no split'):
        get_dataset('scifact').get_topics('dev')
    with pytest.raises(KnowacqError, match='does not exist'):
        BeirDataset(tmp_path / 'missing')


def test_non_utf8_run_file_gives_clear_error(tmp_path):
    path = tmp_path / 'bad.trec'
    path.write_bytes(b'1 Q0 d\xff\xfe 1 3.0 tag\n')
    with pytest.raises(KnowacqError, match='UTF-8'):
        read_run(path)


def test_gzipped_run_files_read_transparently(tmp_path):
    path = tmp_path / 'run.trec.gz'
    with gzip.open(path, 'wt') as f:
        f.write('q1 Q0 d2 1 1.5 x\nq1 Q0 d1 2 2.5 x\n')
    run = read_run(tmp_path / 'run.trec')
    assert run['docno'].tolist() == ['d1', 'd2'] and run['rank'].tolist() == [0, 1]
