"""Two-stage k-means (paper §3.1): many fine centroids first, then merged into K clusters.

The fine stage follows the data's modes closely; the merge stage groups those modes into K
shards of related images. Merging centroids (weighted by their counts) instead of clustering
all points to K keeps the cost of the K-way decision independent of the dataset size.

Cost as N grows: the fit sees a bounded uniform sample (`data.cluster_sample`), so it costs
the same at 10^5 and 10^8 images; assigning every sample is one nearest-centroid search
per sample against F fine centroids, in chunks: O(N * F * P) time and O(chunk * F) memory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.decomposition import PCA

from paris.errors import DataError

log = logging.getLogger(__name__)

EXACT_UP_TO = 50_000  # `kmeans: auto` runs scikit-learn's exact KMeans on samples this small
ASSIGN_CHUNK = 8192


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class Clustering:
    pca_mean: np.ndarray  # [D]
    pca_components: np.ndarray  # [P, D]
    fine_centroids: np.ndarray  # [F, P]
    fine_to_cluster: np.ndarray  # [F] -> cluster id
    k: int

    def project(self, features: np.ndarray) -> np.ndarray:
        return (np.asarray(features, dtype=np.float32) - self.pca_mean) @ self.pca_components.T

    def assign(self, features: np.ndarray, chunk: int = ASSIGN_CHUNK) -> np.ndarray:
        """Cluster of any rows (training and held-out alike): the nearest fine centroid's
        cluster, computed chunk by chunk so memory is O(chunk x F), not O(N x F)."""
        c = self.fine_centroids.astype(np.float32)
        c_sq = (c**2).sum(1)
        out = np.empty(len(features), dtype=np.int64)
        for s in range(0, len(features), chunk):
            z = self.project(features[s : s + chunk]).astype(np.float32)
            d = c_sq[None] - 2 * z @ c.T  # |z|^2 is the same for every centroid: left out
            out[s : s + chunk] = self.fine_to_cluster[d.argmin(1)]
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "pca_mean": self.pca_mean,
            "pca_components": self.pca_components,
            "fine_centroids": self.fine_centroids,
            "fine_to_cluster": self.fine_to_cluster,
        }

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray], k: int | None = None) -> Clustering:
        f2c = a["fine_to_cluster"].astype(np.int64)
        return cls(a["pca_mean"], a["pca_components"], a["fine_centroids"], f2c, k or int(f2c.max()) + 1)


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


def fine_kmeans(z: np.ndarray, fine_k: int, seed: int, backend: str = "auto") -> tuple[np.ndarray, np.ndarray, str]:
    """Stage one: (centroids [F, P], label of each row, the backend that ran)."""
    n = len(z)
    if backend == "faiss" and not faiss_available():
        raise DataError("data.kmeans: faiss needs the faiss-cpu (or faiss-gpu) package installed")
    if backend == "faiss" or (backend == "auto" and n > EXACT_UP_TO and faiss_available()):
        import faiss

        x = np.ascontiguousarray(z, dtype=np.float32)
        km = faiss.Kmeans(x.shape[1], fine_k, niter=25, nredo=3, seed=seed, verbose=False)
        km.train(x)
        _, labels = km.index.search(x, 1)
        centroids = np.asarray(km.centroids, dtype=np.float64)
        return centroids, labels[:, 0].astype(np.int64), "faiss"
    if n > EXACT_UP_TO:
        mb = MiniBatchKMeans(n_clusters=fine_k, random_state=seed, n_init=3, batch_size=4096).fit(z)
        return mb.cluster_centers_, mb.labels_.astype(np.int64), "sklearn-minibatch"
    km_exact = KMeans(n_clusters=fine_k, random_state=seed, n_init=3).fit(z)
    return km_exact.cluster_centers_, km_exact.labels_.astype(np.int64), "sklearn"


def two_stage_kmeans(
    features: np.ndarray,
    k: int,
    fine_k: int,
    pca_dim: int,
    seed: int,
    balance: bool = False,
    max_fraction: float = 0.5,
    backend: str = "auto",
) -> tuple[Clustering, np.ndarray]:
    """Fit on `features` (the bounded sample); returns the clustering and each row's cluster."""
    n = len(features)
    if k > n:
        raise DataError(f"K={k} clusters is larger than the dataset ({n} samples)")
    fine_k = max(k, min(fine_k, n))
    p = min(pca_dim, features.shape[1], n)
    pca = PCA(n_components=p, random_state=seed).fit(features)
    z = pca.transform(features)

    centroids, fine_labels, ran = fine_kmeans(z, fine_k, seed, backend)
    log.info("fine k-means: %d centroids on %d samples with %s", fine_k, n, ran)
    counts = np.bincount(fine_labels, minlength=fine_k)
    merge = KMeans(n_clusters=k, random_state=seed, n_init=10).fit(centroids, sample_weight=np.maximum(counts, 1e-3))
    f2c = merge.labels_.astype(np.int64)
    if balance and k > 1:
        cap = int(np.ceil(max_fraction * n))
        f2c = _balanced_merge(centroids, counts, merge.cluster_centers_, max(cap, int(np.ceil(n / k))))
    clustering = Clustering(pca.mean_.astype(np.float32), pca.components_.astype(np.float32), centroids, f2c, k)
    labels = f2c[fine_labels]

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
