import os

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')

import pytest  # noqa: E402

from protocol import benchmarks_disabled  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def pytest_collection_modifyitems(config, items):
    # Under --benchmark-disable (CI, make test) a benchmark here would still load models and data in its fixtures
    # before the test body could skip: skip at collection, so nothing heavy runs.
    if not benchmarks_disabled(config):
        return
    skip = pytest.mark.skip(reason='benchmarks disabled (--benchmark-disable); run them with make bench')
    for item in items:
        if str(item.path).startswith(HERE) and 'benchmark' in getattr(item, 'fixturenames', ()):
            item.add_marker(skip)
