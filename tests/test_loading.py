"""Every checkpoint family of the seeds loads with the right classes and no weight left at random initialisation.

Tiny local stand-ins of each format are written to tmp folders: DPR question / context encoders
(facebook/dpr-*-single-nq-base), a pooler-less BERT (facebook/contriever), an ELECTRA discriminator and classifier
(google/electra-base-discriminator), RoBERTa (roberta-base: masked-LM checkpoint, no pooler, byte-level BPE), a Llama
base with a PEFT LoRA adapter folder (castorini/repllama-v1-7b-lora-passage) and a ColBERTv2 folder
(colbert-ir/colbertv2.0). Each loads through the project's loaders; every loaded tensor is compared with the saved
one (``weights_left_at_init`` must be empty), the outputs are checked, and a checkpoint with one weight deleted must
raise :class:`KnowacqError`.
"""
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from pyterrier_knowacq._util import KnowacqError
from pyterrier_knowacq.models.backbones import DPR_PAIRS, load_encoder, resolve_model, weights_left_at_init

TEXTS = ['what is a neuron', 'a neuron is a cell of the nervous system', 'x']
TINY = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)


def _save(model, tok, folder):
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


def _drop_weight(src, dst, key):
    """A copy of checkpoint folder ``src`` without the weight ``key``."""
    shutil.copytree(src, dst)
    state = load_file(str(dst / 'model.safetensors'))
    assert key in state, sorted(state)[:10]
    del state[key]
    save_file(state, str(dst / 'model.safetensors'), metadata={'format': 'pt'})
    return dst


def _frame():
    return pd.DataFrame([('q1', TEXTS[0], f'd{i}', t) for i, t in enumerate(TEXTS)],
                        columns=['qid', 'query', 'docno', 'text'])


@pytest.fixture(scope='module')
def bert_tok():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(resolve_model('tiny-bert'))


# ---------------------------------------------------------------------------------------------------------------- DPR
@pytest.fixture(scope='module')
def dpr(tmp_path_factory, bert_tok):
    from transformers import DPRConfig, DPRContextEncoder, DPRQuestionEncoder
    root = tmp_path_factory.mktemp('dpr')
    cfg = DPRConfig(vocab_size=len(bert_tok), **TINY)
    torch.manual_seed(1)
    question = _save(DPRQuestionEncoder(cfg), bert_tok, root / 'dpr-question_encoder-tiny')
    torch.manual_seed(2)
    context = _save(DPRContextEncoder(cfg), bert_tok, root / 'dpr-ctx_encoder-tiny')
    return question, context


def _dpr_reference(cls, folder, tok, texts):
    model = cls.from_pretrained(folder).eval()
    enc = tok(texts, padding=True, truncation=True, max_length=64, return_tensors='pt')
    with torch.no_grad():
        return model(input_ids=enc['input_ids'], attention_mask=enc['attention_mask'],
                     token_type_ids=enc['token_type_ids']).pooler_output.numpy()


def test_dpr_encoders_load_with_their_own_class_and_every_weight(dpr):
    from transformers import BertModel
    question, context = dpr
    for folder, prefix in ((question, 'question_encoder.bert_model.'), (context, 'ctx_encoder.bert_model.')):
        bert, _ = load_encoder(str(folder))
        assert type(bert) is BertModel and bert.config.model_type == 'bert'
        saved = load_file(str(folder / 'model.safetensors'))
        assert len(bert.state_dict()) == len(saved) and all(k.startswith(prefix) for k in saved)
        left = weights_left_at_init(bert, saved)
        print(f'LEFT_AT_INIT dpr-{prefix.split("_")[0]}: {len(left)}')
        assert left == []
        for key, value in bert.state_dict().items():
            assert torch.equal(value, saved[prefix + key]), key


