"""Air-gapped update files: SECURITY-CASES 24 (tampered, truncated, another
federation, replayed), each refusal naming its check."""
from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from runtime.federation.aggregate import SiteUpdate
from runtime.federation.update_bundle import RefusedUpdate, UpdateInbox, seal_update

COORD = X25519PrivateKey.generate()
SITE = Ed25519PrivateKey.generate()
UPDATE = SiteUpdate("ward-3", np.linspace(-1, 1, 500, dtype=np.float32), 1234)


def inbox(**kw: object) -> UpdateInbox:
    args: dict = dict(federation="clinics", round=4, coordinator_key=COORD,
                      sites={"ward-3": SITE.public_key()}, size=500)
    args.update(kw)
    return UpdateInbox(**args)


def sealed(round_no: int = 4, federation: str = "clinics", update: SiteUpdate = UPDATE,
           key: Ed25519PrivateKey = SITE) -> bytes:
    return seal_update(update, federation, round_no, key, COORD.public_key())


def test_round_trip() -> None:
    got = inbox().open_update(sealed())
    assert got.site == "ward-3" and got.tokens == 1234
    np.testing.assert_array_equal(got.delta, UPDATE.delta)
    # A courier sees no plaintext.
    assert UPDATE.delta.tobytes()[:64] not in sealed()


def test_24_tampered_anywhere() -> None:
    blob = sealed()
    for pos in (20, len(blob) // 2, len(blob) - 70, len(blob) - 1):
        bad = bytearray(blob)
        bad[pos] ^= 0x01
        with pytest.raises(RefusedUpdate):
            inbox().open_update(bytes(bad))
    bad = bytearray(blob)
    bad[len(blob) // 2] ^= 0x01
    with pytest.raises(RefusedUpdate, match="does not verify"):
        inbox().open_update(bytes(bad))


@pytest.mark.parametrize("cut", [3, 18, 40, 200, 64])
def test_24_truncated(cut: int) -> None:
    blob = sealed()
    with pytest.raises(RefusedUpdate, match=r"truncated|bad magic|not valid|does not verify"):
        inbox().open_update(blob[:cut] if cut < 100 else blob[:-cut])


def test_24_another_federation_and_replays() -> None:
    with pytest.raises(RefusedUpdate, match="federation 'banks'"):
        inbox().open_update(sealed(federation="banks"))
    box = inbox()
    blob = sealed()
    box.open_update(blob)
    with pytest.raises(RefusedUpdate, match="already sent its update for round 4"):
        box.open_update(blob)
    with pytest.raises(RefusedUpdate, match="round 3, the open round is 4"):
        inbox().open_update(sealed(round_no=3))


def test_unknown_site_wrong_keys_and_shapes() -> None:
    with pytest.raises(RefusedUpdate, match="not enrolled"):
        inbox(sites={}).open_update(sealed())
    with pytest.raises(RefusedUpdate, match="does not verify"):
        inbox().open_update(sealed(key=Ed25519PrivateKey.generate()))
    with pytest.raises(RefusedUpdate, match="another coordinator key"):
        inbox(coordinator_key=X25519PrivateKey.generate()).open_update(sealed())
    with pytest.raises(RefusedUpdate, match="the round expects 400"):
        inbox(size=400).open_update(sealed())
    with pytest.raises(RefusedUpdate, match="token count"):
        inbox().open_update(sealed(update=SiteUpdate("ward-3", UPDATE.delta, 0)))
