"""Edge cases shared by every transformer: empty input, missing text, missing id columns, and encoding each distinct
document (cross-encoder: each distinct pair) once per call."""
import warnings

import numpy as np
import pandas as pd
import pyterrier as pt
import pytest

from pyterrier_knowacq import BiEncoder, CrossEncoder
from pyterrier_knowacq._util import KnowacqError
from pyterrier_knowacq.models.colbert import ColBERT, ColBERTModel

QUERIES = ['cats', 'dogs barking at night', 'pets']
DOCS = ['cats purr', 'dogs bark loudly at night when the moon is full', 'fish', 'a cat chases a mouse around the house']


def _run():
    """Every query retrieves every document: each docno appears len(QUERIES) times."""
    rows = [(str(q), query, f'd{d}', text) for q, query in enumerate(QUERIES) for d, text in enumerate(DOCS)]
    return pd.DataFrame(rows, columns=['qid', 'query', 'docno', 'text'])


@pytest.fixture(scope='module')
def be():
    return BiEncoder.from_pretrained('tiny-bert', pooling='mean', batch_size=3)


@pytest.fixture(scope='module')
def ce():
    return CrossEncoder.new('tiny-bert', pooling='mean', batch_size=3)


@pytest.fixture(scope='module')
def colbert_model():
    return ColBERTModel.new('tiny-bert', dim=16, seed=3, doc_maxlen=24)


@pytest.fixture(scope='module')
def transformers(be, ce, colbert_model):
    """name -> (transformer, the frame it takes)."""
    run = _run()
    return {'bi-encoder scorer': (be.scorer(), run), 'query_encoder': (be.query_encoder(), run[['qid', 'query']]),
            'doc_encoder': (be.doc_encoder(), run[['docno', 'text']]), 'cross-encoder': (ce, run),
            'ColBERT scorer': (ColBERT(colbert_model, batch_size=3), run)}


SCORERS = ['bi-encoder scorer', 'cross-encoder', 'ColBERT scorer']
ALL = SCORERS + ['query_encoder', 'doc_encoder']


@pytest.mark.parametrize('name', ALL)
def test_empty_input_gives_the_dtypes_of_non_empty_input(transformers, name):
    transformer, frame = transformers[name]
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        full, empty = transformer(frame), transformer(frame.iloc[:0])
    assert len(empty) == 0
    assert empty.dtypes.astype(str).to_dict() == full.dtypes.astype(str).to_dict()
    if name in SCORERS:
        assert full['score'].dtype == np.float64 and full['rank'].dtype == np.int64


@pytest.mark.parametrize('missing', [None, float('nan')])
@pytest.mark.parametrize('name', SCORERS)
def test_missing_text_raises_one_error_naming_text_loader(transformers, name, missing):
    transformer, frame = transformers[name]
    frame = frame.astype({'text': object})
    frame.loc[[1, 5], 'text'] = missing
    with pytest.raises(KnowacqError) as err:
        transformer(frame)
    assert str(err.value).startswith(f"2 rows have no text (first: qid '0', docno 'd1'); add dataset.text_loader() "
                                     f"before the {name}: bm25 >> ds.text_loader() >> ")


def test_doc_encoder_and_query_encoder_refuse_missing_text(transformers):
    for name, column in (('doc_encoder', 'text'), ('query_encoder', 'query')):
        transformer, frame = transformers[name]
        frame = frame.astype({column: object})
        frame.loc[2, column] = None
        with pytest.raises(KnowacqError, match=f'1 row has no {column} '):
            transformer(frame)


@pytest.mark.parametrize('name', SCORERS)
def test_missing_query_text_is_refused(transformers, name):
    transformer, frame = transformers[name]
    frame = frame.astype({'query': object})
    frame.loc[0, 'query'] = None
    with pytest.raises(KnowacqError, match=r"1 row has no query \(first: qid '0', docno 'd0'\)"):
        transformer(frame)


@pytest.mark.parametrize('name,column', [(s, c) for s in SCORERS for c in ('qid', 'docno')]
                         + [('query_encoder', 'qid'), ('doc_encoder', 'docno')])
def test_missing_id_column_gives_pyterrier_validation_error(transformers, name, column):
    transformer, frame = transformers[name]
    with pytest.raises(pt.validate.InputValidationError, match=column):
        transformer(frame.drop(columns=column))


