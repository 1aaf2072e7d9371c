"""Each loss against values computed by hand (math, not torch)."""
import math

import pytest
import torch

from pyterrier_knowacq._util import KnowacqError
from pyterrier_knowacq.training.losses import LOSSES, get_loss


def t(x):
    return torch.tensor(x, dtype=torch.float64)


def test_registry_names():
    assert {'lce', 'ranknet', 'kl', 'margin_mse', 'bce', 'infonce'} <= set(LOSSES)
    with pytest.raises(KnowacqError, match='unknown loss'):
        get_loss('nope')
    with pytest.raises(KnowacqError, match='bad parameters'):
        get_loss('kl', tau=3)


def test_lce_hand():
    s = [[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    expect = (-(2 - math.log(math.exp(2) + math.exp(1) + 1)) + math.log(3)) / 2
    assert get_loss('lce')(t(s)).item() == pytest.approx(expect)
    # explicit labels, positive not first
    assert get_loss('lce')(t([[1.0, 2.0]]), t([[0, 1]])).item() == pytest.approx(math.log(1 + math.exp(-1)))
    with pytest.raises(KnowacqError, match='no positive'):
        get_loss('lce')(t([[1.0, 2.0]]), t([[0, 0]]))


def test_ranknet_hand():
    s = t([[3.0, 1.0, 2.0]])
    labels = t([[3, 2, 1]])  # teacher order 0 > 1 > 2; pairs (0,1) (0,2) (1,2)
    sp = lambda x: math.log(1 + math.exp(-x))
    expect = (sp(3 - 1) + sp(3 - 2) + sp(1 - 2)) / 3
    assert get_loss('ranknet')(s, labels).item() == pytest.approx(expect)
    # padding (label 0) is ignored
    s2 = t([[3.0, 1.0, 2.0, 9.0]])
    assert get_loss('ranknet')(s2, t([[3, 2, 1, 0]])).item() == pytest.approx(expect)
    assert get_loss('ranknet', sigma=2.0)(t([[0.0, 1.0]]), t([[2, 1]])).item() == pytest.approx(math.log(1 + math.exp(2)))


def test_kl_hand():
    s, te = [1.0, 0.0], [0.0, 1.0]
    for T in (1.0, 2.0):
        p = [math.exp(x / T) / sum(math.exp(y / T) for y in te) for x in te]
        q = [math.exp(x / T) / sum(math.exp(y / T) for y in s) for x in s]
        expect = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q)) * T * T
        assert get_loss('kl', temperature=T)(t([s]), t([te])).item() == pytest.approx(expect)
    assert get_loss('kl')(t([s]), t([s])).item() == pytest.approx(0.0, abs=1e-12)


def test_margin_mse_hand():
    s, te = [[3.0, 1.0, 0.0]], [[5.0, 4.0, 1.0]]
    expect = ((2 - 1) ** 2 + (3 - 4) ** 2) / 2
    assert get_loss('margin_mse')(t(s), t(te)).item() == pytest.approx(expect)


def test_bce_hand():
    s, y = [0.0, 2.0], [1, 0]
    expect = (math.log(2) + math.log(1 + math.exp(2))) / 2
    assert get_loss('bce')(t(s), t(y)).item() == pytest.approx(expect)


def test_infonce_hand():
    sim = [[1.0, 0.0], [0.0, 1.0]]
    expect = -math.log(math.exp(2) / (math.exp(2) + 1))
    assert get_loss('infonce', tau=0.5)(t(sim)).item() == pytest.approx(expect)


def test_shapes_checked():
    with pytest.raises(KnowacqError, match='reshape'):
        get_loss('lce')(t([1.0, 2.0]))
