"""Request-level unit tests of the engine against pytest-httpx mocks (no network, no retries)."""

from __future__ import annotations

import asyncio
import hashlib
import re

import httpx
import pytest

import dlman

URL = "https://files.example.org/data/file.bin"
BODY = b"0123456789abcdef"


def fetch(tmp_path, url=URL, name="f", **options):
    """Run one download with a fresh engine; ``checksum``/``headers`` go to download()."""
    per_download = {k: options.pop(k) for k in ("checksum", "headers") if k in options}
    options.setdefault("retries", 0)

    async def main():
        async with dlman.Engine(**options) as engine:
            return await engine.download(url, tmp_path / name, **per_download)

    return asyncio.run(main())


def leftovers(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir())


def test_first_request_is_get_from_byte_zero_with_identity_encoding(httpx_mock, tmp_path):
    httpx_mock.add_response(url=URL, content=BODY)
    fetch(tmp_path)
    [request] = httpx_mock.get_requests()
    assert request.method == "GET"
    assert request.headers["Range"] == "bytes=0-"
    assert request.headers["Accept-Encoding"] == "identity"
    assert "If-Range" not in request.headers


def test_200_without_ranges_saves_the_body_and_leaves_no_part_files(httpx_mock, tmp_path):
    httpx_mock.add_response(url=URL, content=BODY)
    result = fetch(tmp_path)
    assert result.path == tmp_path / "f"
    assert result.size == len(BODY)
    assert (tmp_path / "f").read_bytes() == BODY
    assert leftovers(tmp_path) == ["f"]


def test_206_with_total_saves_the_body(httpx_mock, tmp_path):
    httpx_mock.add_response(url=URL, status_code=206, content=BODY,
                            headers={"Content-Range": f"bytes 0-{len(BODY) - 1}/{len(BODY)}"})
    result = fetch(tmp_path)
    assert (tmp_path / "f").read_bytes() == BODY and result.size == len(BODY)
    assert leftovers(tmp_path) == ["f"]


def test_segmented_download_asks_for_the_other_half_with_if_range(httpx_mock, tmp_path):
    etag = '"v1"'

    def serve(request: httpx.Request) -> httpx.Response:
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", request.headers["Range"])
        start = int(match.group(1))
        end = int(match.group(2)) if match.group(2) else len(BODY) - 1
        return httpx.Response(206, content=BODY[start:end + 1], headers={
            "Content-Range": f"bytes {start}-{end}/{len(BODY)}", "ETag": etag})

    httpx_mock.add_callback(serve, url=URL, is_reusable=True)
    fetch(tmp_path, connections=2, min_segment=4)
    assert (tmp_path / "f").read_bytes() == BODY
    requests = httpx_mock.get_requests()
    assert requests[0].headers["Range"] == "bytes=0-"
    later = requests[1:]
    assert "bytes=8-15" in [r.headers["Range"] for r in later]  # the other connection's half
    for request in later:  # closed ranges after the first, each guarded by the validator
        assert re.fullmatch(r"bytes=\d+-\d+", request.headers["Range"])
        assert request.headers["If-Range"] == etag
        assert request.headers["Accept-Encoding"] == "identity"
    assert leftovers(tmp_path) == ["f"]


@pytest.mark.parametrize("status, words", [(404, "not found"), (403, "not authorised"),
                                           (401, "not authorised"), (410, "gone")])
def test_client_error_fails_at_once_with_a_clear_message_and_no_file(httpx_mock, tmp_path, status, words):
    httpx_mock.add_response(url=URL, status_code=status)
    with pytest.raises(dlman.HTTPStatusError) as info:
        fetch(tmp_path, retries=5)        # not retried: exactly one request was mocked
    assert info.value.status == status
    assert words in str(info.value)
    assert URL in str(info.value)
    assert isinstance(info.value, dlman.DownloadError)
    assert leftovers(tmp_path) == []
    assert len(httpx_mock.get_requests()) == 1


def test_server_error_with_no_retries_left_is_a_network_error(httpx_mock, tmp_path):
    httpx_mock.add_response(url=URL, status_code=503)
    with pytest.raises(dlman.NetworkError):
        fetch(tmp_path, retries=0)
    assert leftovers(tmp_path) == []


def test_per_download_headers_are_sent(httpx_mock, tmp_path):
    httpx_mock.add_response(url=URL, content=BODY)
    fetch(tmp_path, headers={"X-Per-Download": "2"})
    request = httpx_mock.get_requests()[0]
    assert request.headers["X-Per-Download"] == "2"


def test_custom_engine_headers_are_sent(httpx_mock, tmp_path):
    httpx_mock.add_response(url=URL, content=BODY)

    async def main():
        async with dlman.Engine(retries=0, headers=["Authorization: Bearer t0k3n", "X-Custom: yes"]) as engine:
            return await engine.download(URL, tmp_path / "f")

    asyncio.run(main())
    request = httpx_mock.get_requests()[0]
    assert request.headers["Authorization"] == "Bearer t0k3n"
    assert request.headers["X-Custom"] == "yes"
    assert request.headers["Range"] == "bytes=0-"           # the engine's own headers still win
    assert request.headers["Accept-Encoding"] == "identity"


def test_matching_checksum_keeps_the_file(httpx_mock, tmp_path):
    httpx_mock.add_response(url=URL, content=BODY)
    fetch(tmp_path, checksum="sha256:" + hashlib.sha256(BODY).hexdigest())
    assert (tmp_path / "f").read_bytes() == BODY


def test_checksum_mismatch_raises_and_deletes_the_data(httpx_mock, tmp_path):
    httpx_mock.add_response(url=URL, content=BODY)
    with pytest.raises(dlman.ChecksumError) as info:
        fetch(tmp_path, checksum="sha256:" + "0" * 64)
    assert "checksum" in str(info.value)
    assert isinstance(info.value, dlman.DownloadError)
    assert leftovers(tmp_path) == []


def test_invalid_checksum_syntax_fails_before_any_request(httpx_mock, tmp_path):
    with pytest.raises(dlman.InvalidInputError):
        fetch(tmp_path, checksum="sha256:nothex")
    assert httpx_mock.get_requests() == []
    assert leftovers(tmp_path) == []


def test_directory_destination_takes_the_name_from_content_disposition(httpx_mock, tmp_path):
    httpx_mock.add_response(url=URL, content=BODY,
                            headers={"Content-Disposition": 'attachment; filename="../../evil.sh"'})

    async def main():
        async with dlman.Engine(retries=0) as engine:
            return await engine.download(URL, tmp_path)

    result = asyncio.run(main())
    assert result.path == tmp_path / "evil.sh"
    assert leftovers(tmp_path) == ["evil.sh"]


def test_junk_retry_after_does_not_crash_the_engine(httpx_mock, tmp_path):
    httpx_mock.add_response(url=URL, status_code=503, headers={"Retry-After": b"\xb2"})
    with pytest.raises(dlman.NetworkError):
        fetch(tmp_path, retries=0)
