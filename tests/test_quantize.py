"""``quantize='int8'``: int8 scores close to fp32, packed = padded, CPU only, choices named, fp32 checkpoints.

Tolerance: int8 weights (one scale per output channel) err by <= 1/254 of each row's range and int8 activations by
<= 1/255 of each batch's range (1/127 with 7-bit activations on CPUs without VNNI): at worst about 1% per layer, and
the rounding errors of the 32 hidden dimensions mostly cancel in a dot product (measured here: at most 0.06% of the
score scale, with 7-bit activations). So int8 must match fp32 within 1% of the score scale (and differ from it: the
int8 path ran), while every fp32 result of an int8 model must match the fp32 model exactly. The score scale is the
largest fp32 value for vectors and ColBERT's MaxSim; for a cross-encoder it is the largest score its head gives a
hidden state of unit variance per dimension, ``|w| * sqrt(hidden)`` (a random tiny model's scores all sit near one
value, often near 0, so "1% of the largest score" would measure nothing there).
"""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pyterrier_knowacq._util import KnowacqError
from pyterrier_knowacq.models.biencoder import BiEncoder
from pyterrier_knowacq.models.colbert import ColBERT, ColBERTModel
from pyterrier_knowacq.models.crossencoder import CrossEncoder
from pyterrier_knowacq.models.quantize import check_quantize, is_quantized, quantized_copy

Q = ['what do cats eat', 'fish', 'how tall is the eiffel tower in paris', 'dogs']
D = ['cats eat fish, mice and dry food from a bowl.', 'goldfish swim', 'the eiffel tower is 330 metres tall',
     'a dog barks at the postman every single morning before breakfast']
REL = 0.01


def close_to_fp32(fp32, int8, scale=None):
    fp32, int8 = np.asarray(fp32, dtype=np.float64), np.asarray(int8, dtype=np.float64)
    scale = np.abs(fp32).max() if scale is None else scale
    assert np.abs(int8 - fp32).max() <= REL * scale, (fp32, int8)
    assert not np.array_equal(fp32, int8)      # the int8 copy scored, not the fp32 model


def tiny_ce(pooling='cls', seed=0, **kwargs):
    return CrossEncoder.new('tiny-bert', pooling=pooling, seed=seed, device='cpu', **kwargs)


def ce_scale(ce):
    """The score scale of a cross-encoder: ``|head weight| * sqrt(hidden size)``."""
    return float(ce.model.head.weight.detach().norm()) * ce.model.config.hidden_size ** 0.5


@pytest.fixture(scope='module')
def ce_pair():
    fp32 = tiny_ce('cls', seed=0)
    return fp32, CrossEncoder(fp32.model, fp32.tokenizer, name='tiny', quantize='int8')


def test_cross_encoder_int8_is_close_to_fp32(ce_pair):
    fp32, int8 = ce_pair
    assert int8.device.type == 'cpu' and is_quantized(int8._int8) and not is_quantized(int8.model)
    close_to_fp32(fp32.score_pairs(Q, D), int8.score_pairs(Q, D), ce_scale(fp32))
    assert repr(int8) == "CrossEncoder('tiny', quantize='int8')" and int8 != fp32


def test_int8_copy_shares_fp32_weights_and_leaves_the_model_alone(ce_pair):
    fp32, int8 = ce_pair
    emb = int8.model.backbone.embeddings.word_embeddings.weight
    assert int8._int8.backbone.embeddings.word_embeddings.weight is emb        # shared, not copied
    assert int8._int8.head.weight is int8.model.head.weight                    # heads stay fp32
    assert all(isinstance(m, torch.nn.Linear) for n, m in int8.model.named_modules() if n.endswith('dense'))