def test_dpr_biencoder_pairs_question_and_context_encoders(dpr, bert_tok, monkeypatch):
    from transformers import DPRContextEncoder, DPRQuestionEncoder
    from pyterrier_knowacq.models.biencoder import BiEncoder
    question, context = dpr
    with pytest.raises(KnowacqError, match='question encoder it was trained with'):
        BiEncoder.from_pretrained(str(context), pooling='cls')
    with pytest.raises(KnowacqError, match='DPR question encoder'):
        BiEncoder.from_pretrained(str(question), pooling='cls')
    monkeypatch.setitem(DPR_PAIRS, str(context), str(question))   # as facebook/dpr-ctx_encoder-single-nq-base is
    paired = BiEncoder.from_pretrained(str(context), pooling='cls', device='cpu')
    explicit = BiEncoder.from_pretrained(str(context), pooling='cls', query_model=str(question), device='cpu')
    assert paired.query_model is not None
    docs, queries = paired.encode_docs(TEXTS), paired.encode_queries(TEXTS)
    np.testing.assert_allclose(docs, _dpr_reference(DPRContextEncoder, context, bert_tok, TEXTS), atol=1e-5, rtol=0)
    np.testing.assert_allclose(queries, _dpr_reference(DPRQuestionEncoder, question, bert_tok, TEXTS), atol=1e-5, rtol=0)
    assert not np.allclose(docs, queries)
    np.testing.assert_allclose(explicit.encode_docs(TEXTS), docs, atol=1e-6)
    np.testing.assert_allclose(explicit.encode_queries(TEXTS), queries, atol=1e-6)
    scores = paired.scorer()(_frame())['score'].to_numpy()
    assert np.isfinite(scores).all()
    np.testing.assert_allclose(scores, docs @ queries[0], rtol=1e-5, atol=1e-5)


def test_dpr_pair_is_checked_with_the_model_name(dpr, tmp_path, monkeypatch):
    from pyterrier_knowacq.models.backbones import check_model_name
    question, context = dpr
    monkeypatch.setitem(DPR_PAIRS, str(context), str(question))
    check_model_name(str(context))
    monkeypatch.setitem(DPR_PAIRS, str(context), str(tmp_path / 'no' / 'such-question-encoder'))
    with pytest.raises(KnowacqError, match='such-question-encoder'):
        check_model_name(str(context))


def test_dpr_biencoder_saves_as_plain_bert_and_reloads(dpr, tmp_path):
    from pyterrier_knowacq.models.biencoder import BiEncoder
    question, context = dpr
    model = BiEncoder.from_pretrained(str(context), pooling='cls', query_model=str(question), device='cpu')
    folder = model.save(tmp_path / 'saved')
    assert json.loads((folder / 'config.json').read_text())['model_type'] == 'bert'
    again = BiEncoder.from_pretrained(str(folder), device='cpu')
    np.testing.assert_allclose(again.encode_docs(TEXTS), model.encode_docs(TEXTS), atol=1e-6)
    np.testing.assert_allclose(again.encode_queries(TEXTS), model.encode_queries(TEXTS), atol=1e-6)


def test_dpr_layer_probing_and_integrated_gradients(dpr, bert_tok):
    from transformers import DPRContextEncoder
    from pyterrier_knowacq.analysis.attribution import IntegratedGradients
    from pyterrier_knowacq.analysis.representations import LayerEncoder
    question, context = dpr
    enc = LayerEncoder(str(context), 'cls', cache=False, max_length=64)
    states = enc.encode(TEXTS)
    assert states.shape == (3, len(TEXTS), 16)
    np.testing.assert_allclose(states[-1], _dpr_reference(DPRContextEncoder, context, bert_tok, TEXTS), atol=1e-5)
    # a query encoder given a tokenizer from elsewhere (as the analysis does for a bi-encoder's query/ folder)
    qenc = LayerEncoder(str(question), 'cls', cache=False, tokenizer=str(context))
    assert not np.allclose(qenc.encode(TEXTS)[-1], states[-1])
    res = IntegratedGradients(str(context), 'cls', steps=2).attribute(TEXTS[:2])
    assert len(res.scores) == 4 and all(np.isfinite(v).all() for v in res.scores.values())
    wrapped = IntegratedGradients((DPRContextEncoder.from_pretrained(context), bert_tok), 'cls', steps=2)
    assert wrapped.layer_names == IntegratedGradients(str(context), 'cls', steps=2).layer_names


