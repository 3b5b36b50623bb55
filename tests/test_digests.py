"""Integrity from the server: the whole file's digest in Repr-Digest, Digest, Content-Digest and
the vendor headers, read (pure) and then verified through real downloads."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

import dlman
from dlman.checksum import Checksum
from dlman.digests import WANT_HEADERS, candidates, disagreement, strongest
from helpers import fetch, start_and_cancel

MiB = 1 << 20
DATA = b"hello world"
SHA256 = hashlib.sha256(DATA)
B64 = base64.b64encode(SHA256.digest()).decode()
HEX = SHA256.hexdigest()
MD5_B64 = base64.b64encode(hashlib.md5(DATA).digest()).decode()


@pytest.mark.parametrize("headers, whole, expected", [
    ({"repr-digest": f"sha-256=:{B64}:"}, False, [("sha256", "repr-digest")]),
    ({"repr-digest": f"sha-256=:{B64}:;param=1, unknown=:AAAA:"}, False, [("sha256", "repr-digest")]),
    ({"digest": f"SHA-256={B64}, MD5={MD5_B64}"}, False, [("sha256", "digest"), ("md5", "digest")]),
    ({"digest": f"sha-256={HEX}"}, False, [("sha256", "digest")]),         # hex, as some servers send
    ({"content-digest": f"sha-256=:{B64}:"}, True, [("sha256", "content-digest")]),
    ({"content-digest": f"sha-256=:{B64}:"}, False, []),                    # a 206: only this part's
    ({"x-goog-hash": f"crc32c=n03x6A==,md5={MD5_B64}"}, False, [("md5", "x-goog-hash")]),
    ({"x-amz-checksum-sha256": B64}, False, [("sha256", "x-amz-checksum-sha256")]),
    ({"x-amz-checksum-sha256": B64 + "-3"}, False, []),                     # multipart: not the file's
    ({"x-linked-etag": f'"{HEX}"'}, False, [("sha256", "x-linked-etag")]),
    ({"x-linked-etag": '"abc123"'}, False, []),                             # a git sha1, not a digest
    ({"repr-digest": "sha-256=:short:", "digest": "SHA-256=!!!"}, False, []),  # garbage
])
def test_candidates(headers, whole, expected):
    found = candidates(headers, whole_body=whole)
    assert [(c.algorithm, source) for c, source in found] == expected
    assert all(c.hexdigest in (HEX, hashlib.md5(DATA).hexdigest()) for c, _ in found)


def test_the_strongest_algorithm_wins_and_a_contradiction_is_named():
    found = candidates({"digest": f"MD5={MD5_B64}", "repr-digest": f"sha-256=:{B64}:"}, whole_body=False)
    assert strongest(found)[0].algorithm == "sha256"
    assert strongest([]) is None
    assert disagreement(Checksum("sha256", HEX), found) is None
    assert "repr-digest" in disagreement(Checksum("sha256", "0" * 64), found)
    assert disagreement(Checksum("sha512", "0" * 128), found) is None  # nothing to compare with


def repr_digest(data: bytes) -> dict[str, str]:
    return {"Repr-Digest": f"sha-256=:{base64.b64encode(hashlib.sha256(data).digest()).decode()}:"}


@pytest.mark.parametrize("form", ["repr-digest", "digest", "goog", "amz"])
def test_a_server_digest_is_verified_and_reported(server, make_data, tmp_path, form):
    data = make_data(3 * MiB)
    sha = hashlib.sha256(data)
    headers = {"repr-digest": repr_digest(data),
               "digest": {"Digest": f"SHA-256={base64.b64encode(sha.digest()).decode()}"},
               "goog": {"x-goog-hash": f"crc32c=AAAAAA==,md5={base64.b64encode(hashlib.md5(data).digest()).decode()}"},
               "amz": {"x-amz-checksum-sha256": base64.b64encode(sha.digest()).decode()}}[form]
    res = server.add("/d", data, headers=headers)
    result = fetch(server.url("/d"), tmp_path / "d", connections=3)
    assert result.path.read_bytes() == data and result.checksum_source is not None
    assert result.checksum.split(":")[0] in ("sha256", "md5")
    first = res.requests[0].headers
    assert first.get("want-repr-digest") == WANT_HEADERS["Want-Repr-Digest"]
    assert first.get("want-digest") == WANT_HEADERS["Want-Digest"]


def test_a_server_digest_that_does_not_match_fails_and_deletes_the_data(server, make_data, tmp_path):
    data = make_data(2 * MiB)
    server.add("/d", data, headers=repr_digest(b"something else"))
    with pytest.raises(dlman.ChecksumError, match="by the server's repr-digest"):
        fetch(server.url("/d"), tmp_path / "d")
    assert list(tmp_path.iterdir()) == []


def test_a_content_digest_counts_on_a_whole_200_only(server, make_data, tmp_path):
    data = make_data(2 * MiB)
    wrong = {"Content-Digest": "sha-256=:" + base64.b64encode(hashlib.sha256(b"x").digest()).decode() + ":"}
    server.add("/ranged", data, headers=wrong)                       # on 206s it describes the part
    assert fetch(server.url("/ranged"), tmp_path / "r").checksum is None
    server.add("/whole", data, accept_ranges=False, headers=wrong)   # on a whole 200, the file
    with pytest.raises(dlman.ChecksumError):
        fetch(server.url("/whole"), tmp_path / "w")


def test_the_digest_is_kept_for_the_resume(server, make_data, tmp_path):
    """A resumed run checks against the digest the first run was given, even if no longer sent."""
    data = make_data(8 * MiB)
    res = server.add("/d", data, auto_etag=True, throttle=2 * MiB, headers=repr_digest(b"not the file"))
    dest = tmp_path / "d"
    start_and_cancel(server.url("/d"), dest, 2 * MiB, connections=2)
    assert json.loads(dest.with_name("d.part.state").read_bytes())["digest_source"] == "repr-digest"
    res.headers, res.throttle = {}, None
    with pytest.raises(dlman.ChecksumError, match="repr-digest"):
        fetch(server.url("/d"), dest)


def test_the_checksum_given_wins_and_a_disagreeing_server_is_an_error(server, make_data, tmp_path):
    data = make_data(MiB)
    server.add("/d", data, headers=repr_digest(b"other"))
    given = "sha256:" + hashlib.sha256(data).hexdigest()
    with pytest.raises(dlman.ChecksumError, match="the server's repr-digest says"):
        fetch(server.url("/d"), tmp_path / "d", checksum=given)
    server.add("/e", data, headers={"Digest": "MD5=" + base64.b64encode(hashlib.md5(b"x").digest()).decode()})
    result = fetch(server.url("/e"), tmp_path / "e", checksum=given)  # another algorithm: the given one rules
    assert result.checksum == given and result.checksum_source == "given"


def test_verify_digest_false_ignores_the_server(server, make_data, tmp_path):
    data = make_data(MiB)
    res = server.add("/d", data, headers=repr_digest(b"other"))
    result = fetch(server.url("/d"), tmp_path / "d", verify_digest=False)
    assert result.checksum is None and result.path.read_bytes() == data
    assert "want-repr-digest" not in res.requests[0].headers


def test_a_digest_on_a_redirect_hop_counts(server, server2, make_data, tmp_path):
    """Hugging Face: the resolve URL answers 302 with X-Linked-Etag, the CDN serves the bytes."""
    data = make_data(MiB)
    server2.add("/blob", data)
    server.add("/resolve", redirect_to=server2.url("/blob"),
               headers={"X-Linked-Etag": f'"{hashlib.sha256(data).hexdigest()}"'})
    result = fetch(server.url("/resolve"), tmp_path / "f")
    assert result.checksum_source == "x-linked-etag"
    server.add("/bad", redirect_to=server2.url("/blob"), headers={"X-Linked-Etag": f'"{"0" * 64}"'})
    with pytest.raises(dlman.ChecksumError):
        fetch(server.url("/bad"), tmp_path / "g")


def test_an_existing_file_of_the_right_size_but_another_digest_is_not_complete(server, make_data, tmp_path):
    data = make_data(MiB)
    server.add("/d", data, headers=repr_digest(data))
    (tmp_path / "d").write_bytes(make_data(MiB, seed=5))  # same size, other bytes
    with pytest.raises(dlman.DestinationExistsError):
        fetch(server.url("/d"), tmp_path / "d")
    (tmp_path / "d").write_bytes(data)
    assert fetch(server.url("/d"), tmp_path / "d").skipped
