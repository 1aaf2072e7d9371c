import numpy as np
import pandas as pd
import pyterrier as pt
import pytest
import torch

from pyterrier_knowacq import BiEncoder, CrossEncoder, KnowacqError

FRAME = pd.DataFrame({
    'qid': ['1', '1', '1', '2'], 'query': ['cats', 'cats', 'cats', 'a much longer query about dogs barking'],
    'docno': ['a', 'b', 'c', 'a'],
    'text': ['cats purr', 'dogs bark loudly at night when the moon is full', 'fish', 'cats purr'],
})


@pytest.fixture(scope='module')
def ce():
    return CrossEncoder.new('tiny-bert', pooling='mean', batch_size=2)


@pytest.fixture(scope='module')
def be():
    return BiEncoder.from_pretrained('tiny-bert', pooling='mean', batch_size=2)


def test_cross_encoder_scores_match_unbatched_forward(ce):
    out = ce(FRAME)
    assert {'score', 'rank'} <= set(out.columns) and len(out) == 4
    with torch.no_grad():
        for _, row in FRAME.iterrows():
            enc = ce.tokenizer(row['query'], row['text'], return_tensors='pt')
            ref = ce.model(**enc).item()
            got = out[(out.qid == row.qid) & (out.docno == row.docno)]['score'].item()
            assert got == pytest.approx(ref, abs=1e-5)


def test_cross_encoder_empty_frame_and_missing_columns(ce):
    empty = ce(FRAME.iloc[:0])
    assert empty.empty and {'score', 'rank'} <= set(empty.columns)
    with pytest.raises(Exception, match='text'):
        ce(FRAME.drop(columns=['text']))


def test_cross_encoder_round_trip_and_equality(ce, tmp_path):
    folder = ce.save(tmp_path / 'ce')
    assert (folder / 'head.safetensors').exists() and not list(folder.glob('*.bin'))
    again = CrossEncoder.from_pretrained(str(folder))
    np.testing.assert_allclose(again(FRAME)['score'], ce(FRAME)['score'], atol=1e-6)
    assert again == CrossEncoder.from_pretrained(str(folder)) and hash(again) == hash(CrossEncoder.from_pretrained(str(folder)))
    with pytest.raises(KnowacqError, match='not a cross-encoder'):
        CrossEncoder.from_pretrained('tiny-bert')


def test_sequence_classification_checkpoint_one_or_two_logits(tmp_path):
    from transformers import AutoModelForSequenceClassification
    from pyterrier_knowacq.models.backbones import load_tokenizer, resolve_model
    for labels in (1, 2):
        torch.manual_seed(0)
        clf = AutoModelForSequenceClassification.from_pretrained(resolve_model('tiny-bert'), num_labels=labels)
        clf.save_pretrained(tmp_path / f'clf{labels}')
        load_tokenizer('tiny-bert').save_pretrained(tmp_path / f'clf{labels}')
        scores = CrossEncoder.from_pretrained(str(tmp_path / f'clf{labels}'))(FRAME)['score']
        enc = load_tokenizer('tiny-bert')('cats', 'cats purr', return_tensors='pt')
        logits = clf.eval()(**enc).logits[0]
        expected = logits[0] if labels == 1 else logits[1] - logits[0]
        assert scores.iloc[0] == pytest.approx(expected.item(), abs=1e-5)


def test_biencoder_scorer_and_encoders(be):
    scored = be.scorer()(FRAME)
    q = be.encode_queries(['cats'])[0]
    d = be.encode_docs(['cats purr'])[0]
    assert scored[(scored.qid == '1') & (scored.docno == 'a')]['score'].item() == pytest.approx(float(q @ d), rel=1e-5)
    assert be.query_encoder()(FRAME[['qid', 'query']].drop_duplicates())['query_vec'].iloc[0].shape == (32,)
    assert be.encode_docs([]).shape == (0, 32)


def test_biencoder_flexindex_retrieval(be, tmp_path):
    import pyterrier_dr
    docs = [{'docno': f'd{i}', 'text': t} for i, t in enumerate(['cats purr', 'dogs bark', 'fish swim', 'birds sing'])]
    index = pyterrier_dr.FlexIndex(str(tmp_path / 'idx.flex'))
    (be.doc_encoder() >> index.indexer()).index(docs)
    res = (be.query_encoder() >> index.retriever(num_results=4))(pd.DataFrame({'qid': ['1'], 'query': ['dogs bark']}))
    assert len(res) == 4
    assert res.sort_values('rank')['docno'].iloc[0] == 'd1'  # identical text -> highest dot product under mean pooling


def test_biencoder_save_load_and_equality(be, tmp_path):
    folder = be.save(tmp_path / 'be')
    again = BiEncoder.from_pretrained(str(folder))
    assert again.pooling_name == 'mean'
    np.testing.assert_allclose(again.encode_docs(['cats purr']), be.encode_docs(['cats purr']), atol=1e-6)
    assert again.query_encoder() == BiEncoder.from_pretrained(str(folder)).query_encoder()
    assert BiEncoder.from_pretrained('minilm-l6').pooling_name == 'mean'  # read from sentence-transformers config


def test_decoder_last_token_pooling_independent_of_padding_side():
    enc = BiEncoder.from_pretrained('tiny-llama', pooling='last')
    texts = ['short', 'a much longer text with many more tokens in it']
    enc.tokenizer.padding_side = 'right'
    right = enc.encode_docs(texts)
    enc.tokenizer.padding_side = 'left'
    left = enc.encode_docs(texts)
    np.testing.assert_allclose(right, left, atol=1e-4)
    with pytest.raises(KnowacqError, match='cls'):
        BiEncoder.from_pretrained('tiny-llama', pooling='cls')


def test_pipeline_prefix_sharing_equality(msmarco):
    a = msmarco.run_transformer('bm25') >> msmarco.text_loader() >> BiEncoder.from_pretrained('tiny-bert').scorer()
    b = msmarco.run_transformer('bm25') >> msmarco.text_loader()
    assert a[0] == b[0] and a[1] == b[1]
