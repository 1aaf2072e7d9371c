"""Sharded corpus encoding (``pyterrier_knowacq.models.sharding``): two gloo processes under torchrun encode a corpus
for the dense FlexIndex and the ColBERT token index; the merged index equals the single-process one bit for bit (same
vectors, same docno order) and lies where ``dense_index`` / ``cached_index`` find it, so they use it without
re-encoding. In-process checks cover an uneven split (3 shards), resuming, shards of another build and the faiss
segments of a large ColBERT index."""
import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

CORPUS = {'synthetic': {'passages': 350, 'queries': 10}}
DENSE = dict(batch_size=16, max_length=64)          # chunks of 100: 100, 100, 100, 50 -> ranks 0, 1, 0, 1
COLBERT = dict(batch_size=16, chunk_docs=64)        # chunks of 64: six, the last of 30


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _cache(root):
    from pyterrier_knowacq.models.backbones import resolve_model
    models = root / 'models'
    models.mkdir(parents=True)
    os.symlink(resolve_model('tiny-bert'), models / 'tiny-bert')
    return root


def _torchrun(cache, *args):
    env = dict(os.environ, KNOWACQ_CACHE=str(cache), OMP_NUM_THREADS='1', HF_HUB_OFFLINE='1',
               TRANSFORMERS_OFFLINE='1', TOKENIZERS_PARALLELISM='false')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_addr', '127.0.0.1',
           '--master_port', str(_free_port()), '-m', 'pyterrier_knowacq.models.sharding', *args, '--quiet']
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    assert proc.returncode == 0, err[-4000:]
    return out


@pytest.fixture(scope='module')
def sharded(tmp_path_factory):
    """Both indexes built by 2 gloo ranks into a cache of their own (no --out: the cache folders)."""
    root = tmp_path_factory.mktemp('sharded')
    cache = _cache(root / 'cache')
    from pyterrier_knowacq.models.colbert import ColBERTModel
    ColBERTModel.new('tiny-bert', dim=16, seed=0).save(root / 'colbert')
    corpus = json.dumps(CORPUS)
    _torchrun(cache, 'dense', '--dataset', corpus, '--model', 'tiny-bert', '--batch-size', '16', '--max-length', '64',
              '--keep-shards')
    shards = [json.loads(p.read_text()) for p in sorted(cache.glob('indexes/*.shards/shard-*/shard.json'))]
    assert [(s['rank'], s['world'], s['num_docs'], s['chunks_total']) for s in shards] == [(0, 2, 200, 4), (1, 2, 150, 4)]
    _torchrun(cache, 'colbert', '--dataset', corpus, '--model', str(root / 'colbert'), '--batch-size', '16',
              '--chunk-docs', '64')
    return root, cache


def _no_encoding(monkeypatch):
    """Make any encoding fail: a cached index must be used as it is."""
    from pyterrier_knowacq.models.biencoder import BiEncoder
    from pyterrier_knowacq.models.colbert_model import ColBERTModel

    def refuse(*args, **kwargs):
        raise AssertionError('the corpus was encoded again')
    monkeypatch.setattr(BiEncoder, 'encode_docs', refuse)
    monkeypatch.setattr(ColBERTModel, 'doc_embeddings', refuse)


def test_dense_merged_index_equals_single_process(sharded, tmp_path, monkeypatch):
    root, cache = sharded
    from pyterrier_knowacq.datasets.core import get_dataset
    from pyterrier_knowacq.models.dense_index import dense_index
    ds = get_dataset(CORPUS)
    monkeypatch.setenv('KNOWACQ_CACHE', str(cache))
    with monkeypatch.context() as m:
        _no_encoding(m)
        _, merged = dense_index(ds, 'tiny-bert', verbose=False, **DENSE)      # the sharded build, from the cache
    monkeypatch.setenv('KNOWACQ_CACHE', str(_cache(tmp_path / 'single')))
    _, single = dense_index(ds, 'tiny-bert', verbose=False, **DENSE)
    assert merged.index_path != single.index_path and merged.index_path.name == single.index_path.name
    (d1, v1, m1), (d2, v2, m2) = merged.payload(), single.payload()
    assert m1 == m2 and m1['doc_count'] == 350
    assert np.array_equal(v1, v2)
    assert list(d1) == list(d2) == [str(i) for i in range(350)]
    assert (merged.index_path / 'vecs.f4').read_bytes() == (single.index_path / 'vecs.f4').read_bytes()


def test_colbert_merged_index_equals_single_process(sharded, tmp_path, monkeypatch):
    root, cache = sharded
    import pandas as pd
    from pyterrier_knowacq.datasets.core import get_dataset
    from pyterrier_knowacq.models.colbert_index import cached_index
    ds = get_dataset(CORPUS)
    monkeypatch.setenv('KNOWACQ_CACHE', str(cache))
    with monkeypatch.context() as m:
        _no_encoding(m)
        merged = cached_index(ds, root / 'colbert', **COLBERT)
    assert not list(cache.glob('indexes/colbert-*.shards'))                  # shards removed after the merge
    monkeypatch.setenv('KNOWACQ_CACHE', str(_cache(tmp_path / 'single')))
    single = cached_index(ds, root / 'colbert', **COLBERT)
    assert merged.path.name == single.path.name and merged.meta() == single.meta()
    for name in ('tokens.f16', 'doclens.npy', 'docnos.txt', 'tokens.faiss'):
        assert (merged.path / name).read_bytes() == (single.path / name).read_bytes(), name
    t1, o1, d1, _ = merged.payload()
    t2, o2, d2, _ = single.payload()
    assert np.array_equal(t1, t2) and np.array_equal(o1, o2) and list(d1) == list(d2) == [str(i) for i in range(350)]
    topics = pd.DataFrame({'qid': ['1', '2'], 'query': [ds.get_texts(['7'])[0][:40], ds.get_texts(['300'])[0][:40]]})
    pd.testing.assert_frame_equal(merged.retriever(num_results=5)(topics), single.retriever(num_results=5)(topics))