def test_dpr_deleted_weight_reader_and_random_control(dpr, bert_tok, tmp_path, cache):
    from transformers import DPRConfig, DPRReader
    question, context = dpr
    broken = _drop_weight(context, tmp_path / 'broken', 'ctx_encoder.bert_model.encoder.layer.1.output.dense.weight')
    with pytest.raises(KnowacqError, match=r"1 weight\(s\) are not in the checkpoint.*encoder\.layer\.1\.output\.dense"):
        load_encoder(str(broken))
    reader = _save(DPRReader(DPRConfig(vocab_size=len(bert_tok), **TINY)), bert_tok, tmp_path / 'reader')
    with pytest.raises(KnowacqError, match='DPR reader'):
        load_encoder(str(reader))
    # random: keeps the context-encoder architecture (AutoModel would build a question encoder) and loads fully
    folder = Path(resolve_model(f'random:{context}@4'))
    assert json.loads((folder / 'config.json').read_text())['architectures'] == ['DPRContextEncoder']
    rand, _ = load_encoder(f'random:{context}@4')
    assert weights_left_at_init(rand, folder) == []
    trained, _ = load_encoder(str(context))
    assert not torch.equal(rand.embeddings.word_embeddings.weight, trained.embeddings.word_embeddings.weight)


# ---------------------------------------------------------------------------------------------------------- Contriever
@pytest.fixture(scope='module')
def contriever(tmp_path_factory, bert_tok):
    """facebook/contriever's format: a BertModel without a pooling layer, mean pooling."""
    from transformers import BertConfig, BertModel
    torch.manual_seed(3)
    model = BertModel(BertConfig(vocab_size=len(bert_tok), **TINY), add_pooling_layer=False)
    return _save(model, bert_tok, tmp_path_factory.mktemp('contriever') / 'contriever')


def test_contriever_loads_every_weight_and_mean_pools(contriever, bert_tok):
    from transformers import BertModel
    from pyterrier_knowacq.models.biencoder import BiEncoder
    model = BiEncoder.from_pretrained(str(contriever), pooling='mean', device='cpu')
    assert type(model.model) is BertModel and model.model.pooler is None   # absent pooler removed, not left random
    left = weights_left_at_init(model.model, contriever)
    print(f'LEFT_AT_INIT contriever: {len(left)}')
    assert left == []
    reference = BertModel.from_pretrained(contriever, add_pooling_layer=False).eval()
    enc = bert_tok(TEXTS, padding=True, return_tensors='pt')
    with torch.no_grad():
        hidden = reference(**enc).last_hidden_state
    mask = enc['attention_mask'][..., None].float()
    expected = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
    np.testing.assert_allclose(model.encode_docs(TEXTS), expected, atol=1e-5)
    assert np.isfinite(model.scorer()(_frame())['score']).all()


def test_bert_with_pooler_keeps_it_and_deleted_weight_raises(contriever, bert_tok, tmp_path):
    from transformers import BertConfig, BertModel
    torch.manual_seed(5)
    with_pooler = _save(BertModel(BertConfig(vocab_size=len(bert_tok), **TINY)), bert_tok, tmp_path / 'bert')
    model, _ = load_encoder(str(with_pooler))
    assert model.pooler is not None and weights_left_at_init(model, with_pooler) == []
    broken = _drop_weight(contriever, tmp_path / 'broken', 'embeddings.word_embeddings.weight')
    with pytest.raises(KnowacqError, match=r"'.*broken' \(BertModel from .*\): 1 weight\(s\) .*word_embeddings"):
        load_encoder(str(broken))


def test_random_control_is_not_an_error(cache):
    base, _ = load_encoder('tiny-bert')
    rand, _ = load_encoder('random:tiny-bert@5')
    assert weights_left_at_init(rand, Path(resolve_model('random:tiny-bert@5'))) == []
    assert not torch.equal(base.embeddings.word_embeddings.weight, rand.embeddings.word_embeddings.weight)


