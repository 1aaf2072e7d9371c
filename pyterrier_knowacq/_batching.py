"""Length-sorted dynamic-padding inference shared by the bi-encoder, the cross-encoder and ColBERT."""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import numpy as np
import torch


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
