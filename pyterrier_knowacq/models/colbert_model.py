"""The ColBERTv2-compatible late-interaction model (:class:`ColBERTModel`) and MaxSim.

The model reproduces ColBERTv2's encoding (stanford-futuredata/ColBERT, ``colbert/modeling``): a BERT encoder plus a
bias-free linear projection to ``dim`` (128) dimensions; ``[unused0]`` / ``[unused1]`` markers after ``[CLS]`` for
queries / documents; queries padded with ``[MASK]`` to ``query_maxlen`` (32) whose positions are not attended to but
are kept as query vectors; documents truncated to ``doc_maxlen`` (180) with punctuation tokens skipped; L2-normalised
token vectors; the score is MaxSim summed over query tokens.

Its PyTerrier transformers (the :class:`~pyterrier_knowacq.models.colbert.ColBERT` re-ranker, the query and doc
encoders) live in :mod:`pyterrier_knowacq.models.colbert`, which re-exports everything here and is the path to import
from::

    from pyterrier_knowacq.models.colbert import ColBERTModel
    model = ColBERTModel.new('minilm-l6')
"""
from __future__ import annotations

import json
import re
import string
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Union

import numpy as np
import pyterrier as pt

from .artifacts import ModelArtifact, describe_config, is_path
from .._util import KnowacqError, atomic_directory, atomic_write_json
from .packed import last_hidden_state
from .quantize import check_quantize, quantized_copy

if TYPE_CHECKING:   # the transformers import this module; the model imports them when it builds one
    from .colbert import ColBERT, ColBERTDocEncoder, ColBERTQueryEncoder

__all__ = ['ColBERTModel', 'maxsim', 'maxsim_matrix', 'DEFAULT_CONFIG']

#: ColBERTv2 defaults (colbert/infra/config/settings.py); ``artifact.metadata`` overrides them.
DEFAULT_CONFIG = {'query_maxlen': 32, 'doc_maxlen': 180, 'dim': 128, 'mask_punctuation': True, 'similarity': 'cosine',
                  'query_token_id': '[unused0]', 'doc_token_id': '[unused1]', 'attend_to_mask_tokens': False}
_WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin')


def _torch():
    import torch
    return torch


def _read_state_dict(folder: Path) -> Dict:
    torch = _torch()
    if (folder / 'model.safetensors').exists():
        from safetensors.torch import load_file
        return load_file(str(folder / 'model.safetensors'))
    if (folder / 'pytorch_model.bin').exists():
        return torch.load(str(folder / 'pytorch_model.bin'), map_location='cpu', weights_only=True)
    raise KnowacqError(f'{folder} holds no model.safetensors or pytorch_model.bin, so it is not a ColBERT checkpoint; '
                       'point to a folder written by ColBERTModel.save() or a ColBERTv2 checkpoint folder')


def _checkpoint_folder(name: Union[str, Path]) -> Path:
    """A local folder for a checkpoint name (local folder, packaged alias or hub id such as colbert-ir/colbertv2.0)."""
    from .backbones import resolve_model
    path = Path(str(name)).expanduser()
    if path.is_dir():
        return path
    resolved = resolve_model(str(name))
    if Path(resolved).is_dir():
        return Path(resolved)
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(resolved))
    except Exception as e:  # network errors, missing repos
        raise KnowacqError(f'could not download ColBERT checkpoint {name!r} ({e}); use a local checkpoint folder') from e


