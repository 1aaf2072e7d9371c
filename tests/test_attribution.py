import numpy as np
import pytest

from pyterrier_knowacq._util import KnowacqError
from pyterrier_knowacq.analysis.attribution import IntegratedGradients, ffn_layers
from pyterrier_knowacq.models.backbones import load_encoder

TEXTS = ['the quick brown fox jumps over the lazy dog', 'what is a neuron']


# cls on a BERT-style model takes the [CLS]-only last block (see the module docstring); the loop never does
@pytest.mark.parametrize('model,pooling', [('tiny-bert', 'mean'), ('tiny-bert', 'cls'), ('tiny-llama', 'last')])
def test_batched_equals_loop(model, pooling):
    pair = load_encoder(model)
    if pooling == 'cls':
        # a fresh BERT's last LayerNorm (gain 1, bias 0) gives every [CLS] state the norm sqrt(hidden): the target
        # would be constant and its gradient rounding noise, so give that LayerNorm a random gain and bias
        import copy
        import torch
        pair = (copy.deepcopy(pair[0]), pair[1])
        ln = pair[0].encoder.layer[-1].output.LayerNorm
        with torch.no_grad():
            gen = torch.Generator().manual_seed(0)
            ln.weight.copy_(torch.rand(ln.weight.shape, generator=gen) + 0.5)
            ln.bias.copy_(torch.randn(ln.bias.shape, generator=gen) * 0.1)
    batched = IntegratedGradients(pair, pooling, method='batched')
    assert (batched._cls_cut is not None) == (pooling == 'cls')
    loop = IntegratedGradients(pair, pooling, method='loop')
    for text in TEXTS:
        a, b = batched.raw_scores(text), loop.raw_scores(text)
        scale = max(v.max() for v in b.values())
        for k in a:
            np.testing.assert_allclose(a[k] / scale, b[k] / scale, atol=1e-4)
    ra, rb = batched.attribute(TEXTS), loop.attribute(TEXTS)
    for k in ra.scores:
        np.testing.assert_allclose(ra.scores[k], rb.scores[k], atol=1e-4)
    # the loop must leave the weights as they were
    again = loop.raw_scores(TEXTS[0])
    np.testing.assert_allclose(again[k], loop.raw_scores(TEXTS[0])[k])


def test_layers_found_and_summaries():
    model, tok = load_encoder('tiny-bert')
    assert ffn_layers(model) == ['encoder.layer.0.intermediate.dense', 'encoder.layer.0.output.dense',
                                 'encoder.layer.1.intermediate.dense', 'encoder.layer.1.output.dense']
    llama, _ = load_encoder('tiny-llama')
    assert ffn_layers(llama, layers=[-1]) == ['layers.1.mlp.gate_proj', 'layers.1.mlp.down_proj']
    ig = IntegratedGradients((model, tok), 'mean', steps=5)
    res = ig.attribute(TEXTS)
    assert ig.threshold == 0.1 and IntegratedGradients((llama, _), 'last', steps=2).threshold == 0.01
    top = max(float(s.max(1).max()) for s in res.scores.values())
    assert abs(top - 1.0) < 1e-6  # normalised by the example's maximum over the network
    counts = res.per_layer_counts()
    assert list(counts.neurons) == [64, 32, 64, 32]
    assert (counts.ever_active >= counts.majority_active).all()
    table = res.neuron_table()
    assert len(table) == 192 and table.share.between(0, 1).all()


def test_bad_input():
    model, tok = load_encoder('tiny-bert')
    with pytest.raises(KnowacqError, match='out of range'):
        ffn_layers(model, layers=[5])
    with pytest.raises(KnowacqError, match='causal'):
        IntegratedGradients('tiny-llama', 'cls')
    with pytest.raises(KnowacqError, match='method'):
        IntegratedGradients((model, tok), 'mean', method='fast')
    for steps in (1, 0, 2.5):   # one alpha cannot show whether the target moves (see FLAT_TOL)
        with pytest.raises(KnowacqError, match='steps must be an integer >= 2'):
            IntegratedGradients((model, tok), 'mean', steps=steps)