# ------------------------------------------------------------------------------------------------------------- ELECTRA
@pytest.fixture(scope='module')
def electra(tmp_path_factory, bert_tok):
    """google/electra-base-discriminator's format (ElectraForPreTraining) and a fine-tuned ELECTRA classifier."""
    from transformers import ElectraConfig, ElectraForPreTraining, ElectraForSequenceClassification
    root = tmp_path_factory.mktemp('electra')
    cfg = ElectraConfig(vocab_size=len(bert_tok), embedding_size=16, **TINY)
    torch.manual_seed(6)
    disc = _save(ElectraForPreTraining(cfg), bert_tok, root / 'electra-discriminator')
    torch.manual_seed(7)
    clf = _save(ElectraForSequenceClassification(ElectraConfig(vocab_size=len(bert_tok), embedding_size=16, num_labels=1, **TINY)),
                bert_tok, root / 'electra-ce')
    return disc, clf


def _pair_logits(model, tok, queries, texts):
    enc = tok(queries, texts, padding=True, truncation='only_second', max_length=64, return_tensors='pt')
    with torch.no_grad():
        return model(**enc).logits[:, 0].numpy()


def test_electra_backbone_and_classifier(electra, bert_tok, tmp_path):
    from transformers import ElectraForSequenceClassification, ElectraModel
    from pyterrier_knowacq.models.crossencoder import CrossEncoder
    disc, clf = electra
    new = CrossEncoder.new(str(disc), pooling='cls', device='cpu')      # the fresh head is the only new weight
    assert type(new.model.backbone) is ElectraModel
    left = weights_left_at_init(new.model.backbone, disc)
    print(f'LEFT_AT_INIT electra-backbone: {len(left)}')
    assert left == []
    scores = new(_frame())['score'].to_numpy()
    assert np.isfinite(scores).all()
    # a saved fine-tuned model (backbone + head.safetensors) reloads to the same scores
    again = CrossEncoder.from_pretrained(str(new.save(tmp_path / 'saved')), device='cpu')
    np.testing.assert_allclose(again(_frame())['score'].to_numpy(), scores, atol=1e-5)
    ce = CrossEncoder.from_pretrained(str(clf), device='cpu')
    assert type(ce.model.backbone) is ElectraForSequenceClassification
    left = weights_left_at_init(ce.model.backbone, clf)
    print(f'LEFT_AT_INIT electra-classifier: {len(left)}')
    assert left == []
    reference = ElectraForSequenceClassification.from_pretrained(clf).eval()
    np.testing.assert_allclose(ce.score_pairs([TEXTS[0]] * 3, TEXTS), _pair_logits(reference, bert_tok, [TEXTS[0]] * 3, TEXTS),
                               atol=1e-5)


def test_electra_deleted_weights_raise(electra, tmp_path):
    from pyterrier_knowacq.models.crossencoder import CrossEncoder
    disc, clf = electra
    with pytest.raises(KnowacqError, match=r'1 weight\(s\).*classifier\.out_proj\.weight'):
        CrossEncoder.from_pretrained(str(_drop_weight(clf, tmp_path / 'no-head', 'classifier.out_proj.weight')))
    with pytest.raises(KnowacqError, match=r'1 weight\(s\).*encoder\.layer\.0\.attention\.self\.query\.weight'):
        CrossEncoder.new(str(_drop_weight(disc, tmp_path / 'no-q', 'electra.encoder.layer.0.attention.self.query.weight')))
    saved = CrossEncoder.new(str(disc), device='cpu').save(tmp_path / 'saved')
    (saved / 'head.safetensors').unlink()
    with pytest.raises(KnowacqError, match='head.safetensors'):
        CrossEncoder.from_pretrained(str(saved))


