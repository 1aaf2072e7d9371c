"""``knowacq plan``: measured activations agree with a real training step, scale monotonically, an experiment that
cannot fit is flagged and ``knowacq run`` refuses it before any work (unless ``--force``), and ``--json`` parses."""
import json
import time

import pytest
import yaml

from pyterrier_knowacq.experiments import planning
from pyterrier_knowacq.cli import main
from pyterrier_knowacq.experiments.planning import activation_estimate, architecture, make_plan, param_counts

TINY = {
    'name': 'tiny-plan', 'dataset': 'msmarco-passage', 'folds': [{'train': 'dl20', 'test': 'dl19'}],
    'models': {
        'tiny-ce': {'backbone': 'tiny-bert', 'max_length': 64, 'queries_per_batch': 4,
                    'stages': [{'loss': 'lce', 'data': {'run': 'bm25', 'negatives': 7, 'depth': 20}, 'lr': 1e-4,
                                'steps': 10}]},
        'tiny-lora': {'kind': 'bi-encoder', 'backbone': 'tiny-llama', 'pooling': 'last', 'max_length': 64,
                      'query_max_length': 16, 'queries_per_batch': 4, 'negatives': 3, 'steps': 10,
                      'lora': {'r': 4, 'alpha': 8, 'dropout': 0.1, 'target_modules': ['q_proj', 'v_proj']}},
    },
    'systems': {'BM25': 'run(name=bm25)',
                'BM25 >> CE': 'run(name=bm25) >> text >> ce(model=tiny-ce, max_length=64)',
                'BM25 >> LoRA': 'run(name=bm25) >> text >> biencoder(model=tiny-lora)'},
    'baseline': 'BM25',
}


@pytest.fixture
def tiny_yaml(tmp_path, cache):
    path = tmp_path / 'tiny.yaml'
    path.write_text(yaml.safe_dump(TINY, sort_keys=False))
    return path


def _step_estimate(row, queries):
    stage = row['stages'][0]
    return stage['activation_bytes_fixed'] + queries * stage['activation_bytes_per_query']


def test_plan_matches_a_direct_measurement_of_a_real_step(tiny_yaml, msmarco):
    """The plan (built from 1- and 2-layer models on synthetic texts) is within 2x of the saved activations of one
    real step of each family's task on real MS MARCO passages (tiny-bert cross-encoder; tiny-llama + LoRA)."""
    from pyterrier_knowacq.models.crossencoder import CrossEncoder
    from pyterrier_knowacq.training import examples as ex
    from pyterrier_knowacq.training.crossencoder_task import CrossEncoderTask
    from pyterrier_knowacq.training.dense import BiEncoderTask, build_biencoder
    from pyterrier_knowacq.training.memory import measure_step_memory
    plan = make_plan(tiny_yaml, gpu='cpu')
    rows = {r['name']: r for r in plan['models']}
    groups = ex.contrastive_groups(msmarco.get_topics('dl20'), msmarco.get_qrels('dl20'), msmarco.get_run('bm25', 'dl20'),
                                   depth=20, rel_threshold=1, known_docnos=msmarco.known_docnos())
    ce = CrossEncoder.new('tiny-bert', pooling='cls', device='cpu')
    task = CrossEncoderTask(ce, 'lce', groups, texts_of=msmarco.get_texts, group_size=8, queries_per_batch=4,
                            max_length=64)
    direct = measure_step_memory(task, batch_sizes=(1, 4))['measured'][4]
    assert 0.5 <= _step_estimate(rows['tiny-ce'], 4) / direct <= 2.0
    spec = {k: v for k, v in TINY['models']['tiny-lora'].items() if k != 'kind'}
    task = BiEncoderTask(build_biencoder(spec), groups, texts_of=msmarco.get_texts, negatives=3, queries_per_batch=4)
    direct = measure_step_memory(task, batch_sizes=(1, 4))['measured'][4]
    assert 0.5 <= _step_estimate(rows['tiny-lora'], 4) / direct <= 2.0
    lora = rows['tiny-lora']
    assert 0 < lora['trainable_params'] < lora['params'] / 50      # LoRA: only the adapter is trained
    assert plan['fits'] and all(r['fits'] == 'yes' for r in plan['models'] + plan['systems'])


def test_scaling_with_layers_and_batch_is_monotone(tiny_yaml):
    plan = make_plan(tiny_yaml, gpu='cpu', sizes=False)
    for row in plan['models']:
        stage = row['stages'][0]
        m, docs = stage['measured'], stage['group']
        grid = [[activation_estimate(m, layers, batch, docs=docs, docs_measured=m['docs_measured'])
                 for batch in (1, 2, 4, 8, 16, 64)] for layers in (1, 2, 4, 12, 32, 80)]
        for r in grid:
            assert all(a < b for a, b in zip(r, r[1:]))
        for col in zip(*grid):
            assert all(a < b for a, b in zip(col, col[1:]))
        # more passages per query cost more; checkpointing a deep model costs less
        assert activation_estimate(m, 12, 4, docs=2 * docs, docs_measured=m['docs_measured']) > grid[3][2]
        ckpt = m['tokens_per_query'] * 32 * 4
        assert activation_estimate(m, 12, 4, docs=docs, docs_measured=m['docs_measured'],
                                   checkpoint_bytes_per_query=ckpt) < grid[3][2]
    # the whole plan: a bigger batch or longer sequences never need less memory (measurements are cached)
    peaks = []
    for qpb, length in ((2, 64), (4, 64), (8, 64), (8, 128)):
        config = json.loads(json.dumps(TINY))
        config['models']['tiny-ce'].update(queries_per_batch=qpb, max_length=length)
        peaks.append(make_plan(config, gpu='cpu', sizes=False)['models'][0]['peak_bytes'])
    assert peaks == sorted(peaks) and len(set(peaks)) == len(peaks)


