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


def test_fingerprint_counts_what_the_model_computes(tmp_path):
    """The same weights must share their caches however they were saved: transformers copies load kwargs
    (``local_files_only``) into ``tokenizer_config.json``, ``training.json`` logs times, ``knowacq.json`` names the
    folder trained from. Anything that changes the model (weights, a real tokenizer setting, pooling) must not."""
    import json
    import shutil
    from pyterrier_knowacq.models.backbones import model_fingerprint
    src = tmp_path / 'a'
    shutil.copytree(resolve_model('tiny-bert'), src)
    (src / 'knowacq.json').write_text(json.dumps({'kind': 'bi-encoder', 'pooling': 'cls', 'backbone': '/one/place'}))
    (src / 'training.json').write_text(json.dumps({'wall_time_s': 10}))
    base = model_fingerprint(str(src))

    def variant(name, edit):
        dst = tmp_path / name
        shutil.copytree(src, dst)
        edit(dst)
        return model_fingerprint(str(dst))

    def json_edit(file, **changes):
        def edit(folder):
            data = json.loads((folder / file).read_text())
            data.update(changes)
            (folder / file).write_text(json.dumps(data, indent=1))
        return edit
    assert variant('offline', json_edit('tokenizer_config.json', local_files_only=True)) == base
    assert variant('log', json_edit('training.json', wall_time_s=99)) == base
    assert variant('moved', json_edit('knowacq.json', backbone='/another/place')) == base
    assert variant('longer', json_edit('tokenizer_config.json', model_max_length=7)) != base
    assert variant('pooling', json_edit('knowacq.json', pooling='mean')) != base
    assert variant('weights', lambda f: (f / 'model.safetensors').write_bytes(b'0' + (f / 'model.safetensors').read_bytes()[1:])) != base
    assert variant('broken', lambda f: (f / 'tokenizer_config.json').write_text('{not json')) != base
