"""The daemon's pure rules: exposure, tokens, hosts and origins, download roots, aria2's shapes."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest

from dlman.errors import InvalidInputError
from dlman.server import aria2, security
from dlman.server.aria2 import Aria2Error, View
from dlman.server.config import Listen, check_exposure, check_roots, check_origin, is_loopback, parse_listen, read_secret
from dlman.server.jsonrpc import BadRequest, Dispatcher, parse_query
from dlman.server.paths import OutsideRoots, place
from dlman.server.speed import SpeedMeter, eta


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:6800", Listen("127.0.0.1", 6800)),
    ("6801", Listen("127.0.0.1", 6801)),
    ("localhost:0", Listen("localhost", 0)),
    ("[::1]:7000", Listen("::1", 7000)),
    ("::1", Listen("::1", 6800)),
    ("0.0.0.0", Listen("0.0.0.0", 6800)),
])
def test_parse_listen(text: str, expected: Listen) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["", "host:port", "1.2.3.4:70000", "[::1", ":80"])
def test_parse_listen_refuses(text: str) -> None:
    with pytest.raises(InvalidInputError):
        parse_listen(text)


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("app.localhost", True), ("0.0.0.0", False), ("::", False), ("192.168.1.2", False), ("example.org", False),
    ("localhost.example.org", False),
])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize("listen, secret, origins, refused", [
    ("127.0.0.1:1", None, (), False),
    ("0.0.0.0:1", None, (), True),
    ("0.0.0.0:1", "s", (), False),
    ("192.168.0.2:1", None, (), True),
    ("127.0.0.1:1", None, ("*",), True),
    ("127.0.0.1:1", "s", ("*",), False),
    ("127.0.0.1:1", "", (), True),
])
def test_exposure_needs_a_secret(listen: str, secret: str | None, origins: tuple[str, ...], refused: bool) -> None:
    if refused:
        with pytest.raises(InvalidInputError):
            check_exposure(parse_listen(listen), secret, origins)
    else:
        check_exposure(parse_listen(listen), secret, origins)


def test_secret_sources(tmp_path: Path) -> None:
    file = tmp_path / "secret"
    file.write_text("from-file\nignored\n")
    assert read_secret(None, str(file), {"DLMAN_RPC_SECRET": "env"}) == "from-file"
    assert read_secret("option", None, {"DLMAN_RPC_SECRET": "env"}) == "option"
    assert read_secret(None, None, {"DLMAN_RPC_SECRET": "env"}) == "env"
    assert read_secret(None, None, {}) is None
    with pytest.raises(InvalidInputError):
        read_secret("a", str(file), {})
    with pytest.raises(InvalidInputError):
        read_secret(None, str(tmp_path / "missing"), {})


def test_origins_are_checked_and_normalised() -> None:
    assert check_origin("HTTP://Example.org:8080/") == "http://example.org:8080"
    assert check_origin("chrome-extension://abcdef") == "chrome-extension://abcdef"
    for bad in ("example.org", "http://x/path", "http://"):
        with pytest.raises(InvalidInputError):
            check_origin(bad)


def test_token() -> None:
    assert security.token_ok(None, None) and security.token_ok("x", None)
    assert security.token_ok("s3cret", "s3cret")
    assert not security.token_ok("s3cre", "s3cret") and not security.token_ok(None, "s3cret")
    assert security.split_token(["token:abc", 1]) == ("abc", [1])
    assert security.split_token(["tokenabc", 1]) == (None, ["tokenabc", 1])
    assert security.split_token([]) == (None, [])
    assert security.bearer("Bearer abc") == "abc" and security.bearer("Basic abc") is None


@pytest.mark.parametrize("host, loopback, allowed", [
    ("127.0.0.1:6800", True, True), ("localhost:6800", True, True), ("[::1]:6800", True, True),
    ("evil.example:6800", True, False), ("10.0.0.5:6800", True, False), (None, True, True),
    ("evil.example:6800", False, True),
])
def test_host_rule_stops_dns_rebinding(host: str | None, loopback: bool, allowed: bool) -> None:
    assert security.host_allowed(host, loopback) is allowed


@pytest.mark.parametrize("headers, allowed_origins, allowed", [
    ({}, (), True),                                                          # curl, aria2p, scripts
    ({"origin": "http://127.0.0.1:6800", "host": "127.0.0.1:6800"}, (), True),  # the daemon's own page
    ({"origin": "http://evil.example", "host": "127.0.0.1:6800"}, (), False),
    ({"origin": "http://ariang.example"}, ("http://ariang.example",), True),
    ({"origin": "http://evil.example"}, ("*",), True),
    ({"origin": "null"}, (), False),
    ({"sec-fetch-site": "cross-site"}, (), False),                           # <img src=...> from a page
    ({"sec-fetch-site": "same-origin"}, (), True),
    ({"sec-fetch-site": "none"}, (), True),                                  # typed in the address bar
])
def test_origin_rule(headers: dict[str, str], allowed_origins: tuple[str, ...], allowed: bool) -> None:
    assert security.origin_allowed(headers, allowed_origins) is allowed


def test_preflight() -> None:
    ask = {"origin": "http://ariang.example", "access-control-request-method": "POST",
           "access-control-request-headers": "content-type"}
    answer = security.preflight_headers(ask, ("http://ariang.example",))
    assert answer is not None
    assert answer["access-control-allow-origin"] == "http://ariang.example"
    assert "POST" in answer["access-control-allow-methods"]
    assert answer["access-control-allow-headers"] == "content-type"
    assert security.preflight_headers(ask, ("http://other.example",)) is None
    assert security.cors_headers({"origin": "http://127.0.0.1:1", "host": "127.0.0.1:1"}, ()) == {}


def test_download_roots(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "escape").symlink_to(outside)
    (root / "inner").symlink_to(root / "sub")
    roots = (str(root.resolve()),)
    real = str(root.resolve())
    assert place(roots, None, None) == (real, None)
    assert place(roots, "sub", "a.iso") == (f"{real}/sub", "a.iso")
    assert place(roots, f"{real}/sub", "deeper/a.iso") == (f"{real}/sub", "deeper/a.iso")
    assert place(roots, "inner", None) == (f"{real}/sub", None)  # a symlink that stays inside is fine
    assert place(roots, "new/dir", None) == (f"{real}/new/dir", None)
    for directory, out in [("/etc", None), ("..", None), ("sub/../..", None), ("escape", None),
                           ("escape/deeper", None), (str(outside), None), (None, "../x"), (None, "/etc/x"),
                           ("sub", "../../x"), (None, "escape/x")]:
        with pytest.raises(OutsideRoots):
            place(roots, directory, out)


def test_download_roots_refuse_names_no_file_system_call_can_take(tmp_path: Path) -> None:
    roots = (str(tmp_path.resolve()),)
    for directory, out in [("sub\ud83d", None), ("s\udcff", None), ("a\x00b", None), ("~\ud83d/x", None),
                           ("~ro\x00ot/x", None), (None, "o\ud83d.bin"),
                           (None, "o\udcff.bin"), (None, "o\x00.bin")]:
        with pytest.raises(OutsideRoots, match="UTF-8|NUL"):
            place(roots, directory, out)


def test_a_download_root_that_is_not_utf8_stops_the_daemon_at_start(tmp_path: Path) -> None:
    """Seen: the daemon started, refused every job inside its root, and answered getGlobalOption
    and a refusal naming the root with a 500 (the root's name could not be put in JSON)."""
    root = os.fsdecode(bytes(tmp_path) + b"/root\xff")
    os.mkdir(root)
    with pytest.raises(InvalidInputError, match=r"--download-root .*root\\xff is not valid UTF-8"):
        check_roots([root], str(tmp_path))
    for bad in ("~\ud800/x", "~ro\x00ot"):
        with pytest.raises(InvalidInputError, match="UTF-8|NUL"):
            check_roots([bad], str(tmp_path))


def test_gids_are_16_hex_digits_one_to_one() -> None:
    assert aria2.to_gid(1) == "0000000000000001"
    assert aria2.from_gid(aria2.to_gid(123456789)) == 123456789
    assert aria2.from_gid("00000000000000FF") == 255
    for bad in ("1", "zz00000000000000", 12, None, "00000000000000001"):
        with pytest.raises(Aria2Error):
            aria2.from_gid(bad)


@pytest.mark.parametrize("offset, num, expected", [
    (0, 2, [0, 1]), (3, 5, [3, 4]), (5, 1, []), (0, 0, []),
    (-1, 2, [4, 3]), (-1, 10, [4, 3, 2, 1, 0]), (-2, 1, [3]), (-6, 1, []),
])
def test_paging_as_aria2(offset: int, num: int, expected: list[int]) -> None:
    assert aria2.page([0, 1, 2, 3, 4], offset, num) == expected


@pytest.mark.parametrize("message, code", [
    ("http://h/f: not found (HTTP 404)", "3"),
    ("http://h/f: not authorised (HTTP 403)", "24"),
    ("/d/f: sha256 checksum mismatch (expected a, got b); the bad data was deleted", "32"),
    ("/d/f already exists and differs from f; pass --overwrite to replace it", "13"),
    ("cannot write /d/f.part: disk full", "9"),
    ("cannot write /d/f.part: permission denied", "16"),
    ("http://h/f: giving up after 5 failed attempts (ReadTimeout)", "2"),
    ("http://h/f: giving up after 5 failed attempts (HTTP 503)", "29"),
    ("http://h/f: giving up after 5 failed attempts (ConnectError)", "6"),
    ("something new", "1"),
    (None, "1"),
])
def test_error_codes(message: str | None, code: str) -> None:
    assert aria2.error_code(message) == code


@pytest.mark.parametrize("split, per_server, servers, connections", [
    (None, None, 1, None), (4, None, 1, 4), (None, 2, 3, 6), (16, 1, 1, 1), (16, 2, 3, 6), (200, None, 1, 64),
])
def test_connections_from_aria2_options(split: int | None, per_server: int | None, servers: int,
                                        connections: int | None) -> None:
    assert aria2.connections_for(split, per_server, servers) == connections


def test_options_map_to_dlman() -> None:
    request = aria2.request_from({
        "dir": "isos", "out": "a.iso", "split": "4", "checksum": "sha-256=" + "ab" * 32,
        "header": ["X-A: 1", "X-B: 2"], "referer": "http://ref.example/", "user-agent": "agent/1",
        "max-download-limit": "1M", "bt-tracker": "ignored", "seed-time": "0",
    }, 1)
    assert request.directory == "isos" and request.out == "a.iso"
    assert request.options == {"connections": 4, "checksum": "sha256:" + "ab" * 32,
                               "headers": ["X-A: 1", "X-B: 2", "Referer: http://ref.example/",
                                           "User-Agent: agent/1"], "max_speed": 1 << 20}
    assert "max_speed" not in aria2.request_from({"max-download-limit": "0"}, 1).options  # aria2's "no limit"
    assert aria2.request_from({"allow-overwrite": "true"}, 1).options == {"overwrite": True}
    assert aria2.request_from({"header": "X-A: 1\nX-B: 2"}, 1).options["headers"] == ["X-A: 1", "X-B: 2"]
    for bad in ({"split": "x"}, {"checksum": "md5=zz"}, {"header": "no colon"}, {"max-download-limit": "fast"}):
        with pytest.raises(InvalidInputError):
            aria2.request_from(bad, 1)


def view(**changes: Any) -> View:
    base: dict[str, Any] = dict(job_id=10, status="active", urls=("http://h/a", "http://m/a"), directory="/d",
                                path="/d/a", total=2048, done=1024, speed=500, connections=3, started=True)
    base.update(changes)
    return View(**base)


def test_status_shapes_are_strings_and_keys_filter() -> None:
    entry = aria2.status_entry(view())
    assert entry["gid"] == "000000000000000a" and entry["status"] == "active"
    for key in ("totalLength", "completedLength", "downloadSpeed", "uploadSpeed", "connections", "uploadLength"):
        assert isinstance(entry[key], str), key
    assert entry["totalLength"] == "2048" and entry["completedLength"] == "1024" and entry["connections"] == "3"
    assert "errorCode" not in entry  # as aria2: only stopped downloads carry one
    assert entry["files"] == [{"index": "1", "path": "/d/a", "length": "2048", "completedLength": "1024",
                               "selected": "true", "uris": [{"uri": "http://h/a", "status": "used"},
                                                            {"uri": "http://m/a", "status": "used"}]}]
    assert aria2.status_entry(view(), ["gid", "status", "bittorrent"]) == {"gid": "000000000000000a",
                                                                           "status": "active"}
    failed = aria2.status_entry(view(status="error", error="http://h/a: not found (HTTP 404)"))
    assert failed["errorCode"] == "3" and failed["errorMessage"].endswith("(HTTP 404)")
    assert aria2.status_entry(view(status="complete"))["errorCode"] == "0"
    assert aria2.servers_entry(view())[0]["servers"][0]["downloadSpeed"] == "250"


def test_change_position_modes_are_the_queues_moves() -> None:
    assert [aria2.move_of(how) for how in ("POS_SET", "POS_CUR", "POS_END")] == ["set", "cur", "end"]
    for bad in ("POS_WHATEVER", "pos_set", "set", ""):
        with pytest.raises(Aria2Error, match="Illegal argument"):
            aria2.move_of(bad)


def test_get_query_forms() -> None:
    params = base64.b64encode(json.dumps(["token:x", ["http://h/a"]]).encode()).decode()
    assert parse_query(f"method=aria2.addUri&id=7&params={params}") == {
        "jsonrpc": "2.0", "method": "aria2.addUri", "id": "7", "params": ["token:x", ["http://h/a"]]}
    batch = [{"jsonrpc": "2.0", "id": 1, "method": "system.listMethods"}]
    encoded = base64.b64encode(json.dumps(batch).encode()).decode()
    assert parse_query(f"params={encoded}") == batch
    with pytest.raises(BadRequest):
        parse_query("method=x&id=1&params=%%%")


def dispatch(payload: Any, secret: str | None = "s", max_batch: int = 3) -> tuple[int, Any, bool]:
    async def call(method: str, params: list[Any]) -> Any:
        if method == "aria2.tellStatus":
            raise Aria2Error("No such download for GID#x")
        return {"method": method, "params": params}

    reply = asyncio.run(Dispatcher(call, secret, max_batch).answer(payload))
    return reply.status, reply.body, reply.unauthorized


def request(method: str, *params: Any, request_id: Any = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": list(params)}


def test_dispatcher_token_rules() -> None:
    status, body, refused = dispatch(request("aria2.getVersion", "token:s"))
    assert (status, body["result"]["params"], refused) == (200, [], False)
    for params in (["token:wrong"], []):
        status, body, refused = dispatch(request("aria2.getVersion", *params))
        assert (status, body["error"], refused) == (400, {"code": 1, "message": "Unauthorized"}, True)
    status, body, _ = dispatch(request("system.listMethods"))
    assert status == 200 and "result" in body
    status, body, refused = dispatch(request("system.multicall", [
        {"methodName": "aria2.getVersion", "params": ["token:s"]},
        {"methodName": "aria2.getVersion", "params": ["token:no"]},
        {"methodName": "aria2.tellStatus", "params": ["token:s", "x"]},
        {"methodName": "system.multicall", "params": []},
    ]), max_batch=4)
    assert status == 200 and refused
    assert body["result"][0] == [{"method": "aria2.getVersion", "params": []}]
    assert body["result"][1:] == [{"code": 1, "message": "Unauthorized"},
                                  {"code": 1, "message": "No such download for GID#x"},
                                  {"code": 1, "message": "Recursive system.multicall forbidden."}]
    assert dispatch(request("aria2.getVersion", "token:anything"), secret=None)[1]["result"]["params"] == []


def test_dispatcher_request_shapes_and_bounds() -> None:
    assert dispatch({"jsonrpc": "2.0", "method": "x"})[:2] == (400, {
        "id": None, "jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request."}})
    assert dispatch({"jsonrpc": "2.0", "id": 2, "method": 5})[1]["error"]["code"] == -32600
    assert dispatch({"jsonrpc": "2.0", "id": 2, "method": "x", "params": {}})[1]["error"]["code"] == -32602
    assert dispatch(request("aria2.nothing", "token:s"))[1]["error"] == {"code": 1,
                                                                         "message": "No such method: aria2.nothing"}
    status, body, _ = dispatch([request("system.listMethods", request_id=i) for i in range(3)])
    assert status == 200 and [b["id"] for b in body] == [0, 1, 2]
    status, body, _ = dispatch([request("system.listMethods")] * 4)
    assert status == 400 and body["error"]["code"] == -32600
    many = [{"methodName": "system.listMethods"}] * 4
    assert dispatch(request("system.multicall", many))[1]["error"]["code"] == 1


def test_speed_meter_and_eta() -> None:
    meter = SpeedMeter(window=4)
    assert meter.rate(0) == 0
    for second in range(10):
        meter.observe(float(second), second * 1000)
    assert meter.rate(9) == 1000
    assert meter.rate(20) == 0  # nothing heard for a whole window
    meter.observe(21, 10)  # started over from zero
    assert meter.rate(21) == 0
    assert eta(10_000, 4_000, 1_000) == 6 and eta(None, 1, 1) is None and eta(10, 1, 0) is None


def test_the_command_does_not_import_the_web_stack() -> None:
    import subprocess
    import sys
    code = "import sys, dlman.server.command; print(any(m in sys.modules for m in ('starlette', 'uvicorn')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ))
    assert result.stdout.strip() == "False", result.stderr
