import json

import pandas as pd

from pyterrier_knowacq.models.first_stage import PisaBM25


def test_pisa_bm25_ranks_and_caches(beir_folder, tmp_path, monkeypatch):
    monkeypatch.setenv('KNOWACQ_CACHE', str(tmp_path / 'cache'))
    from pyterrier_knowacq.datasets.core import BeirDataset
    ds = BeirDataset(beir_folder, 'mini')
    bm25 = PisaBM25(ds, num_results=3)
    res = bm25(ds.get_topics())
    top = res[res.qid == 'q2'].sort_values('rank')['docno'].iloc[0]
    assert top == 'd2'
    assert set(res.columns) >= {'qid', 'query', 'docno', 'score', 'rank'}
    assert bm25 == PisaBM25(ds, num_results=3) and hash(bm25) == hash(PisaBM25(ds, num_results=3))
    assert bm25 != PisaBM25(ds, num_results=4)
    empty = bm25(pd.DataFrame(columns=['qid', 'query']))
    assert empty.empty and {'docno', 'score', 'rank'} <= set(empty.columns)


def test_pisa_index_rebuilt_when_corpus_changes(beir_folder, tmp_path, monkeypatch):
    import os
    import time
    monkeypatch.setenv('KNOWACQ_CACHE', str(tmp_path / 'cache'))
    from pyterrier_knowacq.datasets.core import BeirDataset
    ds = BeirDataset(beir_folder, 'mini2')
    q = pd.DataFrame({'qid': ['x'], 'query': ['zebra']})
    assert PisaBM25(ds)(q).empty
    with open(beir_folder / 'corpus.jsonl', 'a') as f:
        f.write(json.dumps({'_id': 'd6', 'title': '', 'text': 'a zebra has stripes'}) + '\n')
    later = time.time() + 5
    os.utime(beir_folder / 'corpus.jsonl', (later, later))
    ds = BeirDataset(beir_folder, 'mini2')
    assert PisaBM25(ds)(q)['docno'].tolist() == ['d6']


def test_named_run_reads_a_file_ships_or_falls_back_to_bm25(beir_folder, tmp_path, monkeypatch):
    import pytest
    from pyterrier_knowacq._util import KnowacqError
    from pyterrier_knowacq.datasets.core import BeirDataset
    from pyterrier_knowacq.models.first_stage import named_run
    monkeypatch.setenv('KNOWACQ_CACHE', str(tmp_path / 'cache'))
    ds = BeirDataset(beir_folder, 'mini3')
    run_file = tmp_path / 'teacher.run'
    run_file.write_text('q1 Q0 d5 1 9.0 t\nq1 Q0 d1 2 8.0 t\n')
    assert named_run(ds, str(run_file), 'test')['docno'].tolist() == ['d5', 'd1']
    bm25 = named_run(ds, 'bm25', 'test', topics=ds.get_topics('test').head(1), depth=2)
    assert set(bm25['qid']) == {'q1'} and len(bm25) == 2
    with pytest.raises(KnowacqError):
        named_run(ds, 'no-such-run', 'test')