def test_constant_target_gives_zero_scores_not_rounding_noise():
    """A fresh BERT's last LayerNorm (gain 1, bias 0) makes ||[CLS]|| = sqrt(hidden) for every input: the target does
    not move with any layer, its gradients are float rounding, and the per-example normalisation would turn that noise
    into 'active' neurons. Both methods score such layers 0 and count them; mean pooling on the same model is not flat."""
    pair = load_encoder('tiny-bert')
    for method in ('batched', 'loop'):
        ig = IntegratedGradients(pair, 'cls', steps=5, method=method)
        raw = ig.raw_scores(TEXTS[0])
        assert all(not v.any() for v in raw.values()), method
        res = ig.attribute(TEXTS)
        counts = res.per_layer_counts()
        assert (counts.flat_texts == len(TEXTS)).all() and (counts.active_per_example == 0).all(), method
        assert all(f.all() for f in res.flat.values())
    res = IntegratedGradients(pair, 'mean', steps=5).attribute(TEXTS)
    counts = res.per_layer_counts()
    assert (counts.flat_texts == 0).all() and counts.active_per_example.sum() > 0


@pytest.mark.parametrize('model,pooling', [('tiny-bert', 'mean'), ('tiny-llama', 'last')])
def test_later_passes_reuse_the_prefix(model, pooling, monkeypatch):
    """The pass for a later block does not run the blocks below it again: they return the unscaled state the first
    pass kept from its shared row. Every block runs once per pass it belongs to, block 0 once in all; the scores
    still equal the loop's (test_batched_equals_loop covers two-block models, so also the reused prefix)."""
    pair = load_encoder(model)
    blocks = pair[0].encoder.layer if model == 'tiny-bert' else pair[0].layers
    calls = []
    cls = type(blocks[0])
    original = cls.forward

    def counted(self, *args, **kwargs):
        calls.append(next(i for i, b in enumerate(blocks) if b is self))
        return original(self, *args, **kwargs)
    monkeypatch.setattr(cls, 'forward', counted)
    IntegratedGradients(pair, pooling, steps=3, method='batched').raw_scores(TEXTS[0])
    assert sorted(calls) == [0, 1, 1]          # pass for block 0: blocks 0, 1; pass for block 1: block 1 only
    assert all('forward' not in vars(b) for b in blocks)   # the instance patches are gone
    calls.clear()
    IntegratedGradients(pair, pooling, steps=3, method='loop').raw_scores(TEXTS[0])
    assert sorted(calls) == [0] * 12 + [1] * 12    # the loop: 4 layers x 3 alphas, full forward each


def test_cls_cut_attends_from_cls_only_and_restores_the_model():
    """Under the [CLS] cut the last block's SDPA attends from one query row (the rest is cut away unread); the
    model's shared config is never touched and the block gets it back after the pass. Scores: test_batched_equals_loop."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from pyterrier_knowacq.analysis import attribution
    model, tok = load_encoder('tiny-bert')
    assert model.config._attn_implementation == 'sdpa'
    ig = IntegratedGradients((model, tok), 'cls', steps=3)
    ig.raw_scores(TEXTS[0])
    shapes, inner = [], ALL_ATTENTION_FUNCTIONS[attribution._CLS_QUERY_ATTENTION]

    def counted(module, query, *args, **kwargs):
        shapes.append((module is model.encoder.layer[-1].attention.self, tuple(query.shape)))
        out = inner(module, query, *args, **kwargs)
        assert out[0].shape[1] == query.shape[2]    # broadcast back to the sequence length
        return out
    ALL_ATTENTION_FUNCTIONS[attribution._CLS_QUERY_ATTENTION] = counted
    try:
        ig.raw_scores(TEXTS[0])
    finally:
        ALL_ATTENTION_FUNCTIONS[attribution._CLS_QUERY_ATTENTION] = inner
    assert shapes and all(last for last, _ in shapes)   # one call per pass, the last block only
    assert model.config._attn_implementation == 'sdpa'
    assert all(layer.attention.self.config is model.config for layer in model.encoder.layer)
