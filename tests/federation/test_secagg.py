"""Secure aggregation: the sum is right with and without dropouts, and the
coordinator never holds a readable update."""
from __future__ import annotations

import contextlib

import numpy as np
import pytest

from runtime.errors import FailedPrecondition, IntegrityError, InvalidArgument
from runtime.federation.secagg import (
    SecAggCoordinator,
    SecAggSite,
    dequantize,
    quantize,
    shamir_combine,
    shamir_split,
)

ROUND = b"round-7"


def run_round(updates: dict[str, np.ndarray], threshold: int, drop_after_sharing: set[str]
              ) -> tuple[np.ndarray, list[str], SecAggCoordinator, dict]:
    sites = {name: SecAggSite(name, ROUND, threshold) for name in updates}
    coord = SecAggCoordinator(ROUND, threshold)
    roster = coord.collect_keys([s.advertise() for s in sites.values()])
    inbox = coord.route([s.share(roster) for s in sites.values()])
    masked = {name: sites[name].mask(updates[name], inbox[name])
              for name in updates if name not in drop_after_sharing}
    survivors, dropped = coord.collect_masked(list(masked.values()))
    assert dropped == sorted(drop_after_sharing)
    responses = [sites[name].unmask(survivors, dropped) for name in survivors]
    total, who = coord.finish(responses)
    return total, who, coord, masked


@pytest.fixture
def updates() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {f"site-{i}": rng.normal(0, 0.05, 2000).astype(np.float32) for i in range(5)}


def test_the_sum_equals_the_plain_sum(updates: dict[str, np.ndarray]) -> None:
    total, who, _, _ = run_round(updates, threshold=3, drop_after_sharing=set())
    assert who == sorted(updates)
    expected = np.sum([u.astype(np.float64) for u in updates.values()], axis=0)
    np.testing.assert_allclose(total, expected, atol=5 * 2.0**-24)


def test_a_site_that_drops_after_sharing_leaves_the_sum_of_the_rest(
        updates: dict[str, np.ndarray]) -> None:
    total, who, _, _ = run_round(updates, threshold=3, drop_after_sharing={"site-2"})
    assert "site-2" not in who
    expected = np.sum([u.astype(np.float64) for n, u in updates.items() if n != "site-2"],
                      axis=0)
    np.testing.assert_allclose(total, expected, atol=5 * 2.0**-24)


def test_the_coordinator_only_sees_masked_vectors(updates: dict[str, np.ndarray]) -> None:
    _, _, coord, masked = run_round(updates, threshold=3, drop_after_sharing=set())
    for name in masked:
        seen = coord.masked[name]
        # Masked words look uniform over Z_2^64 ...
        top = (seen >> np.uint64(63)).astype(np.float64)
        assert 0.45 < top.mean() < 0.55
        # ... and carry nothing of the update they hide.
        plain = updates[name].astype(np.float64)
        assert abs(np.corrcoef(dequantize(seen), plain)[0, 1]) < 0.1
        assert not np.any(seen == quantize(updates[name]))


def test_unmask_requests_that_would_leak_are_refused(updates: dict[str, np.ndarray]) -> None:
    sites = {n: SecAggSite(n, ROUND, 3) for n in updates}
    coord = SecAggCoordinator(ROUND, 3)
    roster = coord.collect_keys([s.advertise() for s in sites.values()])
    inbox = coord.route([s.share(roster) for s in sites.values()])
    sites["site-0"].mask(updates["site-0"], inbox["site-0"])
    with pytest.raises(FailedPrecondition, match="both a survivor and dropped"):
        sites["site-0"].unmask(["site-0", "site-1", "site-2"], ["site-1"])
    with pytest.raises(FailedPrecondition, match="below the threshold"):
        sites["site-0"].unmask(["site-0", "site-1"], ["site-2"])


def test_below_threshold_the_round_fails(updates: dict[str, np.ndarray]) -> None:
    with pytest.raises(FailedPrecondition, match="below the threshold"):
        run_round(updates, threshold=4, drop_after_sharing={"site-0", "site-1"})
    coord = SecAggCoordinator(ROUND, 3)
    with pytest.raises(FailedPrecondition, match="below the threshold"):
        coord.collect_keys([SecAggSite("a", ROUND, 3).advertise()])


def test_tampered_or_misrouted_shares_are_refused(updates: dict[str, np.ndarray]) -> None:
    sites = {n: SecAggSite(n, ROUND, 3) for n in updates}
    coord = SecAggCoordinator(ROUND, 3)
    roster = coord.collect_keys([s.advertise() for s in sites.values()])
    inbox = coord.route([s.share(roster) for s in sites.values()])
    bad = dict(inbox["site-0"])
    blob = bytearray(bad["site-1"])
    blob[-1] ^= 1
    bad["site-1"] = bytes(blob)
    with pytest.raises(IntegrityError, match="do not authenticate"):
        sites["site-0"].mask(updates["site-0"], bad)
    with pytest.raises(IntegrityError):
        # site-1's share for site-2 handed to site-0: another key, refused.
        sites["site-0"].mask(updates["site-0"], {"site-1": inbox["site-2"]["site-1"]})
    with pytest.raises(IntegrityError, match="same key"):
        k = sites["site-0"].advertise()
        SecAggCoordinator(ROUND, 1).collect_keys([k, type(k)("other", k.c_pk, k.s_pk)])


def test_shamir_any_t_shares_rebuild_and_fewer_do_not() -> None:
    secret = bytes(range(32))
    shares = shamir_split(secret, 5, 3)
    for pick in ([0, 1, 2], [1, 3, 4], [0, 2, 4], [0, 1, 2, 3, 4]):
        assert shamir_combine([shares[i] for i in pick], 32) == secret
    # Two shares give another value, which almost always does not even fit.
    with contextlib.suppress(IntegrityError):
        assert shamir_combine(shares[:2], 32) != secret
    with pytest.raises(InvalidArgument):
        shamir_split(secret, 3, 4)


def test_quantize_refuses_what_it_cannot_hold() -> None:
    with pytest.raises(InvalidArgument, match="NaN"):
        quantize(np.array([np.inf]))
    with pytest.raises(InvalidArgument, match="too large"):
        quantize(np.array([1e20]))
    v = np.array([-1.5, 0.25, 3.0])
    np.testing.assert_allclose(dequantize(quantize(v)), v)