# ------------------------------------------------------------------------------------------------------------- RoBERTa
@pytest.fixture(scope='module')
def roberta(tmp_path_factory):
    """roberta-base's format: a masked-LM checkpoint (no pooler), byte-level BPE, positions from padding_idx + 1."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaForMaskedLM, RobertaForSequenceClassification, RobertaTokenizerFast
    root = tmp_path_factory.mktemp('roberta')
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(TEXTS * 3 + ['the quick brown fox jumps over the lazy dog'], vocab_size=320, min_frequency=1,
                            special_tokens=['<s>', '<pad>', '</s>', '<unk>', '<mask>'])
    bpe.save_model(str(root))
    tok = RobertaTokenizerFast(vocab_file=str(root / 'vocab.json'), merges_file=str(root / 'merges.txt'))
    cfg = dict(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=0, eos_token_id=2, type_vocab_size=1,
               **{**TINY, 'max_position_embeddings': 80})
    torch.manual_seed(8)
    mlm = _save(RobertaForMaskedLM(RobertaConfig(**cfg)), tok, root / 'roberta-base')
    torch.manual_seed(9)
    clf = _save(RobertaForSequenceClassification(RobertaConfig(num_labels=1, **cfg)), tok, root / 'roberta-ce')
    return mlm, clf, tok


def test_roberta_cross_encoder_falls_back_from_packing(roberta):
    from transformers import RobertaForSequenceClassification, RobertaModel
    from pyterrier_knowacq.models.crossencoder import CrossEncoder
    from pyterrier_knowacq.models.packed import supports_packing
    mlm, clf, tok = roberta
    new = CrossEncoder.new(str(mlm), pooling='cls', device='cpu')
    backbone = new.model.backbone
    assert type(backbone) is RobertaModel and backbone.pooler is None and not supports_packing(backbone)
    left = weights_left_at_init(backbone, mlm)
    print(f'LEFT_AT_INIT roberta-backbone: {len(left)}')
    assert left == []
    with pytest.raises(KnowacqError, match='segment ids'):
        CrossEncoder.new(str(mlm), pooling='segment-product')
    queries = [TEXTS[0]] * 3
    enc = tok(queries, TEXTS, padding=True, truncation='only_second', max_length=64, return_tensors='pt')
    assert 'token_type_ids' not in enc
    reference = RobertaModel.from_pretrained(mlm, add_pooling_layer=False).eval()
    with torch.no_grad():
        cls_state = reference(**enc).last_hidden_state[:, 0]
        expected = new.model.head(cls_state).squeeze(-1).numpy()
    np.testing.assert_allclose(new.score_pairs(queries, TEXTS), expected, atol=1e-5)
    ce = CrossEncoder.from_pretrained(str(clf), device='cpu')
    assert weights_left_at_init(ce.model.backbone, clf) == []
    np.testing.assert_allclose(ce.score_pairs(queries, TEXTS),
                               _pair_logits(RobertaForSequenceClassification.from_pretrained(clf).eval(), tok, queries, TEXTS),
                               atol=1e-5)


def test_roberta_bi_encoder_and_layers_keep_its_positions(roberta):
    """RoBERTa numbers positions from padding_idx + 1: the layer encoder must not pass 0-based position ids."""
    from transformers import RobertaModel
    from pyterrier_knowacq.analysis.representations import LayerEncoder
    from pyterrier_knowacq.models.biencoder import BiEncoder
    mlm, _, tok = roberta
    reference = RobertaModel.from_pretrained(mlm, add_pooling_layer=False).eval()
    enc = tok(TEXTS, padding=True, return_tensors='pt')
    with torch.no_grad():
        hidden = reference(**enc, output_hidden_states=True).hidden_states
    mask = enc['attention_mask'][..., None].float()
    mean = [((h * mask).sum(1) / mask.sum(1)).numpy() for h in hidden]
    bienc = BiEncoder.from_pretrained(str(mlm), pooling='mean', device='cpu')
    np.testing.assert_allclose(bienc.encode_docs(TEXTS), mean[-1], atol=1e-5)
    for side in ('left', 'right'):
        states = LayerEncoder(str(mlm), 'mean', cache=False, padding_side=side).encode(TEXTS)
        np.testing.assert_allclose(states, np.stack(mean), atol=1e-5)


# ------------------------------------------------------------------------------------------------------------ RepLLaMA
@pytest.fixture(scope='module')
def repllama(tmp_path_factory):
    """meta-llama/Llama-2-7b-hf's format (LlamaForCausalLM) + a LoRA adapter folder trained on its LlamaModel, as
    castorini/repllama-v1-7b-lora-passage (adapter_config.json naming the base + adapter_model.safetensors)."""
    pytest.importorskip('peft')
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel, AutoTokenizer, LlamaConfig, LlamaForCausalLM
    root = tmp_path_factory.mktemp('repllama')
    tok = AutoTokenizer.from_pretrained(resolve_model('tiny-llama'))
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                      intermediate_size=32, max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=2,
                      tie_word_embeddings=False)
    torch.manual_seed(10)
    base = _save(LlamaForCausalLM(cfg), tok, root / 'Llama-tiny-hf')
    torch.manual_seed(11)
    lora = LoraConfig(r=2, lora_alpha=4, init_lora_weights=False,   # non-zero B: the adapter changes the model
                      target_modules=['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'])
    peft_model = get_peft_model(AutoModel.from_pretrained(base), lora)
    adapter = root / 'repllama-tiny-lora-passage'
    peft_model.save_pretrained(adapter)
    assert json.loads((adapter / 'adapter_config.json').read_text())['base_model_name_or_path'] == str(base)
    assert not (adapter / 'config.json').exists()
    return base, adapter, tok


def _reference_merge(base, adapter):
    from peft import PeftModel
    from transformers import AutoModel
    return PeftModel.from_pretrained(AutoModel.from_pretrained(base), str(adapter)).merge_and_unload().eval()


def test_repllama_adapter_is_merged_into_its_base(repllama, cache):
    from transformers import LlamaModel
    from pyterrier_knowacq.analysis.pipeline import merged_adapter
    from pyterrier_knowacq.analysis.representations import LayerEncoder
    from pyterrier_knowacq.models.biencoder import BiEncoder
    base, adapter, tok = repllama
    merged, _ = load_encoder(str(adapter))                 # an adapter folder: merged into the base its config names
    assert type(merged) is LlamaModel
    reference = _reference_merge(base, adapter)
    left = weights_left_at_init(merged, reference.state_dict())
    print(f'LEFT_AT_INIT repllama-merged: {len(left)}')
    assert left == []
    plain, _ = load_encoder(str(base))
    assert weights_left_at_init(plain, base) == []   # the base's lm_head is dropped, nothing is missing
    assert not torch.equal(plain.layers[0].self_attn.q_proj.weight, merged.layers[0].self_attn.q_proj.weight)
    from pyterrier_knowacq.models.backbones import check_model_name, model_fingerprint
    check_model_name(str(adapter))
    assert model_fingerprint(str(adapter)) != model_fingerprint(str(base))
    # the analysis's {base, adapter} entries take the same path and the same cached folder
    assert merged_adapter(str(base), str(adapter)) == resolve_model(str(adapter))
    bienc = BiEncoder.from_pretrained(str(adapter), pooling='last', device='cpu')
    assert bienc.append_eos
    vecs = bienc.encode_docs(TEXTS)
    assert vecs.shape == (3, 16) and np.isfinite(vecs).all()
    ids = [tok(t)['input_ids'] + [tok.eos_token_id] for t in TEXTS[:1]]
    with torch.no_grad():
        expected = reference(input_ids=torch.tensor(ids)).last_hidden_state[:, -1].numpy()
    np.testing.assert_allclose(vecs[:1], expected, atol=1e-5)
    states = LayerEncoder(str(adapter), 'last', cache=False).encode(TEXTS)
    np.testing.assert_allclose(states[-1][:1], expected, atol=1e-5)


def test_repllama_adapter_with_a_missing_or_stray_weight_raises(repllama, cache, tmp_path):
    from pyterrier_knowacq.models.backbones import merge_adapter
    base, adapter, _ = repllama
    broken = tmp_path / 'broken-adapter'
    shutil.copytree(adapter, broken)
    state = load_file(str(broken / 'adapter_model.safetensors'))
    key = next(k for k in sorted(state) if 'q_proj.lora_B' in k)
    del state[key]
    save_file(state, str(broken / 'adapter_model.safetensors'), metadata={'format': 'pt'})
    with pytest.raises(KnowacqError, match=r'1 weight\(s\) are not in the checkpoint.*q_proj\.lora_B'):
        merge_adapter(str(base), str(broken))
    stray = tmp_path / 'stray-adapter'   # trained on a LlamaForCausalLM: its keys match no LlamaModel module
    shutil.copytree(adapter, stray)
    state = load_file(str(stray / 'adapter_model.safetensors'))
    state = {k.replace('base_model.model.', 'base_model.model.model.', 1): v for k, v in state.items()}
    save_file(state, str(stray / 'adapter_model.safetensors'), metadata={'format': 'pt'})
    with pytest.raises(KnowacqError):
        merge_adapter(str(base), str(stray))
    broken_base = _drop_weight(base, tmp_path / 'broken-base', 'model.layers.1.mlp.up_proj.weight')
    with pytest.raises(KnowacqError, match=r'1 weight\(s\).*layers\.1\.mlp\.up_proj\.weight'):
        merge_adapter(str(broken_base), str(adapter))


# ------------------------------------------------------------------------------------------------------------ ColBERTv2
def _colbert_folder(folder, tok, seed, pooler=True):
    """colbert-ir/colbertv2.0's layout: config.json (HF_ColBERT), bert.* + linear.weight, tokenizer, artifact.metadata."""
    from transformers import BertConfig, BertModel
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tok), **TINY)
    bert = BertModel(cfg, add_pooling_layer=pooler)
    state = {f'bert.{k}': v.contiguous() for k, v in bert.state_dict().items()}
    state['linear.weight'] = torch.randn(8, 16)
    folder.mkdir(parents=True)
    save_file(state, str(folder / 'model.safetensors'), metadata={'format': 'pt'})
    (folder / 'config.json').write_text(json.dumps({**cfg.to_dict(), 'architectures': ['HF_ColBERT']}))
    tok.save_pretrained(folder)
    (folder / 'artifact.metadata').write_text(json.dumps({'query_maxlen': 16, 'doc_maxlen': 32, 'dim': 8,
                                                          'similarity': 'cosine', 'mask_punctuation': True}))
    return folder, state


