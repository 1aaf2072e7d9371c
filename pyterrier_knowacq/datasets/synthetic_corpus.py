"""The texts, queries and qrels of a synthetic collection (see :mod:`.synthetic`), generated deterministically from
``(passages, queries, seed)`` in chunks of :data:`CHUNK` passages (generation memory is flat in the corpus size).

:func:`_generate` writes ``passages.txt`` (one passage a line), ``offsets.u64`` (the byte offset of each line, and the
file size), ``topics.tsv`` and ``qrels.tsv`` into a folder.
"""
from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np

__all__ = ['VOCABULARY', 'MIN_WORDS', 'MAX_WORDS', 'CHUNK']

VOCABULARY = 50_000
MIN_WORDS, MAX_WORDS = 12, 28
CHUNK = 50_000              # passages generated (and written) at a time: generation memory is flat too
_CONSONANTS, _VOWELS = 'bdfghjklmnprstvz', 'aeiou'


def _vocabulary(seed: int) -> List[str]:
    """``VOCABULARY`` distinct pronounceable three-syllable words, most frequent first."""
    syllables = [c + v for c in _CONSONANTS for v in _VOWELS]
    n = len(syllables)
    picks = np.random.default_rng([seed, 1]).choice(n ** 3, VOCABULARY, replace=False)
    return [syllables[i // (n * n)] + syllables[(i // n) % n] + syllables[i % n] for i in picks.tolist()]


def _zipf_cdf() -> np.ndarray:
    weights = 1.0 / (np.arange(VOCABULARY) + 2.7) ** 1.05
    cdf = np.cumsum(weights)
    return cdf / cdf[-1]


def _plan(passages: int, queries: int, seed: int):
    """The queries (word ids) and, per passage that gets words injected, ``[(position, word id), ...]``."""
    rng = np.random.default_rng([seed, 2])
    targets = rng.choice(passages, 2 * queries, replace=False)
    rare_lo, mid_lo = VOCABULARY // 4, 100
    seen, plan, inject = set(), [], {}
    for q in range(queries):
        while True:
            r1, r2 = (int(x) for x in rng.choice(np.arange(rare_lo, VOCABULARY), 2, replace=False))
            mid, common = int(rng.integers(mid_lo, rare_lo)), int(rng.integers(0, mid_lo))
            words = [r1, r2, mid, common]
            order = rng.permutation(4).tolist()
            key = tuple(words[i] for i in order)
            if key not in seen:
                break
        seen.add(key)
        plan.append(key)
        rel, partial = int(targets[q]), int(targets[queries + q])
        pos = rng.choice(MIN_WORDS, 3, replace=False).tolist()   # within every passage's length
        inject[rel] = [(pos[0], r1), (pos[1], r2)] + ([(pos[2], mid)] if rng.random() < 0.5 else [])
        inject[partial] = [(pos[0], r1), (pos[2], mid)]
    return plan, targets, inject


def _generate(folder: Path, passages: int, queries: int, seed: int) -> None:
    vocab = _vocabulary(seed)
    cdf = _zipf_cdf()
    plan, targets, inject = _plan(passages, queries, seed)
    offset = 0
    with open(folder / 'passages.txt', 'wb') as text, open(folder / 'offsets.u64', 'wb') as offsets:
        for c, start in enumerate(range(0, passages, CHUNK)):
            n = min(CHUNK, passages - start)
            rng = np.random.default_rng([seed, 3, c])
            lengths = rng.integers(MIN_WORDS, MAX_WORDS + 1, size=n)
            ids = np.searchsorted(cdf, rng.random(int(lengths.sum())), side='right')
            np.minimum(ids, VOCABULARY - 1, out=ids)
            bounds = np.concatenate([[0], np.cumsum(lengths)])
            for i in range(start, start + n):
                for pos, word in inject.get(i, ()):
                    ids[bounds[i - start] + pos] = word
            words = [vocab[i] for i in ids.tolist()]
            lines = [' '.join(words[bounds[j]:bounds[j + 1]]) + '\n' for j in range(n)]
            data = ''.join(lines).encode('ascii')
            sizes = np.fromiter((len(line) for line in lines), dtype=np.int64, count=n)
            starts = offset + np.concatenate([[0], np.cumsum(sizes)[:-1]])
            starts.astype('<u8').tofile(offsets)
            text.write(data)
            offset += len(data)
        np.asarray([offset], dtype='<u8').tofile(offsets)
    with open(folder / 'topics.tsv', 'w', encoding='utf-8') as f:
        f.write('qid\tquery\n')
        for q, words in enumerate(plan):
            f.write(f'{q}\t{" ".join(vocab[w] for w in words)}\n')
    with open(folder / 'qrels.tsv', 'w', encoding='utf-8') as f:
        f.write('qid\tdocno\tlabel\n')
        for q in range(queries):
            f.write(f'{q}\t{int(targets[q])}\t2\n{q}\t{int(targets[queries + q])}\t1\n')
