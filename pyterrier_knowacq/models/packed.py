"""Unpadded ("packed") inference for BERT encoders: the same last hidden states as ``BertModel`` with fewer FLOPs.

On a CPU, scoring is bound by the encoder's dense layers, which a padded batch runs on every padding position too
(8% of the work for length-sorted MS MARCO passages in batches of 32). Here the dense layers run on the real tokens
only, packed into one ``[tokens, hidden]`` matrix; only attention, a small share of the work at passage lengths, goes
back to the padded layout for one ``scaled_dot_product_attention`` call. ``out_mask`` also skips the last layer's
output projection and feed-forward block for positions the caller discards (ColBERT's punctuation skip-list).

The result equals ``encoder(input_ids, attention_mask).last_hidden_state`` at the positions of ``out_mask`` to float
rounding (``tests/test_packed.py``); every other position is zero. Only used for inference; training keeps the
standard forward. An int8 copy (``quantize='int8'``, :mod:`~pyterrier_knowacq.models.quantize`) runs here too: its
linear layers are int8 modules called as such, and Q/K/V come from its fused ``knowacq_qkv``.

Example::

    from pyterrier_knowacq.models.packed import packed_hidden_states, supports_packing
    if supports_packing(bert):
        hidden = packed_hidden_states(bert, input_ids, attention_mask)
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ['supports_packing', 'packed_hidden_states', 'last_hidden_state', 'classifier_logits']


def supports_packing(encoder) -> bool:
    """True for an encoder-only BERT with absolute positions in eval mode (the layout this module re-implements)."""
    cfg = getattr(encoder, 'config', None)
    layers = getattr(getattr(encoder, 'encoder', None), 'layer', None)
    return (cfg is not None and getattr(cfg, 'model_type', None) == 'bert' and not encoder.training
            and not getattr(cfg, 'is_decoder', False) and not getattr(cfg, 'add_cross_attention', False)
            and getattr(cfg, 'position_embedding_type', 'absolute') == 'absolute'
            and hasattr(encoder, 'embeddings') and layers is not None and len(layers) > 0
            and all(hasattr(layer, 'attention') and hasattr(layer, 'intermediate') for layer in layers))


def packed_hidden_states(encoder, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         out_mask: Optional[torch.Tensor] = None,
                         token_type_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Last hidden states ``[B, L, H]`` of a padded batch, computed on its real tokens only.

    Args:
        encoder: a ``BertModel`` (see :func:`supports_packing`).
        input_ids: ``[B, L]`` token ids.
        attention_mask: ``[B, L]``, 1 for real tokens.
        out_mask: ``[B, L]`` bool, positions whose output is needed (default: the real tokens); must lie within
            ``attention_mask``. Other positions are returned as zeros.
        token_type_ids: ``[B, L]`` segment ids (default: all 0, as ``BertModel``).
    """
    B, L = input_ids.shape
    mask = attention_mask.bool()
    out_mask = mask if out_mask is None else (out_mask.bool() & mask)
    where = mask.reshape(-1).nonzero().squeeze(1)           # padded position of each packed token
    positions = torch.arange(L, device=input_ids.device).repeat(B)[where]   # BertModel's: the column, any padding side
    types = torch.zeros_like(positions) if token_type_ids is None else token_type_ids.reshape(-1)[where]
    x = encoder.embeddings(input_ids=input_ids.reshape(-1)[where][None], position_ids=positions[None],
                           token_type_ids=types[None])[0]
    key_mask = mask[:, None, None, :]
    layers = list(encoder.encoder.layer)
    # the last layer's rows that are kept, as indices into the packed tokens
    keep_rows = out_mask.reshape(-1)[where].nonzero().squeeze(1)
    for i, layer in enumerate(layers):
        att = layer.attention.self
        heads, dh = att.num_attention_heads, att.attention_head_size
        qkv = x.new_zeros(B * L, 3 * heads * dh)
        qkv[where] = _qkv(att, x)
        q, k, v = qkv.view(B, L, 3, heads, dh).permute(2, 0, 3, 1, 4)
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
        ctx = ctx.transpose(1, 2).reshape(B * L, heads * dh)[where]
        if i == len(layers) - 1 and len(keep_rows) < len(where):
            ctx, x = ctx[keep_rows], x[keep_rows]
            where = where[keep_rows]
        x = layer.attention.output(ctx, x)
        x = layer.output(layer.intermediate(x), x)
    out = x.new_zeros(B * L, x.shape[-1])
    out[where] = x
    return out.view(B, L, -1)


def _qkv(att, x: torch.Tensor) -> torch.Tensor:
    """``[tokens, 3 * hidden]``: query, key and value projections of the packed tokens in one matmul; an int8 copy
    (:mod:`~pyterrier_knowacq.models.quantize`) brings its own fused, quantised ``knowacq_qkv``."""
    fused = getattr(att, 'knowacq_qkv', None)
    if fused is not None:
        return fused(x)
    w = torch.cat([att.query.weight, att.key.weight, att.value.weight])
    b = torch.cat([att.query.bias, att.key.bias, att.value.bias])
    return F.linear(x, w, b)


def _standard_forward(model, input_ids, attention_mask, token_type_ids):
    kwargs = {'input_ids': input_ids, 'attention_mask': attention_mask}
    if token_type_ids is not None:
        kwargs['token_type_ids'] = token_type_ids
    return model(**kwargs)


def last_hidden_state(encoder, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      token_type_ids: Optional[torch.Tensor] = None, first_only: bool = False,
                      out_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``encoder(...).last_hidden_state``, packed when scoring (no gradients) with a BERT encoder.

    ``out_mask``: the positions the caller reads (see :func:`packed_hidden_states`); ``first_only``: it reads position
    0 only (CLS pooling), so the last layer computes it alone when every sequence starts there (right padding). The
    standard forward, taken when training or for other encoders, returns every position.
    """
    if torch.is_grad_enabled() or not supports_packing(encoder):
        return _standard_forward(encoder, input_ids, attention_mask, token_type_ids).last_hidden_state
    if first_only and bool(attention_mask[:, 0].all()):
        out_mask = torch.zeros_like(attention_mask, dtype=torch.bool)
        out_mask[:, 0] = True
    return packed_hidden_states(encoder, input_ids, attention_mask, out_mask, token_type_ids)


def classifier_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      token_type_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``model(...).logits`` of a ``BertForSequenceClassification`` (e.g. cross-encoder/ms-marco-MiniLM-L6-v2), packed
    when scoring: its head reads the [CLS] state only, so the last layer computes that position alone."""
    bert = getattr(model, 'bert', None)
    if (torch.is_grad_enabled() or bert is None or getattr(bert, 'pooler', None) is None
            or not hasattr(model, 'classifier') or not supports_packing(bert)):
        return _standard_forward(model, input_ids, attention_mask, token_type_ids).logits
    hidden = last_hidden_state(bert, input_ids, attention_mask, token_type_ids, first_only=True)
    return model.classifier(bert.pooler(hidden))      # dropout is the identity in eval mode
