"""Two-process DDP training on gloo (torchrun), one test per trainer, each with gradient accumulation (grad_accum=2,
``no_sync`` on the first micro-batch): both ranks end with identical weights, losses are finite, each rank trains on
its own shard, passage texts are looked up once per batch, and rank 0 writes the model.

Models whose loss leaves parameters without gradient (the BERT pooler of a bi-encoder, ColBERT, a cross-encoder with a
fresh head) used to stop DDP at step 2 ("parameters that were not used in producing loss"); they are frozen now."""
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent('''
    import datetime, json, os, sys, torch
    torch.set_num_threads(1)
    # the trainer joins this group; a short timeout turns a rank stuck in a collective into an error, not a hang
    torch.distributed.init_process_group('gloo', timeout=datetime.timedelta(seconds=120))
    from pyterrier_knowacq.training.examples import Group
    from pyterrier_knowacq.training.trainer import TrainConfig, Trainer
    out = sys.argv[1]
    rank = int(os.environ['RANK'])
    texts = {f'd{i}': f'passage number {i} about ' + ('cats' if i % 2 else 'dogs') for i in range(20)}
    groups = [Group(f'q{i}', 'cats' if i % 2 else 'dogs', [f'd{i}'], [f'd{(i + 1) % 20}', f'd{(i + 3) % 20}'])
              for i in range(16)]
    lookups = []

    def texts_of(docnos):
        lookups.append(list(docnos))
        return [texts[d] for d in docnos]

    def run(name, task, params):
        seen, loss_of = [], task.loss

        def loss(model, batch):
            seen.append(sorted(task.batch_ids(batch)))
            return loss_of(model, batch)
        task.loss = loss
        lookups.clear()
        cfg = TrainConfig(lr=1e-3, max_steps=3, grad_accum=2, warmup=0, progress=False, log_every=1,
                          checkpoint_every=2, seed=5, device='cpu')
        res = Trainer(task, cfg, os.path.join(out, name)).train()
        return {'checksum': sum(float(p.detach().double().sum()) for p in params),
                'trainable': sum(p.numel() for p in params if p.requires_grad),
                'losses': [h['loss'] for h in res.history], 'steps': seen[-6:],
                'loss_calls': len(seen), 'lookups': len(lookups)}

    def cross_encoder():
        from pyterrier_knowacq.models.crossencoder import CrossEncoder
        from pyterrier_knowacq.training.crossencoder_task import CrossEncoderTask
        ce = CrossEncoder.new('tiny-bert', pooling='cls', seed=0)
        task = CrossEncoderTask(ce, 'lce', groups, texts_of=texts_of, group_size=3, queries_per_batch=2,
                                max_length=32, seed=3)
        return run('ce', task, list(ce.model.parameters()))

    def separate():
        from pyterrier_knowacq.training.dense import BiEncoderTask, build_biencoder
        bienc = build_biencoder({'backbone': 'tiny-bert', 'shared': False, 'pooling': 'cls', 'steps': 1,
                                 'max_length': 32, 'query_max_length': 16}, seed=0)
        task = BiEncoderTask(bienc, groups, texts_of=texts_of, negatives=2, queries_per_batch=2, seed=3)
        return run('separate', task, list(task.model.parameters()))

    def lora():
        from pyterrier_knowacq.training.dense import BiEncoderTask, build_biencoder
        bienc = build_biencoder({'backbone': 'tiny-llama', 'pooling': 'last', 'steps': 1, 'max_length': 32,
                                 'query_max_length': 16, 'lora': {'r': 2, 'alpha': 4}}, seed=0)
        task = BiEncoderTask(bienc, groups, texts_of=texts_of, negatives=2, queries_per_batch=2, seed=3)
        return run('lora', task, list(task.model.parameters()))

    def colbert():
        from pyterrier_knowacq.models.colbert import ColBERTModel
        from pyterrier_knowacq.training.colbert import ColBERTTask
        model = ColBERTModel.new('tiny-bert', dim=16, seed=0, query_maxlen=8, doc_maxlen=24)
        task = ColBERTTask(model, groups, texts_of=texts_of, negatives=2, queries_per_batch=2, head_lr=1e-2,
                           train_doc_maxlen=24, seed=3)
        return run('colbert', task, list(model.parameters()))

    result = {'rank': rank, 'world': int(os.environ['WORLD_SIZE'])}
    for name, fn in (('ce', cross_encoder), ('separate', separate), ('lora', lora), ('colbert', colbert)):
        try:     # a failure fails its own test (both ranks raise alike, so the next run's collectives still pair up)
            result[name] = fn()
        except Exception:
            import traceback
            result[name] = {'error': traceback.format_exc()}
    json.dump(result, open(os.path.join(out, f'rank{rank}.json'), 'w'))
''')


