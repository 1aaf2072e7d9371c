"""Inference shared by the bi-encoder, the cross-encoder and ColBERT: length-sorted dynamic padding, encoding each
distinct input once, and the input checks and output columns common to the re-rankers."""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import pyterrier as pt
import torch

from .._util import KnowacqError


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> List[np.ndarray]:
    """Indices grouped into batches of similar length (longest first), so padding costs almost nothing."""
    order = np.argsort(-np.asarray(lengths), kind='stable')
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def tokenize(tokenizer, texts: Sequence[str], pairs: Optional[Sequence[str]] = None, max_length: int = 512):
    """Tokenise everything once without padding; returns the encodings as lists."""
    kwargs = dict(truncation='only_second' if pairs is not None else True, max_length=max_length, padding=False)
    enc = tokenizer(list(texts), list(pairs), **kwargs) if pairs is not None else tokenizer(list(texts), **kwargs)
    return enc


def pad_batch(tokenizer, enc, idx: np.ndarray, device) -> dict:
    features = [{k: enc[k][i] for k in enc.keys()} for i in idx]
    batch = tokenizer.pad(features, return_tensors='pt')
    return {k: v.to(device) for k, v in batch.items()}


def run_sorted(fn: Callable[[dict], torch.Tensor], tokenizer, enc, batch_size: int, device, verbose: bool = False,
               desc: str = 'encoding', unit: str = 'text') -> np.ndarray:
    """Apply ``fn`` (a padded batch -> tensor [B, ...]) over length-sorted batches; results in input order."""
    n = len(enc['input_ids'])
    lengths = [len(ids) for ids in enc['input_ids']]
    batches = length_sorted_batches(lengths, batch_size)
    out = None
    progress = None
    if verbose:
        from tqdm.auto import tqdm
        progress = tqdm(total=n, desc=desc, unit=unit)
    with torch.inference_mode():
        for idx in batches:
            res = fn(pad_batch(tokenizer, enc, idx, device)).float().cpu().numpy()
            if out is None:
                out = np.empty((n,) + res.shape[1:], dtype=np.float32)
            out[idx] = res
            if progress is not None:
                progress.update(len(idx))
    if progress is not None:
        progress.close()
    return out if out is not None else np.empty((0,), dtype=np.float32)


def default_device() -> torch.device:
    return torch.device('cuda' if torch.cuda.is_available() else 'cpu')


def distinct(*columns: Sequence, enabled: bool = True, sort: bool = False) -> Tuple[np.ndarray, List[list]]:
    """``(codes, uniques)``: row ``i`` of the columns is ``uniques[c][codes[i]]`` for each column ``c``.

    Identical rows (e.g. a document retrieved for several queries) share one code, so a caller computes each distinct
    row once and broadcasts the result with ``result[codes]``. Uniques come in order of first appearance, so input
    without repeats is computed exactly as before (same order, same batches), or sorted with ``sort=True``.
    ``enabled=False`` keeps every row (codes ``0..n-1``): the per-row path.
    """
    n = len(columns[0])
    if not enabled:
        return np.arange(n), [list(c) for c in columns]
    key, sizes, col_uniques = np.zeros(n, dtype=np.int64), [], []
    for col in columns:
        codes, uniques = pd.factorize(np.asarray(col, dtype=object), sort=sort)
        key = key * len(uniques) + codes      # one int per row; < prod(len(uniques)) <= n ** len(columns)
        col_uniques.append(uniques)
        sizes.append(len(uniques))
    codes, keys = pd.factorize(key, sort=sort)
    uniques = []
    for col, size in zip(reversed(col_uniques), reversed(sizes)):
        uniques.append(list(col[keys % size]))
        keys = keys // size
    return codes, uniques[::-1]


def require_text(inp: pd.DataFrame, field: str, fix: str) -> None:
    """Raise one :class:`KnowacqError` naming ``fix`` when rows of ``inp[field]`` are missing (None, NaN or NA)."""
    missing = inp[field].isna().to_numpy()
    if missing.any():
        n = int(missing.sum())
        first = inp[missing].iloc[0]
        where = ', '.join(f'{c} {first[c]!r}' for c in ('qid', 'docno') if c in inp.columns)
        raise KnowacqError(f'{n} row{"s" if n > 1 else ""} {"have" if n > 1 else "has"} no {field}'
                           f'{f" (first: {where})" if where else ""}; {fix}')


def text_fix(scorer: str, expr: str) -> str:
    """The advice for a re-ranker (``expr`` in a pipeline) given rows without text: load the text first."""
    return f'add dataset.text_loader() before the {scorer}: bm25 >> ds.text_loader() >> {expr}'


def with_scores(inp: pd.DataFrame, scores) -> pd.DataFrame:
    """``inp`` with a float64 ``score`` and an int64 per-query ``rank``, rows in input order (the same dtypes when
    ``inp`` is empty)."""
    return pt.model.add_ranks(inp.assign(score=np.asarray(scores, dtype=np.float64)))
