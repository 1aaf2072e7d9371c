"""PyTerrier-native: one contract per model family, saved models and indexes as pt.Artifacts (loaded in a fresh process
with the same scores, packaged to an archive and back), the knowacq dataset provider, fuse_rank_cutoff, and
PyTerrier's own TransformerTestCase over every transformer of the families."""
import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import threading
import warnings

import numpy as np
import pandas as pd
import pyterrier as pt
import pyterrier.testing
import pytest

from pyterrier_knowacq.models.artifacts import DualEncoderFamily, ModelFamily
from pyterrier_knowacq._util import KnowacqError
from pyterrier_knowacq.models.biencoder import BiEncoder
from pyterrier_knowacq.models.colbert import ColBERT, ColBERTModel
from pyterrier_knowacq.models.colbert_index import ColBERTIndex, ColBERTIndexer
from pyterrier_knowacq.models.crossencoder import CrossEncoder
from pyterrier_knowacq.datasets.core import RunTransformer, TextLoader, get_dataset
from pyterrier_knowacq.models.first_stage import PisaBM25

os.environ.setdefault('PT_TEST_TRANSFORMER_REPORTS', '0')   # TransformerTestCase's per-class report warnings

QUERIES = ['cats', 'dogs barking at night', 'pets']
DOCS = ['cats purr', 'dogs bark loudly at night when the moon is full', 'fish', 'a cat chases a mouse around the house']

#: every family, on the tiny test backbones (tiny-llama: the decoder paths, last-token pooling and EOS)
FAMILIES = {
    'bi-encoder': lambda: BiEncoder.new('tiny-bert', pooling='mean'),
    'bi-encoder (decoder)': lambda: BiEncoder.new('tiny-llama'),
    'cross-encoder': lambda: CrossEncoder.new('tiny-bert', pooling='mean', seed=1),
    'cross-encoder (decoder)': lambda: CrossEncoder.new('tiny-llama', pooling='last', seed=2),
    'colbert': lambda: ColBERTModel.new('tiny-bert', dim=16, seed=3, doc_maxlen=24),
}
TYPES = {'bi-encoder': BiEncoder, 'bi-encoder (decoder)': BiEncoder, 'cross-encoder': CrossEncoder,
         'cross-encoder (decoder)': CrossEncoder, 'colbert': ColBERTModel}


def _frame():
    rows = [(str(q), query, f'd{d}', text) for q, query in enumerate(QUERIES) for d, text in enumerate(DOCS)]
    return pd.DataFrame(rows, columns=['qid', 'query', 'docno', 'text'])