def test_uneven_split_resume_and_foreign_shards(cache, tmp_path):
    """Three shards of four chunks (rank 0 gets two, the last chunk is short), encoded one after another in this
    process: the merge equals the single-process index; an encoded shard is not encoded again; shards of another
    build or a missing rank are refused, and a half-done split of another size beside them is left alone."""
    import pyterrier_dr
    from pyterrier_knowacq._util import KnowacqError
    from pyterrier_knowacq.datasets.core import get_dataset
    from pyterrier_knowacq.models.dense_index import dense_index
    from pyterrier_knowacq.models.sharding import dense_build, encode_shard, merge_shards
    ds = get_dataset(CORPUS)
    _, single = dense_index(ds, 'tiny-bert', verbose=False, **DENSE)
    build = dense_build(CORPUS, 'tiny-bert', out=tmp_path / 'merged.flex', **DENSE)
    shards = tmp_path / 'shards'
    for rank in (0, 1):
        encode_shard(build, rank, 3, shards, verbose=False)
    with pytest.raises(KnowacqError, match=r'lacks the shards of ranks \[2\]'):
        merge_shards(build, shards, verbose=False)
    encode_shard(build, 2, 3, shards, verbose=False)
    stamp = (shards / 'shard-00000-of-00003' / 'data.bin').stat().st_mtime_ns
    encode_shard(build, 0, 3, shards, verbose=False)                         # resumed: kept
    assert (shards / 'shard-00000-of-00003' / 'data.bin').stat().st_mtime_ns == stamp
    other = dense_build(CORPUS, 'tiny-bert', out=tmp_path / 'other.flex', batch_size=16, max_length=32)
    with pytest.raises(KnowacqError, match='another build'):
        merge_shards(other, shards, verbose=False)
    encode_shard(build, 1, 2, shards, verbose=False)                         # a half-done 2-way split beside it
    with pytest.raises(KnowacqError, match=r'lacks the shards of ranks \[0\] of 2'):
        merge_shards(build, shards, verbose=False, world=2)
    merge_shards(build, shards, verbose=False)                               # the complete (3-way) split
    assert not shards.exists()
    merged = pyterrier_dr.FlexIndex(str(tmp_path / 'merged.flex'))
    assert np.array_equal(merged.payload()[1], single.payload()[1])
    assert list(merged.payload()[0]) == list(single.payload()[0])


def test_segmented_faiss_index_searches_as_one(tmp_path):
    """A ColBERT index whose faiss index is written in segments (one held at a time while building) retrieves as
    the one-segment index built from the same tokens."""
    import itertools
    import pandas as pd
    from pyterrier_knowacq.datasets.core import get_dataset
    from pyterrier_knowacq.models.colbert import ColBERTModel
    from pyterrier_knowacq.models.colbert_faiss import SegmentedIndex
    from pyterrier_knowacq.models.colbert_index import FORMAT_SEGMENTED, ColBERTIndex
    docs = list(itertools.islice(get_dataset('msmarco-passage').get_corpus_iter(), 200))
    model = ColBERTModel.new('tiny-bert', dim=16, seed=5, doc_maxlen=64)
    one = ColBERTIndex(tmp_path / 'one', model, faiss_index='ivfpq', verbose=False).index(iter(docs))
    seg = ColBERTIndex(tmp_path / 'seg', model, faiss_index='ivfpq', verbose=False, segment_tokens=3000).index(iter(docs))
    n = one.meta()['num_tokens']
    assert seg.meta()['faiss']['segments'] == -(-n // 3000) > 1 and seg.meta()['format'] == FORMAT_SEGMENTED
    assert 'segments' not in one.meta()['faiss'] and isinstance(seg.payload()[3], SegmentedIndex)
    assert (tmp_path / 'one' / 'tokens.f16').read_bytes() == (tmp_path / 'seg' / 'tokens.f16').read_bytes()
    Q = np.asarray(one.payload()[0][:40], dtype=np.float32)
    for index in (one, seg):
        index.payload()[3].nprobe = 16
    D1, I1 = one.payload()[3].search(Q, 50)
    D2, I2 = seg.payload()[3].search(Q, 50)
    np.testing.assert_allclose(D1, D2, rtol=1e-5, atol=1e-5)
    for d1, i1, d2, i2 in zip(D1, I1, D2, I2):                          # the same tokens, up to ties at the cut
        assert set(i1[d1 > d1[-1] + 1e-5]) == set(i2[d2 > d1[-1] + 1e-5])
    topics = pd.DataFrame({'qid': ['1', '2'], 'query': [docs[5]['text'][:60], docs[100]['text'][:50]]})
    a = one.retriever(model, num_results=5, nprobe=16)(topics)
    b = seg.retriever(model, num_results=5, nprobe=16)(topics)
    pd.testing.assert_frame_equal(a, b)