class ColBERTModel(_torch().nn.Module, ModelArtifact):
    """A BERT encoder with a bias-free projection to ``dim`` dims, encoding queries and documents as ColBERTv2 does.

    ``encode_queries`` / ``encode_docs`` keep gradients (for training); wrap them in ``torch.inference_mode()`` to score.
    As PyTerrier transformers: :meth:`scorer`, :meth:`query_encoder`, :meth:`doc_encoder`.

    ``ColBERTModel(path, **overrides)`` is ``ColBERTModel.from_pretrained(path, **overrides)`` (what
    ``pt.Artifact.load`` calls); in memory, ``ColBERTModel(encoder, tokenizer, config, linear=..., name=...)``.

    ``quantize='int8'`` (CPU only): encoding without gradients (scoring, the query and doc encoders, indexing) runs an
    int8 copy of the encoder made here (:mod:`~pyterrier_knowacq.models.quantize`); training and :meth:`save` use the
    fp32 weights.
    """
    ARTIFACT_TYPE = 'colbert_model'

    def __init__(self, encoder, tokenizer=None, config: Optional[Dict] = None, linear=None, name: Optional[str] = None,
                 quantize: Optional[str] = None, **overrides):
        if is_path(encoder):
            if tokenizer is not None or config is not None or linear is not None:
                raise KnowacqError('ColBERTModel(path) loads everything from the folder; pass settings such as '
                                   'doc_maxlen=300 as keywords, not a tokenizer, config or projection')
            self._adopt(type(self).from_pretrained(encoder, quantize=quantize, **overrides))
            return
        if tokenizer is None:
            raise KnowacqError('ColBERTModel(encoder, tokenizer) needs the tokenizer of an in-memory encoder; or load a '
                               'checkpoint with ColBERTModel(path) / ColBERTModel.from_pretrained(path)')
        super().__init__()
        self._set_artifact_path(None)
        torch = _torch()
        self.config = {**DEFAULT_CONFIG, **(config or {}), **overrides}
        self.bert = encoder
        self.tokenizer = tokenizer
        hidden = encoder.config.hidden_size
        self.linear = linear if linear is not None else torch.nn.Linear(hidden, int(self.config['dim']), bias=False)
        if self.linear.in_features != hidden:
            raise KnowacqError(f'projection expects {self.linear.in_features} inputs but the encoder has {hidden} dims; '
                               'the checkpoint folder mixes two models')
        self.config['dim'] = self.linear.out_features
        self.name = name
        self.backbone = str(name)
        vocab = tokenizer.get_vocab()
        for key in ('query_token_id', 'doc_token_id'):
            if self.config[key] not in vocab:
                raise KnowacqError(f'marker token {self.config[key]!r} ({key}) is not in the tokenizer vocabulary; '
                                   'ColBERT needs a BERT-style vocabulary with [unused0]/[unused1]')
        if tokenizer.mask_token_id is None or tokenizer.cls_token_id is None:
            raise KnowacqError('the tokenizer has no [MASK] or [CLS] token; ColBERT needs a BERT-style tokenizer')
        self.q_marker = tokenizer.convert_tokens_to_ids(self.config['query_token_id'])
        self.d_marker = tokenizer.convert_tokens_to_ids(self.config['doc_token_id'])
        self.skiplist = set()
        if self.config['mask_punctuation']:
            for symbol in string.punctuation:
                ids = tokenizer.encode(symbol, add_special_tokens=False)
                if ids:
                    self.skiplist.add(ids[0])
        self._skip_tensor = torch.tensor(sorted(self.skiplist) or [-1], dtype=torch.long)
        self._warned_truncation = False
        self._set_quantize(quantize)

    def _set_quantize(self, quantize: Optional[str]) -> None:
        """``self.quantize`` and the int8 copy (a plain attribute: not a submodule, so not in ``state_dict``)."""
        quantize = check_quantize(quantize, self._device())
        object.__setattr__(self, 'quantize', quantize)
        object.__setattr__(self, '_int8', None)
        if quantize:
            int8 = quantized_copy(self, share=(self.tokenizer,), tokenizer=self.tokenizer)
            object.__setattr__(self, '_int8', int8)

    def quantized(self, quantize: Optional[str]) -> 'ColBERTModel':
        """This model with ``quantize`` (``'int8'`` or ``None``): ``self`` when it already has it, else a shallow copy
        sharing the fp32 weights, tokenizer and settings (this model is left as it was)."""
        if check_quantize(quantize, self._device()) == getattr(self, 'quantize', None):
            return self
        import copy
        other = copy.copy(self)
        other._set_quantize(quantize)
        return other

    # ---------------------------------------------------------------- construction and IO
    @classmethod
    def new(cls, backbone: str, *, dim: int = 128, seed: int = 0, quantize: Optional[str] = None,
            **config) -> 'ColBERTModel':
        """A fresh ColBERT from any BERT-style backbone name (e.g. ``minilm-l6``) with a seeded random projection.

        The projection is the only new weight: the backbone loads with every weight from its checkpoint
        (:func:`~pyterrier_knowacq.models.backbones.load_encoder`)."""
        from .backbones import load_encoder
        torch = _torch()
        encoder, tokenizer = load_encoder(backbone)
        gen = torch.Generator().manual_seed(int(seed))
        linear = torch.nn.Linear(encoder.config.hidden_size, int(dim), bias=False)
        with torch.no_grad():
            bound = 1.0 / np.sqrt(encoder.config.hidden_size)
            linear.weight.copy_(torch.rand(linear.weight.shape, generator=gen) * 2 * bound - bound)
        return cls(encoder, tokenizer, {**config, 'dim': int(dim)}, linear=linear, name=str(backbone), quantize=quantize)

    @classmethod
    def from_pretrained(cls, name: Union[str, Path], quantize: Optional[str] = None, **overrides) -> 'ColBERTModel':
        """Load a ColBERTv2 checkpoint folder or hub id; ``overrides`` replace ``artifact.metadata`` values (e.g.
        doc_maxlen); ``quantize='int8'`` encodes with an int8 copy (CPU only, see the class).

        Every encoder weight (``bert.*``) and the projection (``linear.weight``) come from the checkpoint; any other
        missing weight raises :class:`KnowacqError`. An absent pooler (ColBERT never reads it) is removed, not left
        random.
        """
        torch = _torch()
        folder = _checkpoint_folder(name)
        if not (folder / 'config.json').exists() or not any((folder / f).exists() for f in _WEIGHT_FILES):
            raise KnowacqError(f'{folder} is not a ColBERT checkpoint (needs config.json and model.safetensors or '
                               'pytorch_model.bin with bert.* and linear.weight); point to a ColBERTv2 checkpoint folder')
        state = _read_state_dict(folder)
        if 'linear.weight' not in state:
            raise KnowacqError(f'{folder} holds a model without a ColBERT projection (no linear.weight), so it is not a '
                               'ColBERT checkpoint; build one with ColBERTModel.new(backbone) and save() it')
        config, backbone = {}, None
        if (folder / 'knowacq.json').exists():
            try:
                backbone = json.loads((folder / 'knowacq.json').read_text()).get('backbone')
            except (json.JSONDecodeError, AttributeError):
                backbone = None
        if (folder / 'artifact.metadata').exists():
            try:
                meta = json.loads((folder / 'artifact.metadata').read_text())
            except json.JSONDecodeError as e:
                raise KnowacqError(f'{folder}/artifact.metadata is not valid JSON ({e}); restore it from the checkpoint') from e
            config = {k: meta[k] for k in DEFAULT_CONFIG if k in meta}
        config.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(config) - set(DEFAULT_CONFIG)
        if unknown:
            raise KnowacqError(f'unknown ColBERT settings {sorted(unknown)}; known: {sorted(DEFAULT_CONFIG)}')
        from transformers import AutoConfig, AutoModel, AutoTokenizer
        from .backbones import ALLOWED_MISSING, _missing_error
        hf_config = AutoConfig.from_pretrained(str(folder))
        encoder = AutoModel.from_config(hf_config, dtype=torch.float32)
        prefix = encoder.base_model_prefix + '.'
        enc_state = {k[len(prefix):]: v.float() for k, v in state.items() if k.startswith(prefix)}
        try:
            missing, _ = encoder.load_state_dict(enc_state, strict=False)
        except RuntimeError as e:   # shapes that do not fit config.json
            raise KnowacqError(f'{folder}: the encoder weights do not fit its config.json ({str(e).splitlines()[-1].strip()}); '
                               'the checkpoint folder mixes two models') from None
        position_ids, pooler = (re.compile(p) for p in ALLOWED_MISSING)
        missing = [k for k in missing if not position_ids.search(k)]
        if any(pooler.match(k) for k in missing) and getattr(encoder, 'pooler', None) is not None:
            encoder.pooler = None   # ColBERT reads token states only: an absent pooler is removed, not left random
            missing = [k for k in missing if not pooler.match(k)]
        if missing:
            raise _missing_error(name, f'ColBERT encoder {type(encoder).__name__}', [prefix + k for k in missing], folder,
                                 'the ColBERT checkpoint is incomplete or of another encoder: re-download it, or '
                                 're-save it with ColBERTModel.save()')
        weight = state['linear.weight'].float()
        linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        with torch.no_grad():
            linear.weight.copy_(weight)
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        model = cls(encoder.eval(), tokenizer, config, linear=linear, name=str(name), quantize=quantize).eval()
        model.backbone = str(backbone or name)
        # the folder reproduces this model only when no override changed its settings
        model._set_artifact_path(None if any(v is not None for v in overrides.values()) else folder)
        return model

    def save(self, folder: Union[str, Path], overwrite: bool = True) -> Path:
        """Write the checkpoint in the ColBERTv2 layout (safetensors ``bert.*`` + ``linear.weight``, ``artifact.metadata``)
        with ``knowacq.json``, ``pt_meta.json`` (so ``pt.Artifact.load`` finds it) and the model card ``README.md``,
        atomically; returns the folder."""
        folder = Path(folder)
        with atomic_directory(folder, overwrite=overwrite) as tmp:
            self.write(tmp)
        return folder

    def write(self, tmp: Path, tensors: Optional[Dict] = None) -> None:
        """Write the checkpoint files into an existing folder (use :meth:`save` for an atomic write)."""
        from safetensors.torch import save_file
        if tensors is None:
            prefix = self.bert.base_model_prefix
            tensors = {f'{prefix}.{k}': v.detach().float().cpu().contiguous().clone() for k, v in self.bert.state_dict().items()}
            tensors['linear.weight'] = self.linear.weight.detach().float().cpu().contiguous().clone()
        tmp = Path(tmp)
        save_file(tensors, str(tmp / 'model.safetensors'), metadata={'format': 'pt'})
        hf_config = self.bert.config.to_dict()
        hf_config['architectures'] = ['HF_ColBERT']
        atomic_write_json(tmp / 'config.json', hf_config)
        self.tokenizer.save_pretrained(str(tmp))
        atomic_write_json(tmp / 'artifact.metadata', {**self.config, 'checkpoint': self.name})
        atomic_write_json(tmp / 'knowacq.json', {'kind': 'colbert', 'dim': self.config['dim'], 'backbone': self.backbone})
        self._write_artifact_files(tmp, {
            'backbone': self.backbone, 'architecture': describe_config(self.bert.config),
            'settings': {k: self.config[k] for k in ('dim', 'query_maxlen', 'doc_maxlen', 'mask_punctuation',
                                                     'similarity', 'attend_to_mask_tokens') if k in self.config}})

    # ---------------------------------------------------------------- the family contract: PyTerrier transformers
    def scorer(self, **kwargs) -> 'ColBERT':
        """Re-ranks ``qid, query, docno, text`` by MaxSim (a :class:`ColBERT` over this model; ``kwargs`` as there)."""
        from .colbert import ColBERT
        return ColBERT(self, **kwargs)

    def query_encoder(self, batch_size: int = 128, verbose: bool = False) -> 'ColBERTQueryEncoder':
        """``qid, query`` -> adds ``query_embs`` (float32 ``[query_maxlen, dim]`` per row)."""
        from .colbert import ColBERTQueryEncoder
        return ColBERTQueryEncoder(self, batch_size=batch_size, verbose=verbose)

    def doc_encoder(self, batch_size: int = 32, verbose: bool = False, text_field: str = 'text',
                    dedup: bool = True) -> 'ColBERTDocEncoder':
        """``docno, text`` -> adds ``doc_embs`` (float32 ``[kept tokens, dim]`` per row: no padding, no punctuation),
        which ``ColBERTIndex(path).indexer()`` stores."""
        from .colbert import ColBERTDocEncoder
        return ColBERTDocEncoder(self, batch_size=batch_size, verbose=verbose, text_field=text_field, dedup=dedup)

    def _device(self):
        return next(self.parameters()).device

    def query_embeddings(self, queries: Sequence[str], batch_size: int = 128):
        """float32 ``[len(queries), query_maxlen, dim]`` (no gradients), in input order."""
        torch = _torch()
        device, out = self._device(), []
        with torch.inference_mode():
            for s in range(0, len(queries), batch_size):
                ids, mask = self.tokenize_queries(list(queries[s:s + batch_size]))
                out.append(self.encode_queries(ids.to(device), mask.to(device)).float().cpu().numpy())
        if not out:
            return np.zeros((0, int(self.config['query_maxlen']), int(self.config['dim'])), dtype=np.float32)
        return np.concatenate(out)

    def doc_embeddings(self, docs: Sequence[str], batch_size: int = 32, verbose: bool = False) -> List[np.ndarray]:
        """The kept token vectors of each document (float32 ``[n_i, dim]``, no gradients), in input order; documents
        are tokenised once and encoded longest first in batches of ``batch_size``."""
        torch = _torch()
        toks = self.doc_token_ids(list(docs)) if len(docs) else []
        order = np.argsort([-len(t) for t in toks], kind='stable')
        device, out = self._device(), [None] * len(toks)
        with torch.inference_mode():
            for s in pt.tqdm(range(0, len(order), batch_size), desc='ColBERT docs', unit='batch', disable=not verbose):
                sel = order[s:s + batch_size]
                ids, mask = self.pad_docs([toks[j] for j in sel])
                D, keep = self.encode_docs(ids.to(device), mask.to(device))
                D, keep = D.float().cpu().numpy(), keep.cpu().numpy()
                for row, j in enumerate(sel):
                    out[j] = D[row][keep[row]]
        return out

    # ---------------------------------------------------------------- tokenisation
    def tokenize_queries(self, queries: Sequence[str]):
        """``(input_ids, attention_mask)`` [B, query_maxlen]: ``[CLS] [Q] text [SEP] [MASK]...`` as ColBERTv2 builds them."""
        torch = _torch()
        qlen = int(self.config['query_maxlen'])
        enc = self.tokenizer(['. ' + q for q in queries], padding='max_length', truncation=True, max_length=qlen,
                             return_tensors='pt', return_token_type_ids=False)
        ids, mask = enc['input_ids'], enc['attention_mask']
        ids[:, 1] = self.q_marker
        ids[ids == self.tokenizer.pad_token_id] = self.tokenizer.mask_token_id
        if self.config['attend_to_mask_tokens']:
            mask = torch.ones_like(mask)
        return ids, mask

    def doc_token_ids(self, docs: Sequence[str]) -> List[List[int]]:
        """Token ids of each document, ``[CLS] [D] text [SEP]``, truncated to ``doc_maxlen`` (warns once)."""
        dlen = int(self.config['doc_maxlen'])
        out = self.tokenizer(['. ' + d for d in docs], add_special_tokens=True, truncation=False, verbose=False)['input_ids']
        truncated = 0
        for i, ids in enumerate(out):
            if len(ids) > dlen:
                out[i] = ids[:dlen - 1] + [ids[-1]]
                truncated += 1
            out[i][1] = self.d_marker
        if truncated and not self._warned_truncation:
            self._warned_truncation = True
            warnings.warn(f'{truncated} document(s) in this batch are longer than doc_maxlen={dlen} tokens and were '
                          'truncated (as ColBERT does); raise doc_maxlen to keep more text. Later truncations are not reported.',
                          stacklevel=2)
        return out

    def pad_docs(self, token_ids: Sequence[Sequence[int]]):
        """``(input_ids, attention_mask)`` padded to the longest document of the batch."""
        torch = _torch()
        width = max(len(t) for t in token_ids)
        ids = torch.full((len(token_ids), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(token_ids), width), dtype=torch.long)
        for i, t in enumerate(token_ids):
            ids[i, :len(t)] = torch.as_tensor(t, dtype=torch.long)
            mask[i, :len(t)] = 1
        return ids, mask

    def tokenize_docs(self, docs: Sequence[str]):
        return self.pad_docs(self.doc_token_ids(docs))

    # ---------------------------------------------------------------- encoding
    def _project(self, ids, mask):
        torch = _torch()
        hidden = self.bert(input_ids=ids, attention_mask=mask)[0]
        return torch.nn.functional.normalize(self.linear(hidden), p=2, dim=2)

    def encode_queries(self, ids, mask):
        """Query token vectors [B, query_maxlen, dim] (every position, [MASK] augmentation included)."""
        int8 = getattr(self, '_int8', None)
        if int8 is not None and not _torch().is_grad_enabled():
            return int8.encode_queries(ids, mask)
        return self._project(ids, mask)

    def forward(self, q_ids, q_mask, d_ids, d_mask):
        """Training entry point: MaxSim of every query against every document of the batch -> [Bq, Bd]."""
        D, keep = self.encode_docs(d_ids, d_mask)
        return maxsim_matrix(self.encode_queries(q_ids, q_mask), D, keep)

    def encode_docs(self, ids, mask):
        """``(D [B, L, dim], keep [B, L] bool)``: vectors of padding and punctuation positions are zero and not kept."""
        torch = _torch()
        int8 = getattr(self, '_int8', None)
        if int8 is not None and not torch.is_grad_enabled():
            return int8.encode_docs(ids, mask)
        keep = mask.bool() & ~torch.isin(ids, self._skip_tensor.to(ids.device))
        # scoring and indexing run packed: no padding, and no punctuation in the last layer (the same vectors)
        hidden = last_hidden_state(self.bert, ids, mask, out_mask=keep)
        D = torch.nn.functional.normalize(self.linear(hidden), p=2, dim=2)
        return D * keep.unsqueeze(2), keep


def maxsim(Q, D, keep):
    """Score pairs: ``Q`` [B, Lq, d], ``D`` [B, Ld, d], ``keep`` [B, Ld] -> [B] (max over kept doc tokens, summed over Q)."""
    sim = Q @ D.transpose(1, 2)
    sim = sim.masked_fill(~keep.unsqueeze(1), -9999.0)
    return sim.max(dim=2).values.sum(dim=1)


def maxsim_matrix(Q, D, keep):
    """Every query against every document: ``Q`` [Bq, Lq, d], ``D`` [Bd, Ld, d] -> [Bq, Bd] (for in-batch negatives)."""
    sim = Q.unsqueeze(1) @ D.transpose(1, 2).unsqueeze(0)          # [Bq, Bd, Lq, Ld]
    sim = sim.masked_fill(~keep[None, :, None, :], -9999.0)
    return sim.max(dim=3).values.sum(dim=2)