def test_measurements_are_cached_under_the_knowacq_cache(tiny_yaml, cache, monkeypatch):
    planning.measure._MEMO.clear()   # (measurements are also remembered in the process)
    first = make_plan(tiny_yaml, gpu='cpu', sizes=False)
    assert list((cache / 'plan').glob('*.json'))
    planning.measure._MEMO.clear()

    def no_measuring(*args, **kwargs):
        raise AssertionError('measured again')
    monkeypatch.setattr(planning.measure, '_training_task', no_measuring)
    again = make_plan(tiny_yaml, gpu='cpu', sizes=False)
    assert [r['peak_bytes'] for r in again['models']] == [r['peak_bytes'] for r in first['models']]


def test_seed_model_configs_are_known_offline():
    llama = architecture('meta-llama/Llama-2-7b-hf')
    assert (llama.layers, llama.hidden, llama.decoder) == (32, 4096, True)
    assert abs(param_counts(llama)['total'] - 6.607e9) < 0.01e9          # LlamaModel (no LM head)
    assert abs(param_counts(architecture('bert-base-uncased'))['total'] - 109.48e6) < 0.1e6
    assert abs(param_counts(architecture('roberta-base'))['total'] - 124.65e6) < 0.1e6
    assert architecture('colbert-ir/colbertv2.0').colbert_dim == 128
    repllama = architecture('castorini/repllama-v1-7b-lora-passage')
    assert repllama.adapter['r'] == 32 and repllama.hidden == 4096
    assert architecture('random:facebook/contriever@3').config == architecture('bert-base-uncased').config


@pytest.fixture
def too_big(tmp_path, cache, monkeypatch):
    """Llama-2-7B fully fine-tuned (weights + gradients + AdamW: ~100 GiB) from a local folder holding its config
    (preflight accepts a folder offline; no weights are needed to plan, nor to be refused)."""
    folder = tmp_path / 'llama-2-7b'
    folder.mkdir()
    (folder / 'config.json').write_text(json.dumps(planning.KNOWN_CONFIGS['meta-llama/Llama-2-7b-hf']))
    config = {'name': 'too-big', 'dataset': 'msmarco-passage', 'folds': [{'train': 'dl20', 'test': 'dl19'}],
              'models': {'llama-full': {'kind': 'bi-encoder', 'backbone': str(folder), 'pooling': 'last',
                                        'max_length': 32, 'query_max_length': 16, 'queries_per_batch': 64,
                                        'negatives': 1, 'steps': 10}},
              'systems': {'BM25': 'run(name=bm25)'}, 'baseline': 'BM25'}
    path = tmp_path / 'too-big.yaml'
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    monkeypatch.setattr(planning.devices, '_ram_bytes', lambda: 16 * 2 ** 30)   # the same verdict on any test machine
    return path


def test_an_oversized_spec_is_flagged_and_run_refuses_it_before_any_work(too_big, tmp_path, capsys):
    plan = make_plan(too_big, gpu='a100-40g', sizes=False)
    row = plan['models'][0]
    assert not plan['fits'] and row['fits'] == 'no'
    assert row['stages'][0]['weights_bytes'] > 90 * 2 ** 30                 # 16 bytes per weight
    assert "model 'llama-full'" in plan['problems'][0] and 'lora' in plan['problems'][0].lower()
    assert '| no' not in planning.format_plan(plan) and 'NO - 1 problem' in planning.format_plan(plan)
    capsys.readouterr()
    out = tmp_path / 'results'
    started = time.perf_counter()
    assert main(['run', str(too_big), '-o', str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith('knowacq: error: the plan does not fit')
    assert '--force' in err and 'force=True' not in err and 'LoRA' in err
    assert not out.exists() and not (tmp_path / '.knowacq-work').exists()
    assert time.perf_counter() - started < 120
    # --force goes past the plan (and here fails later, loading weights the folder does not hold)
    assert main(['run', str(too_big), '-o', str(out), '--force']) == 2
    err = capsys.readouterr().err
    assert 'running anyway' in err and 'the plan does not fit' not in err.split('running anyway')[-1]


def test_plan_command_prints_tables_and_json(tiny_yaml, capsys):
    assert main(['plan', str(tiny_yaml), '--gpu', 'cpu', '--json']) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan['format'] == 'pyterrier_knowacq.plan/1' and plan['fits'] is True
    assert {r['name'] for r in plan['models']} == {'tiny-ce', 'tiny-lora'}
    assert all(r['peak_bytes'] > 0 and r['micro_batch'] == 4 and r['accumulation'] == 1 for r in plan['models'])
    assert plan['datasets']['dl19']['queries'] == 43 and plan['totals']['seconds'] > 0
    assert main(['plan', str(tiny_yaml), '--gpu', 'h100']) == 0
    text = capsys.readouterr().out
    for word in ('TRAINING', 'INFERENCE', 'micro x accum', 'est. time', 'tiny-lora', 'BM25 >> CE', 'fits: yes'):
        assert word in text
