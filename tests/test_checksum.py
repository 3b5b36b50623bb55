"""Checksum strings in both spellings, and file digests that agree with hashlib."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings, HealthCheck
from hypothesis import strategies as st

from dlman.checksum import ALGORITHMS, Checksum, file_digest, parse_checksum
from dlman.errors import DownloadError, InvalidInputError

DATA = b"dlman checksum test data\n"
DIGESTS = {name: hashlib.new(name, DATA).hexdigest() for name in ("sha256", "sha512", "sha1", "md5")}
ARIA2_NAMES = {"sha256": "sha-256", "sha512": "sha-512", "sha1": "sha-1", "md5": "md5"}


@pytest.mark.parametrize("algorithm", sorted(DIGESTS))
def test_colon_form_parses_for_each_algorithm(algorithm):
    assert parse_checksum(f"{algorithm}:{DIGESTS[algorithm]}") == Checksum(algorithm, DIGESTS[algorithm])


@pytest.mark.parametrize("algorithm", sorted(DIGESTS))
def test_aria2_form_parses_for_each_algorithm(algorithm):
    text = f"{ARIA2_NAMES[algorithm]}={DIGESTS[algorithm]}"
    assert parse_checksum(text) == Checksum(algorithm, DIGESTS[algorithm])


@pytest.mark.parametrize("text", [
    "SHA256:" + DIGESTS["sha256"].upper(),
    "Sha-256=" + DIGESTS["sha256"].upper(),
    "  sha256 : " + DIGESTS["sha256"] + "  ",
])
def test_checksum_is_case_insensitive_and_lowercased(text):
    assert parse_checksum(text) == Checksum("sha256", DIGESTS["sha256"])


def test_checksum_str_and_new_hash():
    checksum = parse_checksum("sha-1=" + DIGESTS["sha1"])
    assert str(checksum) == "sha1:" + DIGESTS["sha1"]
    digest = checksum.new_hash()
    digest.update(DATA)
    assert digest.hexdigest() == DIGESTS["sha1"]


@pytest.mark.parametrize("text, words", [
    ("sha256:" + "a" * 63, "64 hex digits"),
    ("sha256:" + "a" * 65, "64 hex digits"),
    ("md5:" + DIGESTS["sha256"], "32 hex digits"),
    ("sha384:" + "a" * 96, "unknown algorithm"),
    ("crc32:deadbeef", "unknown algorithm"),
    ("sha256:" + "g" * 64, "expected ALGO:HEX"),
    ("sha256", "expected ALGO:HEX"),
    (DIGESTS["sha256"], "expected ALGO:HEX"),
    ("", "expected ALGO:HEX"),
    ("sha256:", "expected ALGO:HEX"),
    ("sha256;" + DIGESTS["sha256"], "expected ALGO:HEX"),
])
def test_bad_checksums_are_invalid_input_with_a_message(text, words):
    with pytest.raises(InvalidInputError) as info:
        parse_checksum(text)
    assert words in str(info.value)
    assert isinstance(info.value, DownloadError) and isinstance(info.value, ValueError)


def test_none_is_invalid_input():
    with pytest.raises(InvalidInputError):
        parse_checksum(None)  # type: ignore[arg-type]


@given(st.text())
def test_arbitrary_text_parses_or_raises_invalid_input_only(text):
    try:
        checksum = parse_checksum(text)
    except InvalidInputError as exc:
        assert str(exc)
        return
    assert checksum.algorithm in ALGORITHMS
    assert len(checksum.hexdigest) == ALGORITHMS[checksum.algorithm]
    assert checksum.hexdigest == checksum.hexdigest.lower()


@pytest.mark.parametrize("algorithm", sorted(DIGESTS))
def test_file_digest_matches_hashlib(tmp_path, algorithm):
    path = tmp_path / "data.bin"
    path.write_bytes(DATA)
    assert file_digest(str(path), algorithm) == DIGESTS[algorithm]


def test_file_digest_across_block_boundaries_and_of_an_empty_file(tmp_path):
    path = tmp_path / "data.bin"
    data = bytes(range(256)) * 41
    path.write_bytes(data)
    for block in (1, 7, 256, 10_000, 1 << 20):
        assert file_digest(str(path), "sha256", block_size=block) == hashlib.sha256(data).hexdigest()
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert file_digest(str(empty), "md5") == hashlib.md5(b"").hexdigest()


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=30)
@given(data=st.binary(max_size=5000), block=st.integers(1, 4096))
def test_file_digest_matches_hashlib_for_any_content(tmp_path, data, block):
    path = tmp_path / "any.bin"
    path.write_bytes(data)
    assert file_digest(str(path), "sha512", block_size=block) == hashlib.sha512(data).hexdigest()
