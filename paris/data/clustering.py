"""Two-stage k-means (paper §3.1): many fine centroids first, then merged into K clusters.

The fine stage follows the data's modes closely; the merge stage groups those modes into K
shards of related images. Merging centroids (weighted by their counts) instead of clustering
all points to K keeps the cost of the K-way decision independent of the dataset size.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.decomposition import PCA

from paris.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class Clustering:
    pca_mean: np.ndarray  # [D]
    pca_components: np.ndarray  # [P, D]
    fine_centroids: np.ndarray  # [F, P]
    fine_to_cluster: np.ndarray  # [F] -> cluster id
    k: int

    def project(self, features: np.ndarray) -> np.ndarray:
        return (features - self.pca_mean) @ self.pca_components.T

    def assign(self, features: np.ndarray) -> np.ndarray:
        """Cluster of new points (e.g. the held-out split): nearest fine centroid's cluster."""
        z = self.project(features)
        d = ((z[:, None, :] - self.fine_centroids[None]) ** 2).sum(-1)
        return self.fine_to_cluster[d.argmin(1)]

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "pca_mean": self.pca_mean,
            "pca_components": self.pca_components,
            "fine_centroids": self.fine_centroids,
            "fine_to_cluster": self.fine_to_cluster,
        }

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> Clustering:
        f2c = a["fine_to_cluster"].astype(np.int64)
        return cls(a["pca_mean"], a["pca_components"], a["fine_centroids"], f2c, int(f2c.max()) + 1)


def _balanced_merge(fine: np.ndarray, counts: np.ndarray, centers: np.ndarray, cap: int) -> np.ndarray:
    """Assign fine centroids to merged centers, nearest first, never past `cap` samples.

    scikit-learn has no capacity-constrained k-means; this greedy pass is the smallest thing
    that guarantees no catch-all cluster while keeping assignments local.
    """
    d = ((fine[:, None, :] - centers[None]) ** 2).sum(-1)  # [F, K]
    load = np.zeros(len(centers), dtype=np.int64)
    out = np.full(len(fine), -1, dtype=np.int64)
    # Most constrained first: the fine clusters whose best and second-best choices differ most.
    srt = np.sort(d, axis=1)
    regret = srt[:, 1] - srt[:, 0] if d.shape[1] > 1 else np.zeros(len(fine))
    for f in np.argsort(-regret):
        fits = [k for k in np.argsort(d[f]) if load[k] + counts[f] <= cap]
        k = fits[0] if fits else int(load.argmin())  # nothing fits: the least loaded takes it
        out[f] = k
        load[k] += counts[f]
    return out


def two_stage_kmeans(
    features: np.ndarray,
    k: int,
    fine_k: int,
    pca_dim: int,
    seed: int,
    balance: bool = False,
    max_fraction: float = 0.5,
) -> tuple[Clustering, np.ndarray]:
    """Returns the fitted clustering and the cluster id of every input row."""
    n = len(features)
    if k > n:
        raise DataError(f"K={k} clusters is larger than the dataset ({n} samples)")
    fine_k = max(k, min(fine_k, n))
    p = min(pca_dim, features.shape[1], n)
    pca = PCA(n_components=p, random_state=seed).fit(features)
    z = pca.transform(features)

    fine_cls = MiniBatchKMeans if n > 50_000 else KMeans
    fine = fine_cls(n_clusters=fine_k, random_state=seed, n_init=3).fit(z)
    counts = np.bincount(fine.labels_, minlength=fine_k)
    merge = KMeans(n_clusters=k, random_state=seed, n_init=10).fit(fine.cluster_centers_, sample_weight=counts)
    f2c = merge.labels_.astype(np.int64)
    if balance and k > 1:
        cap = int(np.ceil(max_fraction * n))
        f2c = _balanced_merge(fine.cluster_centers_, counts, merge.cluster_centers_, max(cap, int(np.ceil(n / k))))
    clustering = Clustering(pca.mean_, pca.components_, fine.cluster_centers_, f2c, k)
    labels = f2c[fine.labels_]

    sizes = np.bincount(labels, minlength=k)
    if (sizes == 0).any():
        raise DataError(f"clustering produced empty clusters {np.flatnonzero(sizes == 0).tolist()}: lower K")
    if sizes.max() > max_fraction * n and not balance:
        log.warning(
            "cluster %d holds %.0f%% of the data (> %.0f%%): a catch-all expert; set data.balance: true",
            int(sizes.argmax()),
            100 * sizes.max() / n,
            100 * max_fraction,
        )
    return clustering, labels