def _free_port() -> int:
    with socket.socket() as s:          # a port of its own: concurrent test runs on one machine do not collide
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='module')
def ddp(tmp_path_factory):
    """One torchrun launch (2 processes, gloo) trains every model family in turn: the imports are paid once."""
    tmp_path = tmp_path_factory.mktemp('ddp')
    script = tmp_path / 'ddp_train.py'
    script.write_text(SCRIPT)
    out = tmp_path / 'out'
    out.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS='1', HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1', TOKENIZERS_PARALLELISM='false')
    proc = subprocess.Popen([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2',
                             '--master_addr', '127.0.0.1', '--master_port', str(_free_port()), str(script), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)       # torchrun and both workers
        _, stderr = proc.communicate()
    assert proc.returncode == 0, stderr[-4000:]
    r0, r1 = (json.loads((out / f'rank{r}.json').read_text()) for r in (0, 1))
    assert r0['world'] == 2 and r1['world'] == 2
    return out, r0, r1


def _check_run(ddp, name):
    out, r0, r1 = ddp
    a, b = r0[name], r1[name]
    assert 'error' not in a, a['error']
    assert 'error' not in b, b['error']
    assert a['checksum'] == pytest.approx(b['checksum'], rel=0, abs=1e-9)     # gradients were all-reduced
    assert a['trainable'] == b['trainable'] > 0                                # the same parameters froze on both
    for losses in (a['losses'], b['losses']):
        assert len(losses) == 3 and all(l == l and abs(l) < 1e6 for l in losses)
    for r in (a, b):
        assert len(r['steps']) == 6                                            # 3 steps x grad_accum 2
        assert r['lookups'] == r['loss_calls']                                 # one batched text lookup per batch
    first0 = {q for batch in a['steps'][:2] for q in batch}
    first1 = {q for batch in b['steps'][:2] for q in batch}
    assert first0 and not first0 & first1                                      # each rank saw its own shard
    assert a['losses'] != b['losses']
    history = json.loads((out / name / 'history.json').read_text())          # rank 0 wrote the history and the model
    assert history['steps'] == 3
    assert (out / name / 'final').is_dir() and any((out / name / 'final').iterdir())
    assert not (out / name / 'checkpoint').exists()
    return out / name / 'final', a


def test_cross_encoder_ddp(ddp):
    final, _ = _check_run(ddp, 'ce')
    assert (final / 'knowacq.json').exists()


def test_biencoder_ddp_separate_query_encoder(ddp):
    final, _ = _check_run(ddp, 'separate')
    assert (final / 'knowacq.json').exists() and (final / 'query').is_dir()   # the query encoder was saved too


@pytest.mark.skipif(importlib.util.find_spec('peft') is None, reason='LoRA needs peft')
def test_biencoder_ddp_lora_decoder(ddp):
    final, lora = _check_run(ddp, 'lora')
    assert (final / 'knowacq.json').exists()
    assert lora['trainable'] < ddp[1]['separate']['trainable']                # LoRA: only the adapters train


def test_colbert_ddp(ddp):
    final, _ = _check_run(ddp, 'colbert')
    assert (final / 'model.safetensors').exists()
