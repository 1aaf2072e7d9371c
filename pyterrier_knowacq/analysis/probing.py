"""Linear probes that ask which of N passages is the relevant one, from one layer's pooled vectors.

Two probes (a registry, ``PROBES``):

* ``concat`` — the study's concatenation probe: ``z = [q; p_1; ...; p_N]`` -> N logits (softmax regression). The
  passage order is shuffled per example, so position carries no signal. It cannot compute a query-passage match
  with a linear map; it is kept to reproduce the study.
* ``interaction`` — scores each passage from ``q ⊙ p_i`` with one weight vector shared by all positions
  (``s_i = w·(q ⊙ p_i) + b``), a softmax over the N scores; a linear probe that *can* see the match.

Both are trained full-batch with L-BFGS on standardised features until the objective settles, the L2 strength
chosen from a grid by validation accuracy, with early stopping on validation loss (best weights restored). Every call is seeded, so the same inputs give the same
predictions on CPU.

Example::

    from pyterrier_knowacq.analysis.probing import probe_layer
    res = probe_layer('interaction', q_vecs, p_vecs, label, train_mask, val_mask, test_mask, seed=0)
    res.accuracy, res.correct        # test accuracy and a boolean per test example
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Type, Union

import numpy as np

from .._util import KnowacqError

__all__ = ['Probe', 'ConcatProbe', 'InteractionProbe', 'PROBES', 'get_probe', 'probe_layer', 'probe_layers', 'ProbeResult', 'gather']


class Probe:
    """A probe turns ``q [E,H]`` and ``P [E,N,H]`` into features and a linear model over them."""
    name = ''

    def features(self, q: np.ndarray, p: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def build(self, feat_dim: int, n: int):
        raise NotImplementedError

    def __repr__(self):
        return f'{type(self).__name__}()'


class ConcatProbe(Probe):
    """``[q; p_1 .. p_N]`` -> N logits with one linear layer."""
    name = 'concat'

    def features(self, q, p):
        return np.concatenate([q, p.reshape(p.shape[0], -1)], axis=1)  # [E, (N+1)H]

    def build(self, feat_dim, n):
        import torch
        return torch.nn.Linear(feat_dim, n)


class InteractionProbe(Probe):
    """``s_i = w·(q ⊙ p_i) + b`` with ``w`` shared over passages."""
    name = 'interaction'

    def features(self, q, p):
        return q[:, None, :] * p  # [E, N, H]

    def build(self, feat_dim, n):
        import torch

        class Shared(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.linear = torch.nn.Linear(feat_dim, 1)

            def forward(self, x):  # [E, N, H] -> [E, N]
                return self.linear(x).squeeze(-1)
        return Shared()


PROBES: Dict[str, Type[Probe]] = {c.name: c for c in (ConcatProbe, InteractionProbe)}


def get_probe(name) -> Probe:
    if isinstance(name, Probe):
        return name
    try:
        return PROBES[str(name)]()
    except KeyError:
        raise KnowacqError(f'unknown probe {name!r}; choose one of {sorted(PROBES)}') from None


@dataclass
class ProbeResult:
    probe: str
    accuracy: float
    correct: np.ndarray        # [test examples] bool
    val_accuracy: float
    l2: float
    epochs: int


def _fit(model, x_tr, y_tr, x_va, y_va, *, l2: float, max_epochs: int, patience: int):
    """Full-batch L-BFGS on cross-entropy + ``l2 * ||W||^2``, checked on validation every few iterations; the
    weights with the lowest validation loss are kept (early stopping); stops when the training objective settles."""
    import torch
    opt = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=5, history_size=20, line_search_fn='strong_wolfe')
    loss_fn = torch.nn.CrossEntropyLoss()

    def objective():
        opt.zero_grad()
        reg = sum((w ** 2).sum() for n, w in model.named_parameters() if 'bias' not in n)
        total = loss_fn(model(x_tr), y_tr) + l2 * reg
        total.backward()
        return total
    best = (float('inf'), None, 0)
    bad, prev, it = 0, None, 0
    for it in range(1, max(1, max_epochs // 5) + 1):
        value = float(opt.step(objective).detach())
        with torch.no_grad():
            v = float(loss_fn(model(x_va), y_va))
        if v < best[0] - 1e-6:
            best = (v, {k: t.detach().clone() for k, t in model.state_dict().items()}, it * 5)
            bad = 0
        else:
            bad += 1
            if bad >= patience:
                break
        if prev is not None and abs(prev - value) < 1e-7 * max(1.0, abs(value)):
            break
        prev = value
    if best[1] is not None:
        model.load_state_dict(best[1])
    return best[2]


def probe_layer(probe, q: np.ndarray, p: np.ndarray, label: np.ndarray, train: np.ndarray, val: np.ndarray,
                test: np.ndarray, *, seed: int = 0, l2_grid: Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1),
                lr: Optional[float] = None, max_epochs: int = 300, patience: int = 4) -> ProbeResult:
    """Train ``probe`` on the train examples of one layer and evaluate it on the test examples.

    Args:
        q: query vectors ``[E, H]``; p: passage vectors ``[E, N, H]``; label: index of the positive ``[E]``.
        train, val, test: boolean masks over the E examples (split by query upstream).
        l2_grid: L2 strengths tried; the one with the best validation accuracy (then loss) is kept.
        max_epochs: L-BFGS iterations at most; patience: validation checks (every 5 iterations) without improvement.
        lr: unused (kept for configuration compatibility; L-BFGS uses a line search).
    """
    return probe_layers([dict(probe=probe, q=q, p=p, label=label, train=train, val=val, test=test, seed=seed,
                              l2_grid=l2_grid, lr=lr, max_epochs=max_epochs, patience=patience)], workers=1)[0]


def probe_layers(jobs: Sequence[Union[Dict, Callable[[], Dict]]], *, workers: Optional[int] = None) -> List[ProbeResult]:
    """Several :func:`probe_layer` fits on a thread pool; results in job order.

    A job is a dict of :func:`probe_layer`'s arguments, or a function returning one: it is then called only when its
    fit starts, so no more than ``workers`` jobs' inputs are in memory at once (a 4096-dim model's layers add up).
    Each fit is a small full-batch problem that one thread runs best, so a fit gets one torch thread and ``workers``
    fits (default: torch's thread count) run side by side, keeping every core busy. The results are the ones
    :func:`probe_layer` gives one by one: a fit's only randomness is its seeded initialisation, drawn under a lock.

    Example::

        jobs = [lambda l=l: dict(probe='concat', q=q[l], p=p[l], label=y, train=tr, val=va, test=te) for l in layers]
        accuracies = [r.accuracy for r in probe_layers(jobs)]
    """
    import torch

    def run(job):
        return _probe_layer(**(job() if callable(job) else job))
    threads = torch.get_num_threads()
    workers = max(1, min(len(jobs), int(workers or threads)))
    torch.set_num_threads(1)   # tiny full-batch problems: extra threads inside one fit only contend
    try:
        if workers == 1:
            return [run(job) for job in jobs]
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(workers) as pool:   # torch releases the GIL inside its kernels
            return list(pool.map(run, jobs))
    finally:
        torch.set_num_threads(threads)


#: seeding and building a probe use torch's global generator: one fit at a time, so parallel fits init alike
_INIT_LOCK = threading.Lock()


def _probe_layer(probe, q, p, label, train, val, test, *, seed: int = 0,
                 l2_grid: Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1), lr: Optional[float] = None, max_epochs: int = 300,
                 patience: int = 4) -> ProbeResult:
    """:func:`probe_layer` on the calling thread with the torch threads as they are (``lr`` is unused)."""
    import torch
    probe = get_probe(probe)
    q = np.asarray(q, dtype=np.float32)
    p = np.asarray(p, dtype=np.float32)
    if p.ndim != 3 or q.ndim != 2 or p.shape[0] != q.shape[0] or p.shape[2] != q.shape[1]:
        raise KnowacqError(f'probe inputs must be q [E,H] and p [E,N,H], got {q.shape} and {p.shape}')
    for name, m in (('train', train), ('validation', val), ('test', test)):
        if not np.any(m):
            raise KnowacqError(f'the probe {name} split is empty; use more queries')
    feats = probe.features(q, p).astype(np.float32)
    mu = feats[train].reshape(-1, feats.shape[-1]).mean(0)
    sd = feats[train].reshape(-1, feats.shape[-1]).std(0) + 1e-6
    feats = (feats - mu) / sd
    x = torch.from_numpy(np.ascontiguousarray(feats))
    y = torch.from_numpy(np.asarray(label, dtype=np.int64))
    n = p.shape[1]
    best = None
    for l2 in l2_grid:
        with _INIT_LOCK:
            torch.manual_seed(seed)
            model = probe.build(feats.shape[-1], n)
        epochs = _fit(model, x[train], y[train], x[val], y[val], l2=l2, max_epochs=max_epochs, patience=patience)
        model.eval()
        with torch.no_grad():
            va_logits = model(x[val])
            va_acc = float((va_logits.argmax(-1) == y[val]).float().mean())
            va_loss = float(torch.nn.functional.cross_entropy(va_logits, y[val]))
        key = (va_acc, -va_loss)
        if best is None or key > best[0]:
            with torch.no_grad():
                pred = model(x[test]).argmax(-1).numpy()
            best = (key, l2, epochs, pred)
    (va_acc, _), l2, epochs, pred = best
    correct = pred == np.asarray(label)[test]
    return ProbeResult(probe.name, float(correct.mean()), correct, va_acc, float(l2), int(epochs))


def gather(states_q: np.ndarray, states_p: np.ndarray, q_idx: np.ndarray, p_idx: np.ndarray):
    """Per-example inputs from one layer's query and passage vectors: ``q [E,H]``, ``p [E,N,H]``."""
    return np.asarray(states_q)[q_idx], np.asarray(states_p)[p_idx]
