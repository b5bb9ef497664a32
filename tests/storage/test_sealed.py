"""The sealed format: golden vectors, an independent decoder written from the
spec, and every way a sealed file can be damaged (SECURITY-CASES 1-7)."""
from __future__ import annotations

import hashlib
import hmac
import io
import json
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.errors import IntegrityError, WrongKey
from runtime.storage.sealed import Context, SealedReader, SealedWriter, Suite

VECTORS = json.loads((Path(__file__).parent / "vectors" / "sealed-v1.json").read_text())
DEK = bytes(range(32))
CTX = Context("model", "m", 1)


def seal(plaintext: bytes, dek: bytes = DEK, ctx: Context = CTX, log2: int = 12,
         suite: Suite = Suite.AES_256_GCM) -> bytes:
    out = io.BytesIO()
    w = SealedWriter(out, dek, ctx, suite, log2)
    w.write(plaintext)
    w.close()
    return out.getvalue()


def unseal(data: bytes, dek: bytes = DEK, ctx: Context | None = CTX) -> bytes:
    r = SealedReader(io.BytesIO(data), len(data), dek, ctx)
    plain = b"".join(r.chunks())
    r.verify_digest(hashlib.sha256(plain).digest())
    return plain


def unseal_into(data: bytes, dek: bytes = DEK) -> bytes:
    r = SealedReader(io.BytesIO(data), len(data), dek, CTX)
    buf = bytearray(r.plaintext_size)
    r.decrypt_into(memoryview(buf))
    return bytes(buf)


# ---- golden vectors and the spec ------------------------------------------------------

@pytest.mark.parametrize("v", VECTORS["vectors"], ids=lambda v: v["name"])
def test_golden_vectors_seal_to_the_same_bytes(v: dict) -> None:
    out = io.BytesIO()
    w = SealedWriter(out, bytes.fromhex(v["dek"]), Context(**v["context"]), Suite(v["suite"]),
                     v["chunk_log2"], salt=bytes.fromhex(v["salt"]))
    w.write(bytes.fromhex(v["plaintext"]))
    w.close()
    assert out.getvalue().hex() == v["sealed"]
    assert hashlib.sha256(out.getvalue()).hexdigest() == v["sealed_sha256"]


def spec_decode(sealed: bytes, dek: bytes) -> tuple[dict, bytes]:
    """docs/formats/sealed-v1.md, implemented again from the text alone."""
    magic, version, suite, log2, salt, n = struct.unpack_from("<8sHHB3x32sI", sealed)
    assert magic == b"HEARTHSL" and version == 1
    context = sealed[52:52 + n]
    mac = sealed[52 + n:84 + n]
    okm = HKDF(hashes.SHA256(), 64, salt, b"hearth/sealed/v1" + struct.pack("<HB", suite, log2)
               + context).derive(dek)
    assert hmac.compare_digest(hmac.new(okm[32:], sealed[:52 + n], "sha256").digest(), mac)
    aead = (AESGCM if suite == 1 else ChaCha20Poly1305)(okm[:32])
    body, step = sealed[84 + n:], (1 << log2) + 16
    chunks = [body[i:i + step] for i in range(0, len(body), step)]
    plain = b"".join(aead.decrypt(struct.pack(">QB3x", i, i == len(chunks) - 1), c, mac)
                     for i, c in enumerate(chunks))
    data, trailer = plain[:-32], plain[-32:]
    assert hashlib.sha256(data).digest() == trailer
    return json.loads(context), data


@pytest.mark.parametrize("v", VECTORS["vectors"], ids=lambda v: v["name"])
def test_spec_decoder_reads_the_vectors(v: dict) -> None:
    context, data = spec_decode(bytes.fromhex(v["sealed"]), bytes.fromhex(v["dek"]))
    assert context == v["context"]
    assert data.hex() == v["plaintext"]
    sealed = bytes.fromhex(v["sealed"])
    assert unseal(sealed, bytes.fromhex(v["dek"]), Context(**v["context"])) == data


@pytest.mark.parametrize("size", [0, 1, 4096 - 32, 4096 - 31, 4096, 4097, 3 * 4096 + 5])
@pytest.mark.parametrize("suite", list(Suite))
def test_round_trip_at_chunk_boundaries(size: int, suite: Suite) -> None:
    data = bytes((i * 31) % 251 for i in range(size))
    sealed = seal(data, suite=suite)
    assert unseal(sealed) == data
    assert unseal_into(sealed) == data
    assert spec_decode(sealed, DEK)[1] == data


def test_writes_of_any_size_give_the_same_plaintext() -> None:
    data = bytes(range(256)) * 100
    out = io.BytesIO()
    w = SealedWriter(out, DEK, CTX, chunk_log2=12)
    for i in range(0, len(data), 777):
        w.write(data[i:i + 777])
    w.close()
    assert unseal(out.getvalue()) == data


# ---- SECURITY-CASES 1-7 ----------------------------------------------------------------

DATA = bytes(range(256)) * 64          # 16 KiB: four full 4 KiB chunks and a trailer chunk
HEADER = 84 + len(CTX.encode())
STEP = 4096 + 16


def chunk_at(sealed: bytes, i: int) -> slice:
    return slice(HEADER + i * STEP, HEADER + (i + 1) * STEP)


