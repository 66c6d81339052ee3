from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from clinfl.secagg.hazmat.keys import (
    PAIRWISE_MASK,
    SHARE_ENCRYPTION,
    ShareDecryptionError,
    derive_shared_key,
    open_sealed,
    seal,
    sign,
    verify,
)
from clinfl.secagg.hazmat.prg import add_mask_stream, mask_stream, residue_dtype
from clinfl.secagg.hazmat.quantize import CHUNK, check_no_overflow, dequantize_sum, quantize
from clinfl.secagg.hazmat.shamir import PRIME, Share, reconstruct_secret, split_secret

SEED = bytes(range(32))


def test_prg_is_aes256_ctr_over_the_full_seed() -> None:
    words = mask_stream(SEED, 4, bits=64)
    encryptor = Cipher(algorithms.AES(SEED), modes.CTR(bytes(16))).encryptor()
    expected = np.frombuffer(encryptor.update(bytes(32)), dtype="<u8")
    assert np.array_equal(words, expected)
    # Every seed byte matters (no folding to 32 bits).
    for position in (0, 31):
        other = bytearray(SEED)
        other[position] ^= 1
        assert not np.array_equal(mask_stream(bytes(other), 4, bits=64), words)


def test_prg_values_are_uniform_over_the_modulus() -> None:
    values = mask_stream(SEED, 200_000, bits=20)
    assert int(values.max()) < 2**20
    counts = np.bincount((values >> np.uint64(16)).astype(np.int64), minlength=16)
    assert chisquare(counts).pvalue > 1e-4


@pytest.mark.parametrize(("seed", "bits"), [(b"short", 32), (SEED, 0), (SEED, 65)])
def test_prg_rejects_bad_arguments(seed: bytes, bits: int) -> None:
    with pytest.raises(ValueError):
        mask_stream(seed, 3, bits=bits)


@given(
    secret=st.binary(min_size=32, max_size=32),
    holders=st.integers(1, 9),
    data=st.data(),
)
@settings(max_examples=40, deadline=None)
def test_any_threshold_shares_reconstruct(secret: bytes, holders: int, data: st.DataObject) -> None:
    threshold = data.draw(st.integers(1, holders))
    shares = split_secret(secret, threshold=threshold, holders=holders)
    subset = data.draw(st.permutations(shares)).__getitem__(slice(0, threshold))
    assert reconstruct_secret(subset, threshold=threshold) == secret


def test_shamir_known_answer_with_injected_coefficients() -> None:
    # f(x) = s + 5x with s = 7 (as a 32-byte secret): shares (1, 12), (2, 17), (3, 22).
    secret = (7).to_bytes(32, "big")
    shares = split_secret(secret, threshold=2, holders=3, random_below=lambda _: 5)
    assert [(s.x, s.y) for s in shares] == [(1, 12), (2, 17), (3, 22)]
    assert reconstruct_secret([shares[2], shares[0]], threshold=2) == secret


def test_fewer_than_threshold_shares_are_consistent_with_every_secret() -> None:
    # With t = 2, one share (x, y) fits a line through (0, s') for every candidate s'.
    shares = split_secret(SEED, threshold=2, holders=3)
    one = shares[0]
    for candidate in (0, 1, 2**255):
        slope = (one.y - candidate) * pow(one.x, -1, PRIME) % PRIME
        assert (candidate + slope * one.x) % PRIME == one.y
    with pytest.raises(ValueError, match="need 2 shares"):
        reconstruct_secret(shares[:1], threshold=2)
    with pytest.raises(ValueError, match="repeat"):
        reconstruct_secret([shares[0], Share(shares[0].x, shares[1].y)], threshold=2)


def test_quantised_sum_matches_plain_sum_within_the_error_bound() -> None:
    rng = np.random.default_rng(0)
    sites, clip, scale, bits = 7, 1.0, 2.0**16, 32
    check_no_overflow(clip=clip, scale=scale, bits=bits, sites=sites)
    vectors = [rng.uniform(-1.5, 1.5, 1000) for _ in range(sites)]
    total = sum(quantize(v, clip=clip, scale=scale, bits=bits, rng=rng) for v in vectors)
    assert isinstance(total, np.ndarray)
    recovered = dequantize_sum(total % np.uint64(2**bits), clip=clip, scale=scale, sites=sites)
    expected = sum(np.clip(v, -clip, clip) for v in vectors)
    assert np.abs(recovered - expected).max() <= sites / scale


def test_stochastic_rounding_is_unbiased() -> None:
    rng = np.random.default_rng(1)
    values = np.full(100_000, 0.3)
    q = quantize(values, clip=1.0, scale=1.0, bits=8, rng=rng)
    assert set(np.unique(q).tolist()) == {1, 2}
    assert abs(q.astype(float).mean() - 1.3) < 0.01


