import pytest
import torch

from pyterrier_knowacq.models.backbones import load_encoder
from pyterrier_knowacq.models.packed import packed_hidden_states, supports_packing


@pytest.fixture
def packed_calls(monkeypatch):
    """A list that grows by one on every packed forward (so a test can assert the packed path was taken)."""
    import pyterrier_knowacq.models.packed as packed
    calls = []
    monkeypatch.setattr(packed, 'packed_hidden_states', lambda *a, **k: calls.append(1) or packed_hidden_states(*a, **k))
    return calls


@pytest.mark.parametrize('side', ['right', 'left'])
def test_packed_equals_the_padded_forward(side):
    encoder, tok = load_encoder('tiny-bert')
    encoder.eval()
    tok.padding_side = side
    texts = ['a cat sat on the mat, purring.', 'dogs bark', 'the quick brown fox jumps over the lazy dog again and again']
    enc = tok(texts, padding=True, return_tensors='pt')
    with torch.inference_mode():
        ref = encoder(input_ids=enc['input_ids'], attention_mask=enc['attention_mask'])[0]
        got = packed_hidden_states(encoder, enc['input_ids'], enc['attention_mask'])
    mask = enc['attention_mask'].bool()
    assert supports_packing(encoder)
    torch.testing.assert_close(got[mask], ref[mask], atol=1e-5, rtol=1e-5)
    assert got[~mask].abs().sum() == 0


def test_out_mask_keeps_only_the_asked_positions():
    encoder, tok = load_encoder('tiny-bert')
    encoder.eval()
    enc = tok(['one, two; three.', 'four five'], padding=True, return_tensors='pt')
    out = enc['attention_mask'].bool().clone()
    out[:, 2] = False
    with torch.inference_mode():
        ref = encoder(**{k: enc[k] for k in ('input_ids', 'attention_mask')})[0]
        got = packed_hidden_states(encoder, enc['input_ids'], enc['attention_mask'], out_mask=out)
    torch.testing.assert_close(got[out], ref[out], atol=1e-5, rtol=1e-5)
    assert got[~out].abs().sum() == 0


def test_training_mode_and_decoders_use_the_standard_forward():
    encoder, _ = load_encoder('tiny-bert')
    encoder.train()
    assert not supports_packing(encoder)
    decoder, _ = load_encoder('tiny-llama')
    assert not supports_packing(decoder.eval())


@pytest.mark.parametrize('pooling', ['cls', 'mean', 'segment-product'])
def test_cross_encoder_scores_are_unchanged_by_packing(pooling, packed_calls, monkeypatch):
    import pyterrier_knowacq.models.packed as packed
    from pyterrier_knowacq.models.crossencoder import CrossEncoder
    ce = CrossEncoder.new('tiny-bert', pooling=pooling, seed=0)
    q = ['cats', 'what do dogs eat', 'fish']
    d = ['a cat purrs, sleeps and eats.', 'dogs eat meat and kibble', 'goldfish swim in a bowl of water all day']
    packed_scores = ce.score_pairs(q, d)
    assert packed_calls, 'scoring did not take the packed path'
    monkeypatch.setattr(packed, 'supports_packing', lambda encoder: False)
    torch.testing.assert_close(torch.as_tensor(packed_scores), torch.as_tensor(ce.score_pairs(q, d)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('pooling', ['cls', 'mean'])
def test_bi_encoder_vectors_are_unchanged_by_packing(pooling, packed_calls, monkeypatch):
    import numpy as np
    import pyterrier_knowacq.models.packed as packed
    from pyterrier_knowacq.models.biencoder import BiEncoder
    model = BiEncoder.from_pretrained('tiny-bert', pooling=pooling)
    texts = ['a cat purrs', 'dogs eat meat and kibble, mostly', 'x']
    got = model.encode_docs(texts)
    assert packed_calls, 'encoding did not take the packed path'
    monkeypatch.setattr(packed, 'supports_packing', lambda encoder: False)
    np.testing.assert_allclose(got, model.encode_docs(texts), atol=1e-5)


def test_sequence_classification_checkpoints_score_the_same_packed(tmp_path, packed_calls, monkeypatch):
    import pyterrier_knowacq.models.packed as packed
    from transformers import AutoModelForSequenceClassification
    from pyterrier_knowacq.models.backbones import load_tokenizer, resolve_model
    from pyterrier_knowacq.models.crossencoder import CrossEncoder
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(resolve_model('tiny-bert'), num_labels=1).save_pretrained(tmp_path)
    load_tokenizer('tiny-bert').save_pretrained(tmp_path)
    ce = CrossEncoder.from_pretrained(str(tmp_path))
    q, d = ['cats', 'dogs eat what'], ['a cat purrs, sleeps.', 'dogs eat meat and kibble and more meat']
    got = ce.score_pairs(q, d)
    assert packed_calls
    monkeypatch.setattr(packed, 'supports_packing', lambda encoder: False)
    torch.testing.assert_close(torch.as_tensor(got), torch.as_tensor(ce.score_pairs(q, d)), atol=1e-5, rtol=1e-5)


def test_colbert_document_vectors_are_unchanged_by_packing(packed_calls, monkeypatch):
    import pyterrier_knowacq.models.packed as packed
    from pyterrier_knowacq.models.colbert import ColBERTModel
    model = ColBERTModel.new('tiny-bert', dim=16, seed=0).eval()
    ids, mask = model.tokenize_docs(['a cat, purring; sleeps.', 'dogs bark at the postman every day'])
    with torch.inference_mode():
        got, keep = model.encode_docs(ids, mask)
        assert packed_calls, 'ColBERT document encoding did not take the packed path'
        monkeypatch.setattr(packed, 'supports_packing', lambda encoder: False)
        want, keep_ref = model.encode_docs(ids, mask)
    assert torch.equal(keep, keep_ref) and not keep.all()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
