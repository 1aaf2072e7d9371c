import pytest
import torch

from pyterrier_knowacq.pooling import get_pooling, last_token_index


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
