"""Sample-quality metrics: Fréchet distance, KID, precision/recall in a pluggable feature space.

frechet.py           feature_stats, frechet_distance
kid.py               kernel_distance (unbiased MMD^2, polynomial kernel)
precision_recall.py  k-NN manifold precision and recall
features.py          Inception-v3 (FID protocol) or any TorchScript / state-dict network
reference.py         reference statistics of a dataset, cached next to its shards
evaluator.py         Evaluator: generate on every rank, embed, gather, rank 0 reports; distribution_scores
                     (FD, KID, precision/recall, density/coverage of fake features against real ones)
evaluate.py          `gandist evaluate`: the metrics of a checkpoint's generator
"""

from gandist.metrics.evaluator import Evaluator
from gandist.metrics.features import FeatureNet, FeatureNetError, load_feature_net
from gandist.metrics.frechet import feature_stats, frechet_distance
from gandist.metrics.kid import kernel_distance, mmd2_unbiased
from gandist.metrics.precision_recall import precision_recall

__all__ = [
    "Evaluator",
    "FeatureNet",
    "FeatureNetError",
    "feature_stats",
    "frechet_distance",
    "kernel_distance",
    "load_feature_net",
    "mmd2_unbiased",
    "precision_recall",
]