def _outputs(model, frame):
    """What a model computes on a frame: scores, and for dual encoders the query and document encodings."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        out = {'scores': model.scorer()(frame)['score'].tolist()}
        if hasattr(model, 'doc_encoder'):
            docs = model.doc_encoder()(frame[['docno', 'text']].drop_duplicates('docno'))
            queries = model.query_encoder()(frame[['qid', 'query']].drop_duplicates('qid'))
            for key, res, col in (('doc', docs, ('doc_vec', 'doc_embs')), ('query', queries, ('query_vec', 'query_embs'))):
                col = next(c for c in col if c in res.columns)
                out[key] = np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in res[col]]).tolist()
    return out


# the fresh process: load every saved folder with pt.Artifact.load and compute the same outputs
FRESH = textwrap.dedent('''
    import json, sys, warnings
    import pandas as pd, pyterrier as pt
    sys.path.insert(0, sys.argv[2])
    from test_pyterrier_native import _outputs
    spec = json.load(open(sys.argv[1]))
    frame = pd.DataFrame(spec['frame'])
    out = {}
    for name, path in spec['paths'].items():
        artifact = pt.Artifact.load(path)
        out[name] = {'class': type(artifact).__module__ + '.' + type(artifact).__name__, 'path': str(artifact.path),
                     **_outputs(artifact, frame)}
    print('RESULT ' + json.dumps(out))
''')


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
    """Every family built, saved, and its outputs in this process and in a fresh one (one subprocess for all)."""
    root = tmp_path_factory.mktemp('native')
    frame = _frame()
    models, paths, here = {}, {}, {}
    for name, build in FAMILIES.items():
        models[name] = build()
        paths[name] = str(models[name].save(root / name.replace(' ', '-').replace('(', '').replace(')', '')))
        here[name] = _outputs(models[name], frame)
    (root / 'spec.json').write_text(json.dumps({'paths': paths, 'frame': frame.to_dict(orient='list')}))
    proc = subprocess.run([sys.executable, '-c', FRESH, str(root / 'spec.json'), os.path.dirname(__file__)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, 'HF_HUB_OFFLINE': '1'})
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith('RESULT ')]
    assert proc.returncode == 0 and line, proc.stderr[-3000:]
    fresh = json.loads(line[-1][len('RESULT '):])
    return {'root': root, 'models': models, 'paths': paths, 'here': here, 'fresh': fresh, 'frame': frame}


# ---------------------------------------------------------------- the contract
@pytest.mark.parametrize('cls', [BiEncoder, CrossEncoder, ColBERTModel])
def test_every_family_has_the_contract(cls):
    for method in ('new', 'from_pretrained', 'save', 'scorer', 'load', 'build_package', 'to_hf', 'from_hf'):
        assert callable(getattr(cls, method, None)), f'{cls.__name__} lacks {method}'
    assert issubclass(cls, pt.Artifact) and cls.ARTIFACT_FORMAT == 'knowacq'
    if cls is not CrossEncoder:
        assert callable(cls.query_encoder) and callable(cls.doc_encoder)


@pytest.mark.parametrize('name', list(FAMILIES))
def test_contract_on_instances(saved, name):
    model = saved['models'][name]
    assert isinstance(model, ModelFamily) and isinstance(model.scorer(), pt.Transformer)
    assert isinstance(model, DualEncoderFamily) == (not isinstance(model, CrossEncoder))
    if isinstance(model, CrossEncoder):   # the cross-encoder is itself the re-ranker
        assert model.scorer() is model
        pd.testing.assert_frame_equal(model(saved['frame']), model.scorer()(saved['frame']))
    if isinstance(model, ColBERTModel):
        assert isinstance(model.scorer(), ColBERT)
    # X(path) is X.from_pretrained(path): what pt.Artifact.load calls
    again = TYPES[name](saved['paths'][name])
    assert type(again) is TYPES[name] and str(again.path) == saved['paths'][name]
    assert model.path is pt.Artifact.NO_PATH   # built in memory: save() returns the folder to load and package


# ---------------------------------------------------------------- artifacts
@pytest.mark.parametrize('name', list(FAMILIES))
def test_save_then_artifact_load_in_a_fresh_process_gives_the_same_outputs(saved, name):
    here, fresh, path = saved['here'][name], saved['fresh'][name], saved['paths'][name]
    meta = json.loads((saved['root'] / os.path.basename(path) / 'pt_meta.json').read_text())
    assert (meta['type'], meta['format']) == (TYPES[name].ARTIFACT_TYPE, 'knowacq')
    assert fresh['class'] == f'{TYPES[name].__module__}.{TYPES[name].__name__}' and fresh['path'] == path
    for key in here:
        diff = float(np.max(np.abs(np.asarray(here[key]) - np.asarray(fresh[key]))))
        print(f'{name}: {key} max |difference| in a fresh process = {diff:.3g}')
        assert diff <= 1e-6, (key, diff)


@pytest.mark.parametrize('name', list(FAMILIES))
def test_model_card(saved, name):
    card = (saved['root'] / os.path.basename(saved['paths'][name]) / 'README.md').read_text()
    for part in ('## Model', 'backbone: `tiny-', '## Training', '## How it was made', '## Use it in a pipeline',
                 'pt.Artifact.load(', f'{TYPES[name].ARTIFACT_TYPE}.knowacq', 'pytest'):
        assert part in card, part
    if TYPES[name] is not CrossEncoder:
        assert 'pooling' in card or 'dim:' in card


def test_folders_without_pt_meta_still_load(saved, tmp_path):
    """Folders saved before pt_meta.json (and ColBERTv2 checkpoints) are recognised by the metadata adapter."""
    for name in ('bi-encoder', 'cross-encoder', 'colbert'):
        folder = tmp_path / name
        shutil.copytree(saved['paths'][name], folder)
        (folder / 'pt_meta.json').unlink()
        if name == 'colbert':
            (folder / 'knowacq.json').unlink()   # an official ColBERTv2 layout: artifact.metadata + weights
        assert type(pt.Artifact.load(str(folder))) is TYPES[name]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A folder served over loopback HTTP (offline), and an empty PyTerrier home for the artifact cache."""
    monkeypatch.setenv('PYTERRIER_HOME', str(tmp_path / 'pyterrier-home'))
    for var in ('NO_PROXY', 'no_proxy'):
        monkeypatch.setenv(var, '127.0.0.1,localhost')
    folder = tmp_path / 'served'
    folder.mkdir()
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(_QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f'http://127.0.0.1:{server.server_address[1]}'
    server.shutdown()
    server.server_close()


def _package_member(package, name):
    from lz4.frame import LZ4FrameFile
    with LZ4FrameFile(package) as f, tarfile.open(fileobj=f, mode='r|') as tar:
        for member in tar:
            if member.name == name:
                return tar.extractfile(member).read().decode('utf-8')
    return None


def test_archive_round_trip(saved, served, tmp_path, capsys):
    """build_package -> pt.Artifact.from_url (over loopback HTTP) -> the same scores; the packaged card is refreshed
    from the training.json the trainer writes after save(). (to_hf / from_hf are the same package on the hub, which
    this machine cannot reach.)"""
    serve_dir, url = served
    folder = tmp_path / 'ce'
    shutil.copytree(saved['paths']['cross-encoder'], folder)
    (folder / 'training.json').write_text(json.dumps({
        'spec': {'backbone': 'tiny-bert', 'loss': 'lce', 'lr': 3e-5}, 'dataset': 'msmarco-passage', 'split': 'dl20',
        'seed': 42, 'steps': 12, 'best_metric': 0.4321, 'selected': 'best', 'validation_qids': ['1', '2'],
        'validation': {'first_stage': {'nDCG@10': 0.3}, 'start': {'nDCG@10': 0.1}}}))
    artifact = pt.Artifact.load(str(folder))
    package = artifact.build_package(str(serve_dir / 'ce.tar.lz4'), verbose=False)
    card = _package_member(package, 'README.md')
    assert 'best checkpoint | 0.4321' in card and 'first stage | 0.3000' in card and 'lce' in card
    assert _package_member(package, 'pt_meta.json') is not None
    loaded = pt.Artifact.from_url(f'{url}/ce.tar.lz4')
    assert isinstance(loaded, CrossEncoder) and str(loaded.path).startswith(str(tmp_path / 'pyterrier-home'))
    diff = np.max(np.abs(np.asarray(_outputs(loaded, saved['frame'])['scores']) - saved['here']['cross-encoder']['scores']))
    with capsys.disabled():
        print(f'\narchive round trip (cross-encoder): max |score difference| = {diff:.3g}')
    assert diff <= 1e-6
    # the hub page is the model card too
    hf = artifact._hf_readme(repo='someone/tiny-ce', metadata={})
    assert 'pyterrier-artifact.cross_encoder.knowacq' in hf and "pt.Artifact.from_hf('someone/tiny-ce')" in hf


def test_colbert_index_is_an_artifact_built_by_doc_encoder_then_indexer(saved, served, tmp_path):
    serve_dir, url = served
    model = ColBERTModel.from_pretrained(saved['paths']['colbert'])
    docs = [{'docno': f'd{i}', 'text': t} for i, t in enumerate(DOCS * 3)]
    docs = [{**d, 'docno': f'{d["docno"]}-{i}'} for i, d in enumerate(docs)]
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        index = (model.doc_encoder() >> ColBERTIndex(tmp_path / 'pipeline', verbose=False).indexer()).index(docs)
        built = ColBERTIndex(tmp_path / 'built', model, verbose=False).index(docs)   # the old build path
    assert isinstance(index, ColBERTIndex)
    assert (tmp_path / 'pipeline' / 'tokens.f16').read_bytes() == (tmp_path / 'built' / 'tokens.f16').read_bytes()
    assert index.meta()['model_signature'] == built.meta()['model_signature'] is not None
    assert pt.inspect.indexer_inputs(ColBERTIndex(tmp_path / 'x').indexer()) == [['docno', 'doc_embs']]
    loaded = pt.Artifact.load(str(tmp_path / 'pipeline'))
    assert type(loaded) is ColBERTIndex
    topics = pd.DataFrame({'qid': ['1', '2'], 'query': ['cats', 'dogs at night']})
    expected = built.retriever(model, num_results=3)(topics)
    pd.testing.assert_frame_equal(loaded.retriever(num_results=3)(topics), expected)
    package = loaded.build_package(str(serve_dir / 'index.tar.lz4'), verbose=False)
    assert os.path.exists(package + '.json')
    fetched = pt.Artifact.from_url(f'{url}/index.tar.lz4')
    assert type(fetched) is ColBERTIndex
    pd.testing.assert_frame_equal(fetched.retriever(model, num_results=3)(topics), expected)


def test_old_indexer_use_with_text_records_is_deprecated_but_works(saved, tmp_path):
    model = ColBERTModel.from_pretrained(saved['paths']['colbert'])
    docs = [{'docno': f'd{i}', 'text': t} for i, t in enumerate(DOCS)]
    with pytest.warns(DeprecationWarning, match='doc_embs'):
        index = ColBERTIndex(tmp_path / 'old', model, verbose=False).indexer().index(docs)
    assert len(index) == len(DOCS)
    with pytest.raises(KnowacqError, match='string text'):
        (model.doc_encoder() >> ColBERTIndex(tmp_path / 'bad', verbose=False).indexer()).index(
            [{'docno': 'a', 'text': 'x'}, {'docno': 'b', 'text': None}])
    assert not (tmp_path / 'bad').exists()


# ---------------------------------------------------------------- the dataset provider
def test_dataset_provider_embedded_collection():
    ds = pt.get_dataset('knowacq:msmarco-passage')
    assert isinstance(ds, pt.datasets.Dataset)
    topics, qrels = ds.get_topics('dl19'), ds.get_qrels('dl19')
    print(f'knowacq:msmarco-passage dl19: {len(topics)} queries, {len(qrels)} judgements')
    assert len(topics) == 43 and list(topics.columns[:2]) == ['qid', 'query']
    assert {'qid', 'docno', 'label'} <= set(qrels.columns) and set(qrels['qid']) == set(topics['qid'])
    assert len(ds.get_topics('dl20')) == 54
    first = next(iter(ds.get_corpus_iter(verbose=False)))
    assert set(first) == {'docno', 'text'}
    run = ds.get_results('bm25')
    assert {'qid', 'docno', 'score', 'rank'} <= set(run.columns)
    docnos = pd.DataFrame({'qid': '1', 'docno': run['docno'].iloc[:3].tolist()})
    for loader in (pt.text.get_text(ds, 'text'), pt.text.get_text(ds), pt.text.get_text(ds, ['text']), ds.text_loader()):
        out = loader(docnos)
        assert 'text' in out.columns and '*' not in out.columns and out['text'].str.len().min() > 0
    with pytest.raises(ValueError, match='no field'):
        pt.text.get_text(ds, ['title'])
    from pyterrier_knowacq.datasets.pt_provider import KnowacqDatasetProvider
    assert {'msmarco-passage', 'scifact'} <= set(KnowacqDatasetProvider().list_dataset_names())
    knowacq = get_dataset('msmarco-passage')
    assert ds.dataset is knowacq and ds.run_transformer('bm25') == knowacq.run_transformer('bm25')
    with pytest.raises(KeyError):
        pt.get_dataset('knowacq:no-such-collection')


def test_dataset_provider_beir_folder(beir_folder):
    ds = pt.get_dataset(f'knowacq:beir:{beir_folder}')
    assert isinstance(ds, pt.datasets.Dataset)
    assert len(ds.get_topics('test')) == 2 and len(ds.get_qrels('test')) == 3
    assert len(list(ds.get_corpus_iter(verbose=False))) == 5
    out = pt.text.get_text(ds, 'text')(pd.DataFrame({'qid': ['q1'], 'docno': ['d5']}))
    assert out['text'].tolist() == ['Cats again a cat chases a mouse around the house']


def test_text_loader_old_arguments_are_deprecated(msmarco):
    docnos = pd.DataFrame({'docno': [next(iter(msmarco.get_corpus_iter()))['docno']]})
    with pytest.warns(DeprecationWarning):
        assert 'text' in msmarco.text_loader(field='text')(docnos).columns
    with pytest.warns(DeprecationWarning, match='no field'):
        out = msmarco.text_loader('body')(docnos)
    assert 'body' in out.columns and out['body'].iloc[0]
    assert isinstance(msmarco.text_loader(), TextLoader) and msmarco.text_loader() == msmarco.text_loader('*')


# ---------------------------------------------------------------- fuse_rank_cutoff
def test_run_transformer_fuses_rank_cutoff(msmarco):
    run = msmarco.run_transformer('bm25')
    topics = msmarco.get_topics('dl19').head(3)
    fused = (run % 10).compile()
    assert isinstance(fused, RunTransformer) and fused.k == 10
    res = fused(topics)
    assert res.groupby('qid').size().tolist() == [10, 10, 10]
    cut = (run % 10)(topics)
    cols = ['qid', 'docno', 'score', 'rank']
    pd.testing.assert_frame_equal(res[cols].reset_index(drop=True), cut[cols].reset_index(drop=True))
    assert (msmarco.run_transformer('bm25', k=5) % 10).compile().k == 5   # a stricter cutoff is kept
    with_text = ((run >> msmarco.text_loader()) % 4).compile()           # cut before loading text
    assert isinstance(with_text[0], RunTransformer) and with_text[0].k == 4 and isinstance(with_text[1], TextLoader)


def test_pisa_bm25_fuses_rank_cutoff(cache, beir_folder):
    bm25 = PisaBM25(f'beir:{beir_folder}', num_results=1000)
    fused = (bm25 % 2).compile()
    assert isinstance(fused, PisaBM25) and fused.num_results == 2
    topics = pd.DataFrame({'qid': ['q1', 'q2'], 'query': ['cat', 'dog barking']})
    res = fused(topics)
    assert res.groupby('qid').size().max() <= 2
    cols = ['qid', 'docno', 'rank']
    pd.testing.assert_frame_equal(res[cols].reset_index(drop=True), (bm25 % 2)(topics)[cols].reset_index(drop=True))
    assert (PisaBM25('msmarco-passage') % 100).compile().num_results == 100    # retrieves 100, not 1000 then cut
    assert (PisaBM25(f'beir:{beir_folder}', num_results=10) % 100).compile().num_results == 10


# ---------------------------------------------------------------- PyTerrier's own TransformerTestCase
@pytest.fixture(autouse=True)
def _no_documentation_lookup(monkeypatch):
    """The schematic test looks up PyTerrier's documentation over the network: no network here."""
    monkeypatch.setattr(pt.documentation, 'url_for_class', lambda cls: None)


@functools.lru_cache(maxsize=None)
def _models():
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        bi = BiEncoder.new('tiny-bert', pooling='mean')
        ce = CrossEncoder.new('tiny-bert', pooling='mean')
        colbert = ColBERTModel.new('tiny-bert', dim=16, seed=3, doc_maxlen=24)
        folder = tempfile.mkdtemp(prefix='knowacq-ttc-')
        index = ColBERTIndex(os.path.join(folder, 'index'), colbert, verbose=False).index(
            [{'docno': f'd{i}', 'text': t} for i, t in enumerate(DOCS)])
    return bi, ce, colbert, index


TRANSFORMERS = {
    'BiEncoder': lambda: _models()[0],
    'BiEncoderQueryEncoder': lambda: _models()[0].query_encoder(),
    'BiEncoderDocEncoder': lambda: _models()[0].doc_encoder(),
    'BiEncoderScorer': lambda: _models()[0].scorer(),
    'CrossEncoder': lambda: _models()[1],
    'CrossEncoderScorer': lambda: _models()[1].scorer(batch_size=2),
    'ColBERTScorer': lambda: _models()[2].scorer(),
    'ColBERTQueryEncoder': lambda: _models()[2].query_encoder(),
    'ColBERTDocEncoder': lambda: _models()[2].doc_encoder(),
    'ColBERTRetriever': lambda: _models()[3].retriever(num_results=3),
    'ColBERTIndexScorer': lambda: _models()[3].scorer(),
    'TextLoader': lambda: get_dataset('msmarco-passage').text_loader(),
    'RunTransformer': lambda: get_dataset('msmarco-passage').run_transformer('bm25'),
    'PisaBM25': lambda: PisaBM25('msmarco-passage', num_results=10),
}

for _name, _build in TRANSFORMERS.items():
    globals()[f'Test{_name}Case'] = type(f'Test{_name}Case', (pyterrier.testing.TransformerTestCase,),
                                         {'get_transformer': staticmethod(_build), '__module__': __name__})
del _name, _build


def test_the_indexer_declares_its_inputs(tmp_path):
    assert isinstance(ColBERTIndex(tmp_path / 'i').indexer(), ColBERTIndexer)
    assert pt.inspect.indexer_inputs(ColBERTIndex(tmp_path / 'i').indexer()) == [['docno', 'doc_embs']]
