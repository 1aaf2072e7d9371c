"""Layer-wise pooled representations of texts, computed once and cached on disk as memory-mapped arrays.

Every hidden layer of a model (the embedding output is layer 0, the last transformer block is layer ``L``) is pooled
with the model's pooling (``cls``, masked ``mean`` or true ``last`` token) into one vector per text. The result is an
array ``[L+1, n_texts, hidden]`` stored as ``.npy`` and opened with ``mmap_mode='r'``, keyed by the model's
fingerprint, the pooling, the maximum length and a hash of the texts, so a second analysis of the same texts costs
nothing and a cache built by another model is never reused silently.

Example::

    from pyterrier_knowacq.analysis.representations import LayerEncoder
    enc = LayerEncoder('minilm-l6', pooling='cls')
    states = enc.encode(['what is a neuron', 'a neuron is a cell'])   # [7, 2, 384], memory-mapped
    last = enc.layer(['what is a neuron'], -1)                        # [1, 384]
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from .._util import KnowacqError, atomic_write_json, cache_dir

__all__ = ['LayerEncoder', 'texts_hash', 'check_pooling', 'position_ids_from_mask', 'accepts_position_ids']

CACHE_FORMAT = 'pyterrier_knowacq.representations/1'


def texts_hash(texts: Sequence[str]) -> str:
    """A stable hash of an ordered list of texts."""
    h = hashlib.sha1()
    for t in texts:
        b = str(t).encode('utf-8')
        h.update(len(b).to_bytes(8, 'little'))
        h.update(b)
    return h.hexdigest()[:20]


def check_pooling(pooling: str, config, model_name: str = '') -> None:
    """Raise :class:`KnowacqError` when ``pooling`` cannot be used with this architecture (``cls`` on a decoder)."""
    from ..models.backbones import is_decoder_config
    from ..models.pooling import get_pooling
    try:
        pool = get_pooling(pooling)
    except ValueError as e:
        raise KnowacqError(str(e)) from None
    if is_decoder_config(config) and not pool.causal_ok:
        raise KnowacqError(f'pooling {pool.name!r} cannot be used with {model_name or config.model_type!r}: it is a causal '
                           f'decoder ({config.model_type}), whose first token sees no other token; use pooling "last" '
                           f'(or "mean")')


def position_ids_from_mask(mask):
    """Positions counted over real tokens only, so left padding gives the same positions as right padding."""
    return (mask.long().cumsum(-1) - 1).clamp_min(0)


def accepts_position_ids(model) -> bool:
    """Whether ``model`` should be given ``position_ids`` counted from the mask: its ``forward`` takes them (BERT,
    ELECTRA, Llama) and its positions start at 0. RoBERTa-style embeddings (a ``padding_idx``) number positions from
    ``padding_idx + 1`` and skip padding themselves, so they are left to do it (0-based ids would shift every one)."""
    import inspect
    if getattr(getattr(model, 'embeddings', None), 'padding_idx', None) is not None:
        return False
    try:
        return 'position_ids' in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


class LayerEncoder:
    """Pooled hidden states of every layer of a model, cached on disk.

    Args:
        model: any name :func:`pyterrier_knowacq.models.backbones.resolve_model` accepts (alias, folder, hub id, ``random:``).
        pooling: ``cls``, ``mean`` or ``last``; ``cls`` on a causal decoder raises :class:`KnowacqError`.
        max_length: tokens per text (longer texts are truncated).
        batch_size: texts per forward pass.
        append_eos: append the EOS token before pooling (default: on for decoders pooled by ``last``, as RepLLaMA).
        padding_side: ``left`` or ``right``; results do not depend on it (positions are computed from the mask).
        tokenizer: where to load the tokenizer from when ``model`` has none (e.g. a bi-encoder's ``query/`` folder).
        cache: whether to store/load the arrays on disk (``$KNOWACQ_CACHE/representations``).
    """

    def __init__(self, model: str, pooling: str = 'cls', *, max_length: int = 128, batch_size: int = 32,
                 append_eos: Optional[bool] = None, padding_side: Optional[str] = None, cache: bool = True,
                 tokenizer: Optional[str] = None):
        from ..models.backbones import is_decoder_config, load_config, model_fingerprint
        self.model_name = str(model)
        self.pooling = str(pooling).lower()
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        self.config = load_config(self.model_name)
        check_pooling(self.pooling, self.config, self.model_name)
        self.is_decoder = is_decoder_config(self.config)
        self.append_eos = (self.is_decoder and self.pooling == 'last') if append_eos is None else bool(append_eos)
        self.tokenizer_name = tokenizer
        if padding_side not in (None, 'left', 'right'):
            raise KnowacqError(f'padding_side must be "left" or "right", got {padding_side!r}')
        self.padding_side = padding_side
        self.cache = cache
        self.fingerprint = model_fingerprint(self.model_name)
        self._model = None
        self._tokenizer = None

    # ------------------------------------------------------------------ model
    @property
    def num_layers(self) -> int:
        """Number of pooled layers (embedding output + every transformer block)."""
        return int(self.config.num_hidden_layers) + 1

    @property
    def dim(self) -> int:
        return int(self.config.hidden_size)

    def _load(self):
        if self._model is None:
            # every weight from the checkpoint (a DPR encoder: the BERT inside it), see backbones.load_encoder
            from ..models.backbones import load_encoder, load_pretrained_encoder, load_tokenizer, resolve_model
            if self.tokenizer_name:
                self._model = load_pretrained_encoder(resolve_model(self.model_name), self.model_name).eval()
                self._tokenizer = load_tokenizer(self.tokenizer_name)
            else:
                self._model, self._tokenizer = load_encoder(self.model_name)
            if self.padding_side:
                self._tokenizer.padding_side = self.padding_side
        return self._model, self._tokenizer

    def check_layer(self, layer: int) -> int:
        """Normalise a layer index (negative counts from the end); out of range raises :class:`KnowacqError`."""
        n = self.num_layers
        if not isinstance(layer, (int, np.integer)) or not -n <= int(layer) < n:
            raise KnowacqError(f'layer {layer!r} is out of range for {self.model_name!r}, which has {n} pooled layers '
                               f'(0 = embeddings .. {n - 1} = last block); use an index in [{-n}, {n - 1}]')
        return int(layer) % n

    def tokenize(self, texts: Sequence[str]):
        """Token ids and mask as tensors (EOS appended for decoders), padded on the tokenizer's side."""
        _, tok = self._load()
        enc = tok(list(texts), truncation=True, max_length=self.max_length - (1 if self.append_eos else 0),
                  add_special_tokens=True)
        ids = enc['input_ids']
        if self.append_eos:
            if tok.eos_token_id is None:
                raise KnowacqError(f'model {self.model_name!r} has no EOS token; set append_eos=False')
            ids = [x if x and x[-1] == tok.eos_token_id else x + [tok.eos_token_id] for x in ids]
        feats = [{'input_ids': x} for x in ids]
        return tok.pad(feats, padding=True, return_tensors='pt')

    def _forward_pooled(self, texts: Sequence[str]) -> np.ndarray:
        import torch
        from ..models.pooling import get_pooling
        model, _ = self._load()
        pool = get_pooling(self.pooling)
        batch = self.tokenize(texts)
        mask = batch['attention_mask']
        kwargs = {'input_ids': batch['input_ids'], 'attention_mask': mask}
        if accepts_position_ids(model):
            kwargs['position_ids'] = position_ids_from_mask(mask)
        with torch.inference_mode():
            out = model(**kwargs, output_hidden_states=True)
        states = out.hidden_states
        if len(states) != self.num_layers:
            raise KnowacqError(f'{self.model_name!r} returned {len(states)} hidden states, expected {self.num_layers}')
        return np.stack([pool(h.float(), mask).numpy() for h in states])  # [L+1, B, H]

    # ------------------------------------------------------------------ cache
    def cache_key(self, texts: Sequence[str]) -> str:
        parts = [self.fingerprint, self.pooling, str(self.max_length), str(self.append_eos), texts_hash(texts)]
        return hashlib.sha1('|'.join(parts).encode()).hexdigest()[:24]

    def _meta(self, texts):
        return {'format': CACHE_FORMAT, 'model': self.model_name, 'fingerprint': self.fingerprint,
                'pooling': self.pooling, 'max_length': self.max_length, 'append_eos': self.append_eos,
                'texts_sha': texts_hash(texts), 'shape': [self.num_layers, len(texts), self.dim]}

    def encode(self, texts: Sequence[str], *, cache_path: Optional[os.PathLike] = None, rebuild: bool = False) -> np.ndarray:
        """All layers' pooled vectors ``[num_layers, len(texts), dim]`` (float32, memory-mapped when cached).

        Args:
            texts: the texts, in the order the rows will have.
            cache_path: an explicit folder for this cache (default: keyed under ``$KNOWACQ_CACHE``). A folder built
                by another model, pooling or text list raises :class:`KnowacqError` unless ``rebuild=True``.
            rebuild: recompute and replace whatever the cache holds.
        """
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((self.num_layers, 0, self.dim), dtype=np.float32)
        if not self.cache and cache_path is None:
            return self._compute(texts)
        folder = Path(cache_path) if cache_path is not None else cache_dir('representations') / self.cache_key(texts)
        meta = self._meta(texts)
        meta_file, array_file = folder / 'meta.json', folder / 'states.npy'
        if folder.exists() and not rebuild:
            if meta_file.exists() and array_file.exists():
                found = json.loads(meta_file.read_text())
                diff = [k for k in ('format', 'fingerprint', 'pooling', 'max_length', 'append_eos', 'texts_sha', 'shape')
                        if found.get(k) != meta[k]]
                if diff:
                    raise KnowacqError(f'representation cache {folder} was built for {found.get("model")!r} '
                                       f'(differs in {", ".join(diff)}), not for {self.model_name!r} with pooling '
                                       f'{self.pooling!r} on these texts; delete the folder or pass rebuild=True')
                return np.load(array_file, mmap_mode='r')
            if any(folder.iterdir()):
                raise KnowacqError(f'{folder} exists but is not a representation cache (no meta.json/states.npy); '
                                   'choose another cache_path or delete it')
        self._write_cache(folder, texts, meta)
        return np.load(array_file, mmap_mode='r')

    def _write_cache(self, folder: Path, texts: List[str], meta: dict) -> None:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f'.{folder.name}.', suffix='.partial'))
        try:
            arr = np.lib.format.open_memmap(tmp / 'states.npy', mode='w+', dtype=np.float32,
                                            shape=(self.num_layers, len(texts), self.dim))
            self._compute(texts, out=arr)
            arr.flush()
            del arr
            atomic_write_json(tmp / 'meta.json', meta)
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _compute(self, texts: List[str], out: Optional[np.ndarray] = None) -> np.ndarray:
        if out is None:
            out = np.zeros((self.num_layers, len(texts), self.dim), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts], kind='stable')  # similar lengths share a batch
        for start in range(0, len(texts), self.batch_size):
            idx = order[start:start + self.batch_size]
            out[:, idx] = self._forward_pooled([texts[i] for i in idx])
        return out

    def layer(self, texts: Sequence[str], layer: int, **kwargs) -> np.ndarray:
        """Pooled vectors of one layer ``[len(texts), dim]`` (negative indices count from the last layer)."""
        layer = self.check_layer(layer)
        return np.asarray(self.encode(texts, **kwargs)[layer])

    def __repr__(self):
        return f'LayerEncoder({self.model_name!r}, pooling={self.pooling!r}, max_length={self.max_length})'
