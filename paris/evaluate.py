"""`paris eval`: score samples with a judge trained on held-out real images of known class.

The judge is a small MLP fitted on the held-out split (images no expert or router trained
on), for any labelled data: the digit of the digits, an emoji's category (bench/emoji.py).
Two numbers per routing mode: the share of samples the judge labels as the prompted class,
and the Fréchet distance between samples and real held-out images in the judge's
hidden-layer features (FID's recipe, with a feature extractor that fits these tiny images).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg
from sklearn.model_selection import cross_val_score
from sklearn.neural_network import MLPClassifier

from paris.data.encoders import tensor_to_unit
from paris.data.shards import ShardSet
from paris.data.sources import digit_caption
from paris.devices import cpu_threads
from paris.errors import ParisError

JUDGE_SIZE = 8  # digits at their native 8x8
MAX_JUDGE_SIZE = 16  # larger images are area-downsized: an MLP on a few hundred images needs few inputs


def _flat(images: torch.Tensor, size: int = JUDGE_SIZE) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> [N, C * size * size] in [0, 1]."""
    x = images.float()
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="area")
    return tensor_to_unit(x).flatten(1).numpy()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # Dead ReLU units make the covariances singular; a tiny ridge keeps sqrtm well defined
    # (the same guard as the reference FID code's offset).
    ridge = 1e-6 * np.eye(len(s1))
    covmean = linalg.sqrtm((s1 + ridge) @ (s2 + ridge)).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


MIN_HOLDOUT = 50


def judgeable(holdout: ShardSet) -> bool:
    """A held-out split a judge can be trained on: every image labelled, enough of them."""
    return len(holdout) >= MIN_HOLDOUT and bool((holdout.labels >= 0).all())


@dataclass
class Judge:
    clf: MLPClassifier
    real_features: np.ndarray
    cv_accuracy: float
    size: int = JUDGE_SIZE
    classes: int = 10

    @classmethod
    def fit(cls, holdout: ShardSet, seed: int = 0) -> Judge:
        if not judgeable(holdout):
            raise ParisError(f"eval needs a labelled held-out split of at least {MIN_HOLDOUT} images")
        size = min(int(holdout.latents.shape[-1]), MAX_JUDGE_SIZE)
        x, y = _flat(holdout.latents, size), holdout.labels.numpy()
        clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=2000, random_state=seed)
        folds = int(min(5, np.bincount(y).max()))
        # One BLAS thread: a 64-wide MLP on a few hundred images gains nothing from more, and
        # on a busy 2-core machine 2 threads took 50-90 s against 2-7 s (same fit, same scores).
        with cpu_threads(1):
            cv = float(cross_val_score(clf, x, y, cv=max(2, folds)).mean())
            clf.fit(x, y)
        judge = cls(clf, np.empty(0), cv, size, len(np.unique(y)))
        judge.real_features = judge.features(holdout.latents)
        return judge

    def features(self, images: torch.Tensor) -> np.ndarray:
        x = _flat(images, self.size)
        return np.maximum(x @ self.clf.coefs_[0] + self.clf.intercepts_[0], 0.0)  # the hidden ReLU layer

    def score(self, images: torch.Tensor, labels: np.ndarray) -> dict[str, float]:
        pred = self.clf.predict(_flat(images, self.size))
        return {
            "accuracy": float((pred == labels).mean()),
            "frechet": frechet_distance(self.features(images), self.real_features),
        }


def digit_prompts() -> list[tuple[str, int]]:
    return [(digit_caption(d), d) for d in range(10)]


def labelled_prompts(holdout: ShardSet, per_class: int, seed: int = 0) -> list[tuple[str, int]]:
    """Up to `per_class` distinct held-out captions of each class, class by class: prompts
    whose class the judge can check. The digits' captions are one per class, so there it is
    one prompt per digit."""
    rng = np.random.default_rng(seed)
    out: list[tuple[str, int]] = []
    labels = holdout.labels.tolist()
    for label in sorted(set(labels)):
        captions = sorted({c for c, y in zip(holdout.captions, labels, strict=True) if y == label and c.strip()})
        pick = sorted(rng.permutation(len(captions))[:per_class])
        out += [(captions[i], label) for i in pick]
    return out