def test_1_truncated_files_fail() -> None:
    sealed = seal(DATA)
    for cut in (len(sealed) - (32 + 16), len(sealed) - 1, HEADER + STEP, HEADER + STEP + 10,
                HEADER + 1):
        with pytest.raises(IntegrityError):
            unseal(sealed[:cut])
        with pytest.raises(IntegrityError):
            unseal_into(sealed[:cut])


def test_1_a_failed_reader_keeps_failing() -> None:
    sealed = bytearray(seal(DATA))
    sealed[chunk_at(sealed, 1).start + 5] ^= 1
    r = SealedReader(io.BytesIO(bytes(sealed)), len(sealed), DEK, CTX)
    it = r.chunks()
    next(it)                            # chunk 0 is fine
    with pytest.raises(IntegrityError, match="chunk 1 of 5 failed authentication"):
        next(it)
    for _ in range(2):
        with pytest.raises(IntegrityError, match="chunk 1"):
            list(r.chunks())


def test_2_reordered_and_duplicated_chunks_fail_at_the_first_out_of_place() -> None:
    sealed = seal(DATA)
    c0, c1 = sealed[chunk_at(sealed, 0)], sealed[chunk_at(sealed, 1)]
    swapped = sealed[:HEADER] + c1 + c0 + sealed[HEADER + 2 * STEP:]
    with pytest.raises(IntegrityError, match="chunk 0 of"):
        unseal(swapped)
    duplicated = sealed[:HEADER + STEP] + c0 + sealed[HEADER + 2 * STEP:]
    with pytest.raises(IntegrityError, match="chunk 1 of"):
        unseal(duplicated)


def test_3_chunk_spliced_from_another_file_under_the_same_key_fails() -> None:
    a, b = seal(DATA), seal(DATA)      # same DEK, same plaintext, different salts
    spliced = a[:HEADER + STEP] + b[chunk_at(b, 1)] + a[HEADER + 2 * STEP:]
    with pytest.raises(IntegrityError, match="chunk 1 of"):
        unseal(spliced)


def test_4_swapped_or_renamed_files_fail() -> None:
    other = seal(DATA, ctx=Context("model", "other", 1))
    with pytest.raises(IntegrityError, match="expected"):
        unseal(other, ctx=CTX)
    adapter = seal(DATA, ctx=Context("adapter", "m", 1))
    with pytest.raises(IntegrityError, match="adapter"):
        unseal(adapter, ctx=CTX)
    older = seal(DATA, ctx=Context("model", "m", 2))
    with pytest.raises(IntegrityError, match="version=2"):
        unseal(older, ctx=CTX)


def test_5_wrong_key_is_refused_before_any_chunk_uniformly() -> None:
    sealed = seal(DATA)
    with pytest.raises(WrongKey) as wrong:
        SealedReader(io.BytesIO(sealed), len(sealed), bytes(32), CTX)
    tampered = bytearray(sealed)
    tampered[20] ^= 1                  # the salt
    with pytest.raises(WrongKey) as bad_header:
        SealedReader(io.BytesIO(bytes(tampered)), len(tampered), DEK, CTX)
    assert str(wrong.value) == str(bad_header.value)


@pytest.mark.parametrize(("offset", "value", "message"), [
    (8, 2, "unsupported format version 2"),
    (10, 9, "unknown cipher suite 9"),
    (12, 30, "chunk size"),
    (0, ord("X"), "bad magic"),
])
def test_6_tampered_or_downgraded_headers_are_refused(offset: int, value: int, message: str
                                                      ) -> None:
    sealed = bytearray(seal(DATA))
    sealed[offset] = value
    with pytest.raises(IntegrityError, match=message):
        unseal(bytes(sealed))


def test_6_suite_or_chunk_size_downgrade_fails_authentication() -> None:
    sealed = bytearray(seal(DATA))
    sealed[10] = 2                     # claim ChaCha20 instead of AES
    with pytest.raises(WrongKey):
        unseal(bytes(sealed))
    sealed = bytearray(seal(DATA))
    sealed[12] = 13                    # claim 8 KiB chunks
    with pytest.raises(WrongKey):
        unseal(bytes(sealed))


@pytest.mark.parametrize("data", [b"", b"HEARTHSL", seal(DATA)[:40], seal(DATA)[:HEADER - 5],
                                  seal(DATA)[:HEADER + 10]])
def test_7_wrong_lengths_are_clean_errors(data: bytes) -> None:
    with pytest.raises(IntegrityError):
        unseal(data)


def test_every_single_byte_flip_is_caught() -> None:
    sealed = seal(b"patient record " * 100, log2=12)
    for pos in range(len(sealed)):
        flipped = bytearray(sealed)
        flipped[pos] ^= 0x40
        with pytest.raises((IntegrityError, WrongKey)):
            unseal(bytes(flipped))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_fuzz_random_input_is_refused(data: bytes) -> None:
    with pytest.raises((IntegrityError, WrongKey)):
        unseal(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_mutations_of_a_real_file_never_pass(data: st.DataObject) -> None:
    sealed = bytearray(seal(DATA[:5000]))
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = data.draw(st.integers(0, len(sealed) - 1))
        if kind == "flip":
            sealed[pos] ^= data.draw(st.integers(1, 255))
        elif kind == "cut":
            del sealed[pos:pos + data.draw(st.integers(1, 64))]
        else:
            sealed[pos:pos] = data.draw(st.binary(min_size=1, max_size=32))
    try:
        out = unseal(bytes(sealed))
    except (IntegrityError, WrongKey):
        return
    assert out == DATA[:5000]          # a mutation that changes nothing is allowed
