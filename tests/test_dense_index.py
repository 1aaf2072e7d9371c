import pytest


def test_each_model_and_pooling_gets_its_own_index(cache, beir_folder):
    from pyterrier_knowacq.models.biencoder import BiEncoder
    from pyterrier_knowacq.datasets.core import get_dataset
    from pyterrier_knowacq.models.dense_index import dense_index, dense_retriever, index_folder
    ds = get_dataset(f'beir:{beir_folder}')
    saved = BiEncoder.from_pretrained('tiny-bert', pooling='cls').save(cache / 'copy')   # same weights, another folder
    normed = BiEncoder.from_pretrained('tiny-bert', pooling='cls', normalize=True).save(cache / 'normed')
    folders = {}
    for model, pooling, max_length in [('tiny-bert', 'cls', 64), ('tiny-bert', 'mean', 64), ('tiny-bert', 'cls', 32),
                                       (str(saved), None, 64), (str(normed), None, 64), ('tiny-llama', 'last', 64),
                                       ('random:tiny-bert@3', 'cls', 64)]:
        encoder, index = dense_index(ds, model, pooling=pooling, max_length=max_length, verbose=False)
        assert index.built()
        folders[(model, pooling, max_length)] = index_folder(ds, model, encoder)
    assert len(set(folders.values())) == len(folders)           # no two encodings share an index
    assert 'tiny-llama-last-64' in folders[('tiny-llama', 'last', 64)].name
    stamp = folders[('tiny-bert', 'mean', 64)].stat().st_mtime_ns
    res = dense_retriever(ds, 'tiny-bert', pooling='mean', k=3, max_length=64)(ds.get_topics('test'))
    assert folders[('tiny-bert', 'mean', 64)].stat().st_mtime_ns == stamp   # cached: not rebuilt
    assert set(res['qid']) == {'q1', 'q2'} and res.groupby('qid').size().max() == 3
