"""One registry of the model kinds, one TrainConfig.from_spec, one cached-training path, and `knowacq train` for every
kind (a tiny bi-encoder trained from a training file)."""
import json

import pytest

from pyterrier_knowacq._registry import Registry
from pyterrier_knowacq._util import KnowacqError
from pyterrier_knowacq.training.train_config import TrainConfig, check_spec

TRAIN_FILE = """\
dataset: msmarco-passage
seed: 3
train_split: dl20
models:
  dense:
    kind: bi-encoder
    backbone: tiny-bert
    pooling: mean
    steps: 2
    queries_per_batch: 2
    negatives: 1
    data: {depth: 10, max_queries: 6}
"""


def test_trainers_registry_and_the_experiment_alias():
    from pyterrier_knowacq.experiments.config import MODEL_TRAINERS
    from pyterrier_knowacq.training.registry import TRAINERS
    assert MODEL_TRAINERS is TRAINERS and isinstance(TRAINERS, Registry)
    assert sorted(TRAINERS) == ['bi-encoder', 'colbert', 'cross-encoder']
    module, fn = TRAINERS['colbert']          # the older (module, function) pair still unpacks
    assert (module, fn) == ('pyterrier_knowacq.training.colbert', 'train_colbert')
    from pyterrier_knowacq.training import dense
    assert TRAINERS['bi-encoder'].load() is dense.train_biencoder and TRAINERS['bi-encoder'].load_family() is dense.FAMILY
    with pytest.raises(KnowacqError, match=r"unknown model kind 'colbrt' \(did you mean 'colbert'\?\).*set `kind:`"):
        TRAINERS.get_entry('colbrt')


def test_losses_are_a_registry():
    from pyterrier_knowacq.training.losses import LOSSES, Loss, get_loss, register_loss
    assert isinstance(LOSSES, Registry) and LOSSES.get_entry('lce').name == 'lce'
    with pytest.raises(KnowacqError, match=r"unknown loss 'rank_net' \(did you mean 'ranknet'\?\)"):
        get_loss('rank_net')

    @register_loss('test-zero')
    class Zero(Loss):
        def __call__(self, scores, targets=None):
            return scores.sum() * 0
    try:
        assert isinstance(get_loss('test-zero'), Zero) and Zero.name == 'test-zero'
    finally:
        del LOSSES['test-zero']


def test_train_config_from_spec_reads_the_shared_keys_once():
    cfg = TrainConfig.from_spec({'lr': '2e-5', 'steps': 8, 'warmup': 0, 'queries_per_batch': 3, 'micro_batch': 2,
                                 'temperature': 0.1}, seed=7, log_every=5)
    assert (cfg.lr, cfg.max_steps, cfg.warmup, cfg.queries_per_batch, cfg.micro_batch, cfg.seed) == (2e-5, 8, 0.0, 3, 2, 7)
    assert cfg.eval_every == 0 and cfg.checkpoint_every == 50 and cfg.log_every == 5 and cfg.max_grad_norm == 1.0
    assert TrainConfig.from_spec({'steps': 8}, validating=True).eval_every == 2          # a quarter of the steps
    assert TrainConfig.from_spec({'steps': 8, 'eval_every': 3}, validating=True).eval_every == 3
    assert TrainConfig.from_spec({'epochs': 1, 'max_grad_norm': None}).max_grad_norm is None   # no clipping
    assert TrainConfig.from_spec({'steps': 1}, defaults={'queries_per_batch': 8}).queries_per_batch == 8
    for spec, match in [({'steps': 1, 'lr': 'fast'}, "stage 1: lr is 'fast'; write a number"),
                        ({'steps': 1.5}, 'stage 1: steps is 1.5; write a whole number'),
                        ({'steps': 1, 'precision': 'fp16'}, "precision is 'fp16'; write one of"),
                        ({'steps': 1, 'micro_batch': 0}, 'micro_batch is 0; write auto or'),
                        ({'steps': 1, 'gradient_checkpointing': 'yes'}, 'gradient_checkpointing is .yes.; write true')]:
        with pytest.raises(KnowacqError, match=match):
            TrainConfig.from_spec(spec, where='stage 1')
    with pytest.raises(KnowacqError, match=r"unknown keys \['lrr'\] \(did you mean 'lr'\?\)"):
        check_spec({'lrr': 1}, {'lr'}, 'unknown keys')