def _count_rows(monkeypatch, owner, attr, size=lambda texts, *_: len(texts)):
    """Wrap ``owner.attr`` so that every call appends ``size(*positional arguments)`` to the returned list."""
    counts, original = [], getattr(owner, attr)

    def wrapper(*args, **kwargs):
        counts.append(size(*args))
        return original(*args, **kwargs)
    monkeypatch.setattr(owner, attr, wrapper)
    return counts


def test_biencoder_encodes_each_distinct_document_once(be, monkeypatch):
    from pyterrier_dr.biencoder import BiDocEncoder, BiQueryEncoder
    run = _run()
    docs = _count_rows(monkeypatch, be, 'encode_docs')
    queries = _count_rows(monkeypatch, be, 'encode_queries')
    try:
        be.dedup = False
        per_row = be.scorer()(run)
        assert sum(docs) == len(run) and sum(queries) == len(QUERIES)
        # without dedup: bit for bit pyterrier-dr's scorer (its own encoders, the per-row dot product)
        ref = (BiQueryEncoder(be)(run)['query_vec'] * BiDocEncoder(be)(run)['doc_vec']).apply(np.sum)
        np.testing.assert_array_equal(per_row['score'].to_numpy(), ref.to_numpy().astype(np.float64))
        docs.clear(), queries.clear()
        be.dedup = True
        deduped = be.scorer()(run)
        assert sum(docs) == len(DOCS) and sum(queries) == len(QUERIES)
        docs.clear()
        encoded = be.doc_encoder()(run[['docno', 'text']])
        assert sum(docs) == len(DOCS) and len(encoded) == len(run)
    finally:
        be.dedup = True
    pd.testing.assert_frame_equal(deduped[['qid', 'docno']], run[['qid', 'docno']])
    np.testing.assert_allclose(deduped['score'], per_row['score'], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(deduped['rank'], per_row['rank'])
    np.testing.assert_allclose(np.stack(encoded['doc_vec']), be.encode_docs(run['text'].tolist()), atol=1e-5)


def test_biencoder_scorer_uses_precomputed_vectors(be):
    run = _run()
    with_vectors = be.doc_encoder()(be.query_encoder()(run)).drop(columns=['query', 'text'])
    np.testing.assert_allclose(be.scorer()(with_vectors)['score'], be.scorer()(run)['score'], atol=1e-6)


def test_cross_encoder_scores_each_distinct_pair_once(ce, monkeypatch):
    import pyterrier_knowacq.models.crossencoder as module
    run = _run()
    # the same topics under a second set of qids: every (query, text) pair appears twice
    doubled = pd.concat([run, run.assign(qid=run['qid'] + '-again')], ignore_index=True)
    counted = _count_rows(monkeypatch, module, 'run_sorted', size=lambda fn, tokenizer, enc, *_: len(enc['input_ids']))
    per_row = CrossEncoder(ce.model, ce.tokenizer, batch_size=3, dedup=False)(doubled)
    assert sum(counted) == len(doubled)
    counted.clear()
    deduped = ce(doubled)
    assert sum(counted) == len(run)
    pd.testing.assert_frame_equal(deduped[['qid', 'docno']], doubled[['qid', 'docno']])
    np.testing.assert_allclose(deduped['score'], per_row['score'], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(deduped['score'].to_numpy()[:len(run)], deduped['score'].to_numpy()[len(run):])


def test_colbert_encodes_each_distinct_document_once(colbert_model, monkeypatch):
    run = _run()
    encoded = _count_rows(monkeypatch, colbert_model, 'encode_docs', size=lambda ids, *_: ids.shape[0])
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        per_row = ColBERT(colbert_model, batch_size=3, dedup=False)(run)
        assert sum(encoded) == len(run)
        encoded.clear()
        deduped = ColBERT(colbert_model, batch_size=3)(run)
    assert sum(encoded) == len(DOCS)
    pd.testing.assert_frame_equal(deduped[['qid', 'docno']], run[['qid', 'docno']])
    np.testing.assert_allclose(deduped['score'], per_row['score'], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(deduped['rank'], per_row['rank'])


@pytest.mark.parametrize('name', SCORERS)
def test_input_without_repeats_scores_exactly_as_the_per_row_path(transformers, name):
    transformer, _ = transformers[name]
    run = _run().iloc[[0, 1, 6, 11]]                  # every document once: (0, d0), (0, d1), (1, d2), (2, d3)
    model = getattr(transformer, 'bi_encoder_model', transformer)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        try:
            model.dedup = False
            per_row = transformer(run)
        finally:
            model.dedup = True
        deduped = transformer(run)
    np.testing.assert_array_equal(deduped['score'].to_numpy(), per_row['score'].to_numpy())
