import pytest
import torch

from pyterrier_knowacq import KnowacqError
from pyterrier_knowacq.models.backbones import load_encoder, resolve_model


def test_minilm_alias_is_a_local_folder():
    from pathlib import Path
    path = Path(resolve_model('minilm-l6'))
    assert (path / 'config.json').exists() and (path / 'model.safetensors').exists()


def test_random_control_has_same_architecture_and_other_weights():
    base, _ = load_encoder('tiny-bert')
    rand, _ = load_encoder('random:tiny-bert@3')
    assert base.config.to_dict()['hidden_size'] == rand.config.to_dict()['hidden_size']
    w1 = base.embeddings.word_embeddings.weight
    w2 = rand.embeddings.word_embeddings.weight
    assert w1.shape == w2.shape and not torch.allclose(w1, w2)
    again, _ = load_encoder('random:tiny-bert@3')
    assert torch.equal(again.embeddings.word_embeddings.weight, w2)


def test_hub_id_offline_gives_clear_error(monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    with pytest.raises(KnowacqError, match='hub is offline'):
        resolve_model('bert-base-uncased-does-not-exist')


def test_missing_or_bad_folders(tmp_path):
    with pytest.raises(KnowacqError, match='does not exist'):
        resolve_model(str(tmp_path / 'nope'))
    with pytest.raises(KnowacqError, match='config.json'):
        resolve_model(str(tmp_path))


@pytest.mark.slow
def test_smollm2_alias_converts_gguf_once_to_a_plain_hf_folder():
    from pathlib import Path
    from pyterrier_knowacq.models.biencoder import BiEncoder
    path = Path(resolve_model('smollm2-135m'))
    assert (path / 'config.json').exists() and list(path.glob('*.safetensors'))
    model = BiEncoder.from_pretrained('smollm2-135m', pooling='last')
    assert model.append_eos and model.encode_docs(['hello world']).shape == (1, 576)
