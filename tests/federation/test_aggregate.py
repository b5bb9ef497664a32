"""FedAvg and the checks an update must pass to count (SECURITY-CASES 23:
NaN/Inf, wrong shapes, an update crafted to dominate)."""
from __future__ import annotations

import numpy as np
import pytest

from runtime.errors import FailedPrecondition
from runtime.federation.aggregate import SiteUpdate, fedavg


def test_weighted_by_tokens() -> None:
    a = SiteUpdate("a", np.full(4, 1.0, np.float32), 100)
    b = SiteUpdate("b", np.full(4, -1.0, np.float32), 300)
    mean, rejected = fedavg([a, b], 4, clip_norm=10.0)
    np.testing.assert_allclose(mean, np.full(4, -0.5))
    assert rejected == []


@pytest.mark.parametrize(("delta", "tokens", "reason"), [
    (np.full(3, 0.1, np.float32), 10, "wrong shape"),
    (np.array([0.1, np.nan, 0, 0], np.float32), 10, "NaN"),
    (np.array([np.inf, 0, 0, 0], np.float32), 10, "NaN or infinity"),
    (np.full(4, 5.0, np.float32), 10, "exceeds the clipping bound"),
    (np.full(4, 0.1, np.float32), 0, "token count"),
])
def test_23_bad_updates_are_rejected_and_the_rest_count(delta: np.ndarray, tokens: int,
                                                     reason: str) -> None:
    good = SiteUpdate("good", np.full(4, 0.25, np.float32), 50)
    mean, rejected = fedavg([good, SiteUpdate("bad", delta, tokens)], 4, clip_norm=1.0)
    np.testing.assert_allclose(mean, good.delta)
    assert [r.site for r in rejected] == ["bad"] and reason in rejected[0].reason


def test_one_update_per_site_and_a_minimum() -> None:
    u = SiteUpdate("a", np.zeros(2, np.float32), 1)
    _, rejected = fedavg([u, u], 2, clip_norm=1.0)
    assert rejected[0].reason == "sent more than one update"
    with pytest.raises(FailedPrecondition, match="needs 2"):
        fedavg([u], 2, clip_norm=1.0, min_sites=2)
