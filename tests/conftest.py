import os

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / 'shared' / 'data'


def pytest_addoption(parser):
    parser.addoption('--runslow', action='store_true', default=False, help='also run tests marked slow')


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: long-running test, run with --runslow')


def pytest_collection_modifyitems(config, items):
    if config.getoption('--runslow'):
        return
    skip = pytest.mark.skip(reason='slow: run with --runslow (or make test-all)')
    for item in items:
        if 'slow' in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope='session')
def msmarco():
    from pyterrier_knowacq.datasets.core import get_dataset
    return get_dataset('msmarco-passage')


@pytest.fixture
def beir_folder(tmp_path):
    """A five-document BEIR folder, written inline."""
    import json
    root = tmp_path / 'mini-beir'
    (root / 'qrels').mkdir(parents=True)
    docs = [('d1', 'Cats', 'cats purr and sleep most of the day'), ('d2', 'Dogs', 'dogs bark at the postman'),
            ('d3', 'Fish', 'goldfish swim in a bowl of water'), ('d4', 'Birds', 'parrots can imitate human speech'),
            ('d5', 'Cats again', 'a cat chases a mouse around the house')]
    (root / 'corpus.jsonl').write_text(''.join(json.dumps({'_id': i, 'title': t, 'text': x}) + '\n' for i, t, x in docs))
    (root / 'queries.jsonl').write_text(json.dumps({'_id': 'q1', 'text': 'cat'}) + '\n' + json.dumps({'_id': 'q2', 'text': 'dog barking'}) + '\n')
    (root / 'qrels' / 'test.tsv').write_text('query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td5\t2\nq2\td2\t1\n')
    return root


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty knowacq cache that still sees the tiny test models."""
    from pyterrier_knowacq.models.backbones import resolve_model
    models = tmp_path / 'cache' / 'models'
    models.mkdir(parents=True)
    for name in ('tiny-bert', 'tiny-llama'):
        os.symlink(resolve_model(name), models / name)
    monkeypatch.setenv('KNOWACQ_CACHE', str(tmp_path / 'cache'))
    return tmp_path / 'cache'
