"""Datasets the PyTerrier way: topics, qrels, a corpus iterator, text lookup and precomputed runs.

Embedded collections ship inside the package (compressed, each with its ``PROVENANCE.md``): ``msmarco-passage``
(TREC DL19 + DL20 slice with graded qrels, 31k passage texts, first-stage runs and LLM teacher orderings),
``msmarco-passage-train``, ``scifact``, ``nfcorpus``, ``vaswani``, ``cranfield`` and ``nq-dpr-sample``. Any BEIR-layout
folder works as ``beir:/path/to/folder`` and any ir_datasets id as ``irds:<id>`` (where the network allows).

Example::

    ds = get_dataset('msmarco-passage')
    pipeline = ds.run_transformer('bm25') >> ds.text_loader() >> cross_encoder
    pt.Experiment([pipeline], ds.get_topics('dl19'), ds.get_qrels('dl19'), ['nDCG@10'])

The code lives by concern in :mod:`.base` (:class:`Dataset`, :class:`TextLoader`, :class:`RunTransformer`),
:mod:`.embedded`, :mod:`.beir`, :mod:`.irds` and :mod:`.registry` (:data:`DATASETS`, :func:`get_dataset`); this module
re-exports them (and the readers it always has).
"""
from .base import Dataset, RunTransformer, TextLoader, _hash_records  # noqa: F401 - re-exported
from .beir import BeirDataset
from .embedded import DATA_DIR, MsMarcoPassage, MsMarcoTrain  # noqa: F401
from .irds import IrdsDataset
from .readers import (_read_lines, _resolve, iter_beir_corpus, open_text, read_beir_qrels,  # noqa: F401 - re-exported
                      read_beir_queries, read_jsonl, read_run, read_trec_qrels, read_tsv_topics)
from .registry import _CACHE, _SPEC_HELP, DATASETS, dataset_spec_label, get_dataset  # noqa: F401

__all__ = ['Dataset', 'BeirDataset', 'MsMarcoPassage', 'MsMarcoTrain', 'IrdsDataset', 'DATASETS', 'get_dataset',
           'TextLoader', 'RunTransformer', 'read_run']