def _one_pass_quantize(values: np.ndarray, clip: float, scale: float, seed: int) -> np.ndarray:
    """The definition, in one pass over the whole vector."""
    shifted = np.clip(values * scale + clip * scale, 0.0, 2 * clip * scale)
    return np.floor(shifted + np.random.default_rng(seed).random(values.shape)).astype(np.uint32)


@settings(max_examples=15, deadline=None)
@given(
    length=st.sampled_from([0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17]),
    seed=st.integers(0, 2**32 - 1),
)
def test_chunked_quantisation_equals_the_one_pass_definition(length: int, seed: int) -> None:
    values = np.random.default_rng(seed).normal(0.0, 0.3, length)
    q = quantize(values, clip=0.5, scale=2.0**20, bits=32, rng=np.random.default_rng(seed))
    assert np.array_equal(q, _one_pass_quantize(values, 0.5, 2.0**20, seed))


def test_overflow_is_refused_with_the_numbers() -> None:
    with pytest.raises(ValueError, match=r"sum of 100 sites can reach .* >= 2\^16"):
        check_no_overflow(clip=1.0, scale=1000.0, bits=16, sites=100)


def test_x25519_hkdf_keys_agree_and_are_bound_to_purpose_and_context() -> None:
    a, b = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    ab = derive_shared_key(a, b.public_key(), purpose=PAIRWISE_MASK, context=b"round-1|a|b")
    ba = derive_shared_key(b, a.public_key(), purpose=PAIRWISE_MASK, context=b"round-1|a|b")
    assert ab == ba and len(ab) == 32
    keys = {
        derive_shared_key(a, b.public_key(), purpose=p, context=c)
        for p, c in itertools.product((PAIRWISE_MASK, SHARE_ENCRYPTION), (b"round-1", b"round-2"))
    }
    assert len(keys) == 4
    with pytest.raises(ValueError, match="unknown key purpose"):
        derive_shared_key(a, b.public_key(), purpose="other", context=b"")


def test_signatures_verify_and_reject_tampering() -> None:
    key = Ed25519PrivateKey.generate()
    signature = sign(key, b"round 3 survivors: 1,2,4")
    assert verify(key.public_key(), signature, b"round 3 survivors: 1,2,4")
    assert not verify(key.public_key(), signature, b"round 3 survivors: 1,2,3")
    assert not verify(
        Ed25519PrivateKey.generate().public_key(), signature, b"round 3 survivors: 1,2,4"
    )


def test_sealed_shares_open_only_with_the_same_key_and_associated_data() -> None:
    key = bytes(32)
    blob = seal(key, b"share", associated_data=b"r1|from-a|to-b")
    assert open_sealed(key, blob, associated_data=b"r1|from-a|to-b") == b"share"
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    for bad_key, bad_blob, ad in (
        (bytes(31) + b"\x01", blob, b"r1|from-a|to-b"),
        (key, tampered, b"r1|from-a|to-b"),
        (key, blob, b"r2|from-a|to-b"),
        (key, blob[:10], b"r1|from-a|to-b"),
    ):
        with pytest.raises(ShareDecryptionError):
            open_sealed(bad_key, bad_blob, associated_data=ad)


@settings(max_examples=50, deadline=None)
@given(
    values=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=50),
    clip=st.floats(0.01, 4.0),
    exponent=st.integers(0, 16),
)
def test_quantised_values_stay_in_range(values: list[float], clip: float, exponent: int) -> None:
    scale = 2.0**exponent
    q = quantize(np.array(values), clip=clip, scale=scale, bits=32, rng=np.random.default_rng(0))
    assert q.dtype == np.uint32
    assert int(q.max()) <= math.ceil(2 * clip * scale)


@settings(max_examples=20, deadline=None)
@given(
    length=st.sampled_from([0, 1, 7, 262_143, 262_144, 262_145, 300_001]),
    bits=st.sampled_from([8, 20, 32, 40, 64]),
    subtract=st.booleans(),
)
def test_folded_mask_stream_equals_the_stream_added(length: int, bits: int, subtract: bool) -> None:
    seed = bytes(range(32))
    dtype = residue_dtype(bits)
    start = (
        np.random.default_rng(length).integers(0, 2**bits, length, dtype=np.uint64).astype(dtype)
    )
    target = start.copy()
    add_mask_stream(target, seed, bits=bits, subtract=subtract)
    stream = mask_stream(seed, length, bits=bits).astype(object)
    sign = -1 if subtract else 1
    expected = [(int(a) + sign * int(b)) % 2**bits for a, b in zip(start, stream, strict=True)]
    assert target.tolist() == expected