@pytest.mark.parametrize('pooler', [True, False])
def test_colbertv2_checkpoint_loads_encoder_and_projection(bert_tok, tmp_path, pooler):
    from pyterrier_knowacq.models.colbert import ColBERT, ColBERTModel
    folder, state = _colbert_folder(tmp_path / 'colbertv2.0', bert_tok, seed=12, pooler=pooler)
    model = ColBERTModel.from_pretrained(folder)
    assert torch.equal(model.linear.weight, state['linear.weight']) and model.config['dim'] == 8
    assert (model.bert.pooler is not None) == pooler
    left = weights_left_at_init(model.bert, state)
    print(f'LEFT_AT_INIT colbertv2 (pooler={pooler}): {len(left)}')
    assert left == []
    scores = ColBERT(folder, batch_size=2)(_frame())['score'].to_numpy()
    assert np.isfinite(scores).all()


def test_colbertv2_deleted_weight_raises(bert_tok, tmp_path):
    from pyterrier_knowacq.models.colbert import ColBERTModel
    folder, _ = _colbert_folder(tmp_path / 'colbertv2.0', bert_tok, seed=13)
    broken = _drop_weight(folder, tmp_path / 'broken', 'bert.encoder.layer.0.intermediate.dense.bias')
    with pytest.raises(KnowacqError, match=r'1 weight\(s\).*bert\.encoder\.layer\.0\.intermediate\.dense\.bias'):
        ColBERTModel.from_pretrained(broken)
    no_linear = _drop_weight(folder, tmp_path / 'no-linear', 'linear.weight')
    with pytest.raises(KnowacqError, match='linear.weight'):
        ColBERTModel.from_pretrained(no_linear)