@pytest.mark.parametrize('pooling', ['mean', 'cls'])
def test_packed_and_padded_int8_agree(pooling, monkeypatch):
    import pyterrier_knowacq.models.packed as packed
    ce = tiny_ce(pooling, seed=1, quantize='int8')
    calls = []
    real = packed.packed_hidden_states
    monkeypatch.setattr(packed, 'packed_hidden_states', lambda *a, **k: calls.append(1) or real(*a, **k))
    got = ce.score_pairs(Q, D)
    assert calls, 'int8 scoring took the packed path'
    monkeypatch.setattr(packed, 'supports_packing', lambda encoder: False)
    ref = ce.score_pairs(Q, D)
    # activations are quantised per batch: the padded forward also sees its padding rows (and, for CLS pooling, the
    # last layer's other rows), so the two share the int8 error budget, not float rounding
    assert np.abs(got - ref).max() <= REL * ce_scale(ce), (got, ref)


def test_packed_and_padded_int8_are_identical_without_padding(monkeypatch):
    # no padding and mean pooling: both quantise the very same activations, so only float rounding separates them
    import pyterrier_knowacq.models.packed as packed
    ce = tiny_ce('mean', seed=2, quantize='int8')
    same = ['alpha beta gamma', 'delta alpha beta']
    assert len({len(ids) for ids in ce.tokenizer(same, same)['input_ids']}) == 1
    got = ce.score_pairs(same, same)
    monkeypatch.setattr(packed, 'supports_packing', lambda encoder: False)
    np.testing.assert_allclose(got, ce.score_pairs(same, same), atol=1e-4, rtol=1e-4)


def test_bi_encoder_int8_scores_and_keeps_fp32_for_training():
    fp32 = BiEncoder.new('tiny-bert', pooling='mean', device='cpu')
    int8 = BiEncoder(fp32.model, fp32.tokenizer, pooling='mean', name='tiny', quantize='int8')
    close_to_fp32(fp32.encode_docs(D), int8.encode_docs(D))
    close_to_fp32(fp32.encode_queries(Q), int8.encode_queries(Q))
    # with gradients (training) the fp32 encoder runs: exactly fp32's vectors
    np.testing.assert_array_equal(int8.encode_torch(D).detach().numpy(), fp32.encode_torch(D).detach().numpy())
    assert 'quantize' in repr(int8)


def test_colbert_int8_scores_close_to_fp32_and_model_untouched():
    model = ColBERTModel.new('tiny-bert', dim=16)
    fp32 = ColBERT(model, device='cpu')
    int8 = model.scorer(quantize='int8')
    assert int8.device.type == 'cpu' and int8.quantize == 'int8' and model.quantize is None
    assert set(int8.model.state_dict()) == set(model.state_dict())      # the int8 copy is not a submodule
    close_to_fp32(fp32.score_pairs(Q, D), int8.score_pairs(Q, D))
    loaded_q = ColBERTModel.new('tiny-bert', dim=16, quantize='int8')
    assert is_quantized(loaded_q._int8)


@pytest.mark.parametrize('build', [
    lambda: CrossEncoder.new('tiny-bert', quantize='int8', device='cuda'),
    lambda: BiEncoder.new('tiny-bert', quantize='int8', device='cuda'),
    lambda: ColBERT(ColBERTModel.new('tiny-bert', dim=16), quantize='int8', device='cuda'),
    lambda: ColBERT(ColBERTModel.new('tiny-bert', dim=16, quantize='int8'), device='cuda'),
], ids=['cross-encoder', 'bi-encoder', 'colbert', 'int8-colbert-model'])
def test_int8_on_cuda_is_refused_with_one_clear_error(build):
    with pytest.raises(KnowacqError, match=r'CPU only.*fp32 or bf16 precision'):
        build()


@pytest.mark.parametrize('bad', ['int4', 'fp8', 8])
def test_unknown_quantize_is_refused_naming_the_choices(bad):
    with pytest.raises(KnowacqError, match=r"not supported; choices: None \(fp32, the default\) or 'int8'"):
        check_quantize(bad)
    with pytest.raises(KnowacqError, match="choices: None"):
        CrossEncoder.new('tiny-bert', quantize=bad, device='cpu')


