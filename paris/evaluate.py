"""`paris eval`: score samples with a judge trained on held-out real digits.

The judge is a small MLP fitted on the held-out split (images no expert or router trained
on). Two numbers per routing mode: the share of samples the judge labels as the prompted
digit, and the Fréchet distance between samples and real held-out digits in the judge's
hidden-layer features (FID's recipe, with a feature extractor that fits 8x8 digits).
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

JUDGE_SIZE = 8  # the judge sees digits at their native 8x8


def _flat(images: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> [N, 64] grayscale 8x8 in [0, 1]."""
    x = images.float().mean(1, keepdim=True)
    if x.shape[-1] != JUDGE_SIZE:
        x = F.interpolate(x, size=(JUDGE_SIZE, JUDGE_SIZE), mode="area")
    return tensor_to_unit(x).flatten(1).numpy()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # Dead ReLU units make the covariances singular; a tiny ridge keeps sqrtm well defined
    # (the same guard as the reference FID code's offset).
    ridge = 1e-6 * np.eye(len(s1))
    covmean = linalg.sqrtm((s1 + ridge) @ (s2 + ridge)).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


@dataclass
class DigitsJudge:
    clf: MLPClassifier
    real_features: np.ndarray
    cv_accuracy: float

    @classmethod
    def fit(cls, holdout: ShardSet, seed: int = 0) -> DigitsJudge:
        if (holdout.labels < 0).any() or len(holdout) < 50:
            raise ParisError("eval needs a labelled held-out split of at least 50 images (the digits data)")
        x, y = _flat(holdout.latents), holdout.labels.numpy()
        clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=2000, random_state=seed)
        # One BLAS thread: a 64-wide MLP on a few hundred images gains nothing from more, and
        # on a busy 2-core machine 2 threads took 50-90 s against 2-7 s (same fit, same scores).
        with cpu_threads(1):
            cv = float(cross_val_score(clf, x, y, cv=5).mean())
            clf.fit(x, y)
        judge = cls(clf, np.empty(0), cv)
        judge.real_features = judge.features(holdout.latents)
        return judge

    def features(self, images: torch.Tensor) -> np.ndarray:
        x = _flat(images)
        return np.maximum(x @ self.clf.coefs_[0] + self.clf.intercepts_[0], 0.0)  # the hidden ReLU layer

    def score(self, images: torch.Tensor, labels: np.ndarray) -> dict[str, float]:
        pred = self.clf.predict(_flat(images))
        return {
            "accuracy": float((pred == labels).mean()),
            "frechet": frechet_distance(self.features(images), self.real_features),
        }


def digit_prompts() -> list[tuple[str, int]]:
    return [(digit_caption(d), d) for d in range(10)]

