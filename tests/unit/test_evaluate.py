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
