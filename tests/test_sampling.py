"""The inverse-CDF draw used by the HF backend's sampled decoding."""

import numpy as np
import pytest
import torch

from refine.backends.sampling import inverse_cdf


def test_draws_follow_the_weights():
    w = torch.tensor([0.1, 0.0, 2.0, 0.5, 0.0, 1.4], dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    n = 30000
    counts = np.bincount([inverse_cdf(w, g) for _ in range(n)], minlength=len(w))
    p = (w / w.sum()).numpy()
    assert counts[1] == counts[4] == 0  # zero weight: never drawn
    # each frequency within 4.5 standard errors of its probability (a swapped or shifted index fails by far more)
    se = np.sqrt(p * (1 - p) / n) + 1e-12
    assert np.all(np.abs(counts / n - p) <= 4.5 * se)


def test_seeded_and_edge_cases():
    w = torch.softmax(torch.randn(5000, generator=torch.Generator().manual_seed(0)), 0)
    a = [inverse_cdf(w, torch.Generator().manual_seed(7)) for _ in range(3)]
    b = [inverse_cdf(w, torch.Generator().manual_seed(7)) for _ in range(3)]
    assert a == b
    one = torch.zeros(10, dtype=torch.float64)
    one[9] = 1e-300  # a single, tiny, last weight is still the draw
    assert inverse_cdf(one, torch.Generator().manual_seed(1)) == 9
    with pytest.raises(ValueError):
        inverse_cdf(torch.zeros(4), torch.Generator())