def test_saving_an_int8_scorer_writes_the_fp32_checkpoint(tmp_path):
    fp32 = tiny_ce('cls', seed=3)
    int8 = CrossEncoder(fp32.model, fp32.tokenizer, name='tiny', quantize='int8')
    int8.save(tmp_path / 'a')
    fp32.save(tmp_path / 'b')
    a, b = load_file(str(tmp_path / 'a' / 'model.safetensors')), load_file(str(tmp_path / 'b' / 'model.safetensors'))
    assert set(a) == set(b) and not any('packed' in k or 'qkv' in k or 'scale' in k for k in a)
    for k in a:
        assert a[k].dtype == torch.float32 and torch.equal(a[k], b[k]), k
    assert 'quantize' not in json.loads((tmp_path / 'a' / 'knowacq.json').read_text())
    # quantisation is a load option: fp32 by default, int8 on request, each as before the round trip
    np.testing.assert_array_equal(CrossEncoder.from_pretrained(tmp_path / 'a', device='cpu').score_pairs(Q, D),
                                  fp32.score_pairs(Q, D))
    again = CrossEncoder.from_pretrained(tmp_path / 'a', quantize='int8')
    assert again.device.type == 'cpu'
    np.testing.assert_allclose(again.score_pairs(Q, D), int8.score_pairs(Q, D), atol=1e-6)


def test_smoothing_alone_is_exact_in_fp32(monkeypatch):
    # SmoothQuant's rescaling (x / s into the layer, W * s in it) is the same function before quantisation: the packed
    # and the padded forward of a smoothed fp32 copy give the fp32 scores to float rounding
    import copy
    import pyterrier_knowacq.models.packed as packed
    from pyterrier_knowacq.models import quantize
    ce = tiny_ce('mean', seed=4)
    names = quantize._stack_linears(ce.model)
    ranges = quantize._input_ranges(ce.model, names, ce.tokenizer, pairs=True)
    smoothed = copy.deepcopy(ce.model)
    quantize._smooth(smoothed, names, ranges, quantize.SMOOTH_ALPHA)
    att = smoothed.backbone.encoder.layer[0].attention.self
    assert isinstance(att.query, quantize._Smoothed) and isinstance(att.knowacq_qkv, quantize._Smoothed)
    assert not isinstance(smoothed.backbone.encoder.layer[0].output.dense, quantize._Smoothed)   # not LayerNorm-fed
    ref = ce.score_pairs(Q, D)
    ce.model = smoothed
    np.testing.assert_allclose(ce.score_pairs(Q, D), ref, atol=1e-5, rtol=1e-4)
    monkeypatch.setattr(packed, 'supports_packing', lambda encoder: False)
    np.testing.assert_allclose(ce.score_pairs(Q, D), ref, atol=1e-5, rtol=1e-4)


def test_quantized_copy_refuses_a_model_without_transformer_layers():
    with pytest.raises(KnowacqError, match='no transformer layers'):
        quantized_copy(torch.nn.Sequential(torch.nn.Linear(4, 4)))


def test_yaml_stages_take_quantize(tmp_path):
    """``ce(..., quantize=int8)``, ``biencoder(..., quantize=int8)`` and ``colbert(..., quantize=int8)`` in an
    experiment file load the int8 scorers; an unknown value is one error naming the choices."""
    from pyterrier_knowacq.datasets.core import get_dataset
    from pyterrier_knowacq.experiments.components import STAGES, StageContext
    ce_dir, cb_dir = tmp_path / 'ce', tmp_path / 'cb'
    tiny_ce().save(ce_dir)
    ColBERTModel.new('tiny-bert', dim=16, seed=0).save(cb_dir)
    ctx = StageContext(dataset=get_dataset('msmarco-passage'), split='dl19', models={'C': str(ce_dir), 'K': str(cb_dir)})
    ce = STAGES['ce'](ctx, model='C', quantize='int8')
    assert ce.quantize == 'int8' and is_quantized(ce._int8)
    assert STAGES['ce'](ctx, model='C').quantize is None
    bi = STAGES['biencoder'](ctx, model='tiny-bert', quantize='int8')
    assert bi.bi_encoder_model.quantize == 'int8' and is_quantized(bi.bi_encoder_model._int8['doc'])
    cb = STAGES['colbert'](ctx, model='K', quantize='int8')
    assert cb.model.quantize == 'int8'
    with pytest.raises(KnowacqError, match='int8'):
        STAGES['ce'](ctx, model='C', quantize='int4')