@pytest.mark.parametrize('module,validator,spec,match', [
    ('stages', 'validate_spec', {'backbone': 'tiny-bert', 'stages': [{'loss': 'lce', 'steps': 2, 'warmup': 'x'}]},
     "stage 1: warmup is 'x'; write a number"),
    ('stages', 'validate_spec', {'backbone': 'tiny-bert', 'micro_batch': -1, 'stages': [{'loss': 'lce', 'steps': 2}]},
     'the model spec: micro_batch is -1'),
    ('dense', 'validate_dense_spec', {'backbone': 'tiny-bert', 'steps': 2, 'lr': [1]}, r'lr is \[1\]; write a number'),
    ('dense', 'validate_dense_spec', {'backbone': 'tiny-bert', 'steps': 2, 'keep_best': True}, 'unknown bi-encoder spec keys'),
    ('colbert', 'validate_colbert_spec', {'steps': 2, 'precision': 'fp16'}, "precision is 'fp16'"),
    ('colbert', 'validate_colbert_spec', {'steps': 2, 'eval_every': 1}, 'unknown ColBERT training settings'),
])
def test_every_family_checks_the_shared_keys_the_same_way(module, validator, spec, match):
    import importlib
    with pytest.raises(KnowacqError, match=match):
        getattr(importlib.import_module(f'pyterrier_knowacq.training.{module}'), validator)(spec)


def test_knowacq_train_file_trains_a_tiny_bi_encoder(cache, tmp_path):
    from pyterrier_knowacq.models.biencoder import BiEncoder
    from pyterrier_knowacq.training.train_file import train_from_config
    path = tmp_path / 'train.yaml'
    path.write_text(TRAIN_FILE)
    folder = train_from_config(path)['dense']
    assert folder.parent.name == 'trained-dense'
    info = json.loads((folder / 'training.json').read_text())
    assert info['steps'] == 2 and info['split'] == 'dl20' and info['seed'] == 3 and 'kind' not in info['spec']
    bienc = BiEncoder.from_pretrained(str(folder), device='cpu')
    assert bienc.encode_queries(['what is a cat']).shape[0] == 1
    assert train_from_config(path) == {'dense': folder}      # cached: the same folder, nothing retrained


def test_knowacq_train_file_errors_name_the_kind_line(tmp_path):
    from pyterrier_knowacq.training.train_file import train_from_config
    path = tmp_path / 'train.yaml'
    path.write_text(TRAIN_FILE.replace('kind: bi-encoder', 'kind: bi-encodr'))
    with pytest.raises(KnowacqError, match=r"train.yaml:6: model 'dense' has kind 'bi-encodr'.*did you mean 'bi-encoder'"):
        train_from_config(path)
    path.write_text(TRAIN_FILE.replace('steps: 2', 'steps: two'))
    with pytest.raises(KnowacqError, match=r"train.yaml:9: model 'dense': steps is 'two'; write a whole number"):
        train_from_config(path)


def test_cli_knowacq_train_trains_a_bi_encoder(cache, tmp_path, capsys):
    from pyterrier_knowacq.cli import main
    path = tmp_path / 'train.yaml'
    path.write_text(TRAIN_FILE)
    assert main(['train', str(path)]) == 0
    out = capsys.readouterr().out
    assert 'dense' in out and 'trained-dense' in out


def test_one_cached_path_for_every_family(cache, tmp_path):
    from pyterrier_knowacq.training.cached import train_cached
    from pyterrier_knowacq.training.dense import train_biencoder
    spec = {'backbone': 'tiny-bert', 'steps': 2, 'queries_per_batch': 2, 'negatives': 1, 'data': {'depth': 10, 'max_queries': 6}}
    folder = train_cached('bi-encoder', spec, dataset='msmarco-passage', train_split='dl20', seed=1,
                          output_dir=tmp_path / 'a')
    log = json.loads((tmp_path / 'a' / 'training.json').read_text())
    assert log['model'] == str(folder) and log['steps'] == 2 and [s['cached'] for s in log['stages']] == [False]
    assert not folder.with_name(folder.name + '.work').exists()      # the work folder is gone once the model is in place
    again = train_biencoder(spec, dataset='msmarco-passage', train_split='dl20', seed=1, output_dir=tmp_path / 'b')
    assert again == folder
    assert [s['cached'] for s in json.loads((tmp_path / 'b' / 'training.json').read_text())['stages']] == [True]
