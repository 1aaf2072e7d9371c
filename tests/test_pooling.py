import pytest
import torch

from pyterrier_knowacq.models.pooling import get_pooling, last_token_index


def _batch():
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    return hidden, right


def test_cls_takes_first_token():
    hidden, mask = _batch()
    assert torch.equal(get_pooling('cls')(hidden, mask), hidden[:, 0])


def test_mean_ignores_padding():
    hidden, mask = _batch()
    out = get_pooling('mean')(hidden, mask)
    assert torch.allclose(out[0], hidden[0, :3].mean(0))
    assert torch.allclose(out[1], hidden[1, :2].mean(0))


def test_last_is_true_last_token_under_right_and_left_padding():
    hidden, right = _batch()
    out = get_pooling('last')(hidden, right)
    assert torch.equal(out[0], hidden[0, 2]) and torch.equal(out[1], hidden[1, 1])
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
    assert last_token_index(left).tolist() == [3, 3]
    assert last_token_index(torch.ones(2, 4, dtype=torch.long)).tolist() == [3, 3]


def test_unknown_pooling_names_the_choices():
    with pytest.raises(ValueError, match='cls'):
        get_pooling('max')


def test_segment_product_is_the_product_of_normalised_segment_means():
    hidden = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    segments = torch.tensor([[0, 0, 1, 1, 0], [0, 1, 1, 1, 1]])
    out = get_pooling('segment-product')(hidden, mask, segments)
    q = torch.nn.functional.normalize(hidden[0, :2].mean(0), dim=0)
    p = torch.nn.functional.normalize(hidden[0, 2:4].mean(0), dim=0)
    assert torch.allclose(out[0], q * p * 4, atol=1e-6)
    # the initial head turns it into scale x cosine of the two segment means
    head = torch.nn.Linear(4, 1)
    get_pooling('segment-product').init_head(head)
    assert torch.allclose(head(out[:1]).squeeze(), 20.0 * torch.dot(q, p), atol=1e-5)
    with pytest.raises(ValueError, match='token_type_ids'):
        get_pooling('segment-product')(hidden, mask)


def test_segment_product_cross_encoder_starts_from_the_backbone_similarity():
    from pyterrier_knowacq.models.backbones import load_encoder
    from pyterrier_knowacq.models.crossencoder import CrossEncoder
    from pyterrier_knowacq._util import KnowacqError
    ce = CrossEncoder.new('tiny-bert', pooling='segment-product')
    encoder, tok = load_encoder('tiny-bert')
    enc = tok(['cats purr'], ['a cat purrs when content'], return_tensors='pt')
    with torch.no_grad():
        hidden = encoder(**enc).last_hidden_state[0]
    types = enc['token_type_ids'][0].bool()
    cos = torch.cosine_similarity(hidden[~types].mean(0), hidden[types].mean(0), dim=0)
    score = ce.score_pairs(['cats purr'], ['a cat purrs when content'])[0]
    assert score == pytest.approx(20.0 * cos.item(), abs=1e-4)
    with pytest.raises(KnowacqError, match='segment ids'):
        CrossEncoder.new('tiny-llama', pooling='segment-product')
