import json

import numpy as np
import pytest

from pyterrier_knowacq._util import KnowacqError
from pyterrier_knowacq.analysis.representations import LayerEncoder

TEXTS = ['hello world', 'a much longer text about neurons, layers and retrieval models', 'x y']




@pytest.mark.parametrize('model,pooling', [('tiny-bert', 'cls'), ('tiny-bert', 'mean'), ('tiny-llama', 'last'), ('tiny-llama', 'mean')])
def test_padding_side_does_not_change_vectors(model, pooling):
    left = LayerEncoder(model, pooling, padding_side='left', cache=False)
    right = LayerEncoder(model, pooling, padding_side='right', cache=False)
    batch = left.tokenize(TEXTS)
    assert (batch['attention_mask'][:, 0] == 0).any()  # left padding really happened
    a, b = left.encode(TEXTS), right.encode(TEXTS)
    assert a.shape == (left.num_layers, len(TEXTS), left.dim)
    np.testing.assert_allclose(a, b, atol=1e-5)
    # and equal to encoding each text alone (no padding at all)
    alone = np.stack([right.encode([t])[:, 0] for t in TEXTS], axis=1)
    np.testing.assert_allclose(a, alone, atol=1e-5)


def test_last_token_is_eos_not_pad():
    enc = LayerEncoder('tiny-llama', 'last', padding_side='right', cache=False)
    batch = enc.tokenize(TEXTS)
    mask = batch['attention_mask']
    eos = enc._tokenizer.eos_token_id
    from pyterrier_knowacq.models.pooling import last_token_index
    idx = last_token_index(mask)
    assert all(batch['input_ids'][i, j] == eos for i, j in enumerate(idx.tolist()))
    # pad == eos for this tokenizer: the short rows have pads after the real EOS
    assert (mask == 0).any()


def test_cache_is_memory_mapped_and_reused(tmp_path):
    enc = LayerEncoder('tiny-bert', 'mean', cache=False)
    first = enc.encode(TEXTS, cache_path=tmp_path / 'c')
    assert isinstance(first, np.memmap)
    meta = json.loads((tmp_path / 'c' / 'meta.json').read_text())
    assert meta['shape'] == [enc.num_layers, 3, enc.dim]
    again = enc.encode(TEXTS, cache_path=tmp_path / 'c')
    np.testing.assert_array_equal(first, again)
    assert not list(tmp_path.glob('.*partial'))


def test_cache_from_another_model_is_refused(tmp_path):
    LayerEncoder('tiny-bert', 'mean', cache=False).encode(TEXTS, cache_path=tmp_path / 'c')
    other = LayerEncoder('random:tiny-bert@3', 'mean', cache=False)
    with pytest.raises(KnowacqError, match='built for'):
        other.encode(TEXTS, cache_path=tmp_path / 'c')
    with pytest.raises(KnowacqError, match='built for'):
        LayerEncoder('tiny-bert', 'mean', cache=False).encode(TEXTS[:2], cache_path=tmp_path / 'c')
    rebuilt = other.encode(TEXTS, cache_path=tmp_path / 'c', rebuild=True)
    assert json.loads((tmp_path / 'c' / 'meta.json').read_text())['model'] == 'random:tiny-bert@3'
    assert rebuilt.shape[1] == 3


def test_bad_layer_and_pooling():
    enc = LayerEncoder('tiny-bert', 'cls', cache=False)
    assert enc.check_layer(-1) == enc.num_layers - 1
    with pytest.raises(KnowacqError, match='out of range'):
        enc.layer(TEXTS, enc.num_layers)
    with pytest.raises(KnowacqError, match='causal'):
        LayerEncoder('tiny-llama', 'cls')
    with pytest.raises(KnowacqError, match='unknown pooling'):
        LayerEncoder('tiny-bert', 'max')
