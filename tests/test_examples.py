"""Training examples from small inline frames: groups, teacher lists, score targets, bad input."""
import random

import pandas as pd
import pytest

from pyterrier_knowacq._util import KnowacqError
from pyterrier_knowacq.training.examples import (contrastive_groups, sample_group, sample_list, score_targets,
                                                 split_validation, teacher_lists)

TOPICS = pd.DataFrame({'qid': ['1', '2'], 'query': ['cats', 'dogs']})
QRELS = pd.DataFrame({'qid': ['1', '1', '1', '2'], 'docno': ['a', 'b', 'c', 'x'], 'label': [3, 1, 0, 2]})
RUN = pd.DataFrame({'qid': ['1'] * 5 + ['2'] * 3, 'docno': ['b', 'd', 'a', 'c', 'e', 'y', 'x', 'z'],
                    'score': [9, 8, 7, 6, 5, 3, 2, 1], 'rank': [0, 1, 2, 3, 4, 0, 1, 2]})


def test_groups_positives_negatives():
    g = contrastive_groups(TOPICS, QRELS, RUN, depth=100, rel_threshold=2)
    assert [(x.qid, x.positives, x.negatives) for x in g] == [('1', ['a'], ['b', 'd', 'c', 'e']), ('2', ['x'], ['y', 'z'])]
    # partially relevant 'b' excluded from negatives with neg_max_label=1; depth cuts the run
    g = contrastive_groups(TOPICS, QRELS, RUN, depth=2, rel_threshold=2, neg_max_label=1)
    assert g[0].negatives == ['d'] and g[1].negatives == ['y']
    g = contrastive_groups(TOPICS, QRELS, RUN, rel_threshold=1, per_positive=True)
    assert [(x.qid, x.positives) for x in g] == [('1', ['a']), ('1', ['b']), ('2', ['x'])]


def test_sample_group_seeded():
    g = contrastive_groups(TOPICS, QRELS, RUN, rel_threshold=2)[0]
    a = sample_group(g, 3, random.Random(5))
    assert a == sample_group(g, 3, random.Random(5))
    assert a[2][0] == 'a' and len(set(a[2][1:])) == 3 and 'a' not in a[2][1:]
    assert len(sample_group(g, 7, random.Random(0))[2]) == 8  # fewer negatives than asked: drawn with replacement


def test_bad_input():
    with pytest.raises(KnowacqError, match='share no query ids'):
        contrastive_groups(TOPICS, QRELS.assign(qid='9'), RUN)
    with pytest.raises(KnowacqError, match=r'1 of 2 queries have no first-stage candidates'):
        contrastive_groups(TOPICS, QRELS, RUN[RUN.qid == '1'], rel_threshold=5)
    with pytest.raises(KnowacqError, match='no training group'):
        contrastive_groups(TOPICS, QRELS, RUN, rel_threshold=5)
    with pytest.raises(KnowacqError, match='lacks columns'):
        contrastive_groups(TOPICS, QRELS.rename(columns={'label': 'rel'}), RUN)
    with pytest.raises(KnowacqError, match='covers none of the 2 training queries'):
        teacher_lists(TOPICS, [RUN[RUN.qid == '9']])
    with pytest.raises(KnowacqError, match='cannot hold out'):
        split_validation(['1', '2'], 2, 0)


def test_queries_without_candidates_are_skipped_and_counted():
    stats = {}
    g = contrastive_groups(TOPICS, QRELS, RUN[RUN.qid == '1'], rel_threshold=2, stats=stats)
    assert [x.qid for x in g] == ['1']
    assert stats['no_first_stage_hits'] == 1 and stats['no_first_stage_hits_qids'] == ['2'] and stats['queries'] == 2


def test_teacher_lists_cover_part_of_the_training_queries():
    stats = {}
    lists = teacher_lists(TOPICS, [RUN[RUN.qid == '1']], stats=stats)
    assert [tl.qid for tl in lists] == ['1']
    assert stats['message'] == 'teacher covers 1 of 2 training queries (50.0%)' and stats['coverage'] == 0.5
    assert len(teacher_lists(TOPICS, [RUN[RUN.qid == '1']], min_coverage=0.5)) == 1
    with pytest.raises(KnowacqError, match=r'covers 1 of 2 training queries \(50.0%\), below teacher_min_coverage 0.6'):
        teacher_lists(TOPICS, [RUN[RUN.qid == '1']], min_coverage=0.6)
    # two teachers: a query counts as covered when either ranks it; each gives its own list
    stats = {}
    lists = teacher_lists(TOPICS, [RUN[RUN.qid == '1'], RUN[RUN.qid == '2']], stats=stats, qids=['1', '2'])
    assert [tl.qid for tl in lists] == ['1', '2'] and stats['coverage'] == 1.0


def test_teacher_lists_and_labels():
    lists = teacher_lists(TOPICS, [RUN])
    assert lists[0].docnos == ['b', 'd', 'a', 'c', 'e']
    qid, q, docs, labels = sample_list(lists[0], 3, random.Random(0), select='top')
    assert docs == ['b', 'd', 'a'] and labels == [3, 2, 1]
    _, _, docs, labels = sample_list(lists[0], 3, random.Random(1))
    order = ['b', 'd', 'a', 'c', 'e']
    assert [order.index(d) for d in docs] == sorted(order.index(d) for d in docs) and labels == [3, 2, 1]
    with pytest.raises(KnowacqError, match='selection'):
        sample_list(lists[0], 3, random.Random(1), select='bottom')


def test_score_targets_and_validation_split():
    t = score_targets(RUN)
    assert t['1']['a'] == 7.0 and t['2']['z'] == 1.0
    tr, va = split_validation([str(i) for i in range(10)], 3, seed=42)
    assert len(va) == 3 and not set(tr) & set(va) and split_validation([str(i) for i in range(10)], 3, 42) == (tr, va)


def test_extra_msmarco_train_groups():
    from pyterrier_knowacq.datasets.core import get_dataset
    from pyterrier_knowacq.training.examples import extra_groups
    groups = extra_groups('msmarco-train', get_dataset('msmarco-passage'))
    assert len(groups) == 110
    g = groups[-1]
    assert g.positives and len(g.negatives) == 25 and all(d in g.texts for d in g.positives + g.negatives)
    with pytest.raises(KnowacqError, match='unknown extra'):
        extra_groups('msmarco-everything', get_dataset('msmarco-passage'))


def test_extra_dev_positive_groups_carry_only_texts_outside_the_corpus(tmp_path, monkeypatch):
    from pyterrier_knowacq.datasets.core import get_dataset
    from pyterrier_knowacq.training.examples import extra_groups
    monkeypatch.setenv('KNOWACQ_CACHE', str(tmp_path))
    ds = get_dataset('msmarco-passage')
    groups = extra_groups('msmarco-dev-positives', ds, depth=5)
    assert len(groups) > 600 and all(len(g.negatives) <= 5 for g in groups)
    known = ds.known_docnos()
    for g in groups[:50]:
        assert all(d in known or d in g.texts for d in g.positives + g.negatives)
        assert not any(d in known for d in g.texts)
