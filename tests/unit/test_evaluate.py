"""The Fréchet distance used by `paris eval`: zero for one distribution, |Δμ|² for a shift."""

import numpy as np

from paris.evaluate import frechet_distance


def test_frechet_distance_of_gaussians() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20000, 4))
    b = rng.normal(size=(20000, 4))
    assert frechet_distance(a, b) < 0.01
    shift = np.array([1.0, 2.0, 0.0, 0.0])
    assert abs(frechet_distance(a, b + shift) - 5.0) < 0.05
    # Doubling the spread of one: tr(S1 + S2 - 2 sqrt(S1 S2)) = 4 * (1 + 4 - 4) = 4.
    assert abs(frechet_distance(a, 2 * b) - 4.0) < 0.1


def test_the_digits_judge_tells_real_digits_from_noise() -> None:
    # What `paris eval`'s accuracy means: the judge, fitted on held-out real digits, labels
    # other real digits correctly and noise at about chance.
    import torch
    from sklearn.datasets import load_digits

    from paris.data.shards import ShardSet
    from paris.evaluate import Judge

    ds = load_digits()
    images = torch.from_numpy(ds.images).float()[:, None] / 8.0 - 1.0  # [N, 1, 8, 8] in [-1, 1]
    labels = torch.from_numpy(ds.target)
    fit, other = slice(0, 400), slice(400, 800)
    holdout = ShardSet(images[fit], torch.zeros(400, 1, 1), torch.ones(400, 1, dtype=torch.bool), labels[fit],
                       torch.zeros(400, dtype=torch.long), [""] * 400)
    judge = Judge.fit(holdout)
    real = judge.score(images[other], labels[other].numpy())
    noise = judge.score(torch.rand(400, 1, 8, 8) * 2 - 1, labels[other].numpy())
    assert judge.cv_accuracy > 0.8 and real["accuracy"] > 0.8
    assert noise["accuracy"] < 0.3
    assert real["frechet"] < noise["frechet"] / 5
