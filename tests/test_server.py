"""``dlman serve`` as a real process, driven over real HTTP and WebSocket like aria2's clients do,
with the fault server as the origin of the downloads."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette", reason="the server extra is not installed: pip install 'dlman[server]'")
pytest.importorskip("uvicorn", reason="the server extra is not installed: pip install 'dlman[server]'")
from websockets.exceptions import InvalidStatus  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

from helpers import wait_for  # noqa: E402
from serving import SECRET, Daemon, RpcError, notifications, running  # noqa: E402

SIZE = 1024 * 1024
SLOW = 256 * 1024  # bytes/s: a 1 MiB file takes about 4 s on one connection


class Events:
    """Every message a WebSocket connection receives, collected by a thread."""

    def __init__(self, url: str) -> None:
        self.connection = connect(url, open_timeout=10, max_size=None).__enter__()
        self.messages: list[dict[str, Any]] = []
        self.closed: Any = None
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for message in self.connection:
                self.messages.append(json.loads(message))
        except Exception as error:  # noqa: BLE001 - the reason the connection closed
            self.closed = error
        self.closed = self.closed or "closed"

    def wait(self, method: str, gid: str, timeout: float = 20) -> None:
        wait_for(lambda: (method, gid) in notifications(self.messages), timeout=timeout,
                 what=f"{method} for {gid}; got {notifications(self.messages)}")

    def call(self, body: dict[str, Any], timeout: float = 20) -> dict[str, Any]:
        self.connection.send(json.dumps(body))
        return wait_for(lambda: next((m for m in self.messages if m.get("id") == body["id"]), None),
                        timeout=timeout, what=f"the answer to {body['method']}")

    def close(self) -> None:
        self.connection.close()
        self._thread.join(5)


@pytest.fixture
def daemon(tmp_path: Path):
    with running(tmp_path, "-j", "2") as d:
        yield d


def test_add_uri_downloads_and_every_result_has_aria2s_shape(daemon: Daemon, server, make_data) -> None:
    data = make_data(SIZE)
    server.add("/file.bin", data, throttle=SLOW)
    gid = daemon.call("aria2.addUri", [server.url("/file.bin")],
                      {"dir": "isos", "out": "named.bin", "split": "2", "header": ["X-Test: 1"],
                       "user-agent": "agent/1", "referer": "http://ref.example/", "max-download-limit": "1M",
                       "bt-tracker": "udp://ignored", "seed-ratio": "0"})
    assert len(gid) == 16 and int(gid, 16) >= 1
    active = wait_for(lambda: (lambda s: s if s["status"] == "active" and int(s["completedLength"]) > 0 else None)(
        daemon.status(gid)), what="the download to be active with progress")
    for key in ("totalLength", "completedLength", "downloadSpeed", "uploadSpeed", "connections"):
        assert isinstance(active[key], str) and active[key].isdigit(), key
    assert active["totalLength"] == str(SIZE)
    assert active["dir"] == str(daemon.root / "isos")
    assert [s["gid"] for s in daemon.call("aria2.tellActive", ["gid", "status"])] == [gid]
    assert daemon.call("aria2.tellActive", ["gid", "status"])[0] == {"gid": gid, "status": "active"}
    servers = daemon.call("aria2.getServers", gid)
    assert servers[0]["index"] == "1" and servers[0]["servers"][0]["uri"] == server.url("/file.bin")
    wait_for(lambda: int(daemon.status(gid)["downloadSpeed"]) > 0, what="a download speed")
    done = daemon.wait_status(gid, "complete")
    assert (daemon.root / "isos" / "named.bin").read_bytes() == data
    assert done["completedLength"] == done["totalLength"] == str(SIZE) and done["errorCode"] == "0"
    files = daemon.call("aria2.getFiles", gid)
    assert files == [{"index": "1", "path": str(daemon.root / "isos" / "named.bin"), "length": str(SIZE),
                      "completedLength": str(SIZE), "selected": "true",
                      "uris": [{"uri": server.url("/file.bin"), "status": "used"}]}]
    assert daemon.call("aria2.getUris", gid) == [{"uri": server.url("/file.bin"), "status": "used"}]
    option = daemon.call("aria2.getOption", gid)
    assert option["dir"] == str(daemon.root / "isos") and option["out"] == "named.bin" and option["split"] == "2"
    assert option["max-download-limit"] == str(1 << 20)
    assert "X-Test: 1" in option["header"] and "User-Agent: agent/1" in option["header"]
    asked = server.resource("/file.bin").requests[0].headers
    assert asked["user-agent"] == "agent/1" and asked["referer"] == "http://ref.example/" and asked["x-test"] == "1"
    stopped = daemon.call("aria2.tellStopped", 0, 10, ["gid", "status", "totalLength"])
    assert stopped == [{"gid": gid, "status": "complete", "totalLength": str(SIZE)}]
    stat = daemon.call("aria2.getGlobalStat")
    assert stat == {"downloadSpeed": "0", "uploadSpeed": "0", "numActive": "0", "numWaiting": "0",
                    "numStopped": "1", "numStoppedTotal": "1"}
    with pytest.raises(RpcError, match="No active download"):
        daemon.call("aria2.getServers", gid)
    with pytest.raises(RpcError, match="cannot be paused now"):
        daemon.call("aria2.pause", gid)
    assert daemon.call("aria2.removeDownloadResult", gid) == "OK"
    with pytest.raises(RpcError, match="No such download"):
        daemon.status(gid)
    assert (daemon.root / "isos" / "named.bin").read_bytes() == data  # forgetting a result keeps its file


def test_token_right_wrong_missing_and_in_multicall(daemon: Daemon) -> None:
    assert daemon.call("aria2.getVersion")["version"]
    for token in ("wrong", None):
        started = time.monotonic()
        answer = daemon.post(daemon.request("aria2.getVersion", token=token))
        assert answer.status_code == 400
        assert answer.json()["error"] == {"code": 1, "message": "Unauthorized"}
        assert time.monotonic() - started >= 0.9  # a refused token is answered late
    assert daemon.call("system.listMethods", token=None)[0] == "aria2.addUri"
    assert "aria2.onDownloadComplete" in daemon.call("system.listNotifications", token=None)
    results = daemon.call("system.multicall", [
        {"methodName": "aria2.getGlobalStat", "params": [f"token:{SECRET}"]},
        {"methodName": "aria2.getGlobalStat", "params": ["token:nope"]},
        {"methodName": "aria2.getGlobalStat"},
        {"methodName": "system.listMethods"},
    ], token=None)
    assert results[0][0]["numActive"] == "0"
    assert results[1] == results[2] == {"code": 1, "message": "Unauthorized"}
    assert results[3][0][0] == "aria2.addUri"
    assert daemon.client.get("/api/jobs", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert daemon.rest("GET", "/api/jobs").status_code == 200


def test_get_with_base64_params_single_and_batch(daemon: Daemon, server, make_data) -> None:
    server.add("/g.bin", make_data(50_000, seed=3))
    params = base64.b64encode(json.dumps([f"token:{SECRET}", [server.url("/g.bin")]]).encode()).decode()
    answer = daemon.client.get(f"/jsonrpc?method=aria2.addUri&id=7&params={params}")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("application/json-rpc")
    body = answer.json()
    assert body["id"] == "7" and len(body["result"]) == 16
    daemon.wait_status(body["result"], "complete")
    batch = [daemon.request("aria2.tellStatus", body["result"], ["status"]), daemon.request("aria2.getVersion")]
    encoded = base64.b64encode(json.dumps(batch).encode()).decode()
    answers = daemon.client.get(f"/jsonrpc?params={encoded}").json()
    assert [a["id"] for a in answers] == [batch[0]["id"], batch[1]["id"]]
    assert answers[0]["result"] == {"status": "complete"}
    assert daemon.client.get("/jsonrpc?method=aria2.getVersion&id=1&params=!!!").json()["error"]["code"] == -32700
    assert daemon.client.get(f"/jsonrpc?params={encoded}&jsoncallback=f").status_code == 400


def test_cors_preflight_origins_and_hosts(tmp_path: Path) -> None:
    allowed = "http://ariang.example:8080"
    with running(tmp_path, "--allow-origin", allowed) as daemon:
        preflight = daemon.client.options("/jsonrpc", headers={
            "Origin": allowed, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type"})
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == allowed
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert preflight.headers["access-control-allow-headers"] == "content-type"
        refused = daemon.client.options("/jsonrpc", headers={
            "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
        assert refused.status_code == 403 and "access-control-allow-origin" not in refused.headers
        answer = daemon.post(daemon.request("aria2.getVersion"), headers={"Origin": allowed})
        assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == allowed
        # A page elsewhere cannot even make the daemon act (its answer would be opaque, the act not).
        body = daemon.request("aria2.addUri", ["http://127.0.0.1:9/x"])
        assert daemon.post(body, headers={"Origin": "http://evil.example"}).status_code == 403
        assert daemon.client.get("/jsonrpc?method=system.listMethods&id=1",
                                 headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
        assert daemon.client.get("/", headers={"Host": "evil.example:6800"}).status_code == 403
        assert daemon.call("aria2.tellWaiting", 0, 10) == []
        with pytest.raises(InvalidStatus, match="403"):
            with connect(daemon.ws_url, open_timeout=5, origin="http://evil.example"):
                pass
        with connect(daemon.ws_url, open_timeout=5, origin=allowed) as connection:
            connection.send(json.dumps(daemon.request("aria2.getVersion")))
            assert json.loads(connection.recv(timeout=10))["result"]["version"]


def test_notifications_for_start_pause_complete_error_and_stop(tmp_path: Path, server, make_data) -> None:
    data = make_data(SIZE, seed=5)
    server.add("/slow.bin", data, throttle=SLOW)
    server.add("/missing.bin", status=404)
    with running(tmp_path, "-j", "2") as daemon:
        events = Events(daemon.ws_url)
        try:
            answer = events.call(daemon.request("aria2.addUri", [server.url("/slow.bin")]))
            gid = answer["result"]
            events.wait("aria2.onDownloadStart", gid)
            kept = (daemon.root / "slow.bin.part")
            wait_for(lambda: kept.with_name("slow.bin.part.state").exists(), what="some progress saved")
            assert events.call(daemon.request("aria2.pause", gid))["result"] == gid
            events.wait("aria2.onDownloadPause", gid)
            assert daemon.status(gid)["status"] == "paused"
            assert kept.exists()
            starts = notifications(events.messages).count(("aria2.onDownloadStart", gid))
            assert daemon.call("aria2.unpause", gid) == gid
            wait_for(lambda: notifications(events.messages).count(("aria2.onDownloadStart", gid)) > starts,
                     what="the download to start again")
            server.resource("/slow.bin").throttle = None
            events.wait("aria2.onDownloadComplete", gid, timeout=30)
            assert (daemon.root / "slow.bin").read_bytes() == data
            bad = daemon.call("aria2.addUri", [server.url("/missing.bin")])
            events.wait("aria2.onDownloadError", bad)
            failed = daemon.status(bad)
            assert failed["status"] == "error" and failed["errorCode"] == "3" and "404" in failed["errorMessage"]
            server.resource("/slow.bin").throttle = SLOW // 4
            again = daemon.call("aria2.addUri", [server.url("/slow.bin")], {"out": "again.bin"})
            events.wait("aria2.onDownloadStart", again)
            assert daemon.call("aria2.forceRemove", again) == again
            events.wait("aria2.onDownloadStop", again)
            assert daemon.status(again)["status"] == "removed"
            assert any(s["gid"] == again for s in daemon.call("aria2.tellStopped", 0, 10, ["gid"]))
        finally:
            events.close()


def test_dir_and_out_that_are_not_utf8_are_refused_by_name(tmp_path: Path, server) -> None:
    """A JSON string may escape a lone surrogate ("\\ud83d"): no file name can be made of it, and
    the queue stores UTF-8 text. Seen: addUri answered "internal error: UnicodeEncodeError"
    (from realpath), and POST /api/jobs a bare 500."""
    url = server.url("/f.bin")
    with running(tmp_path) as daemon:
        for options in ('{"dir": "sub\\ud83d"}', '{"out": "o\\ud83d.bin"}', '{"out": "o\\udcff.bin"}',
                        '{"dir": "s\\udc41"}'):
            body = ('{"jsonrpc": "2.0", "id": 1, "method": "aria2.addUri", "params": '
                    f'["token:{SECRET}", ["{url}"], {options}]}}')
            answer = daemon.client.post("/jsonrpc", content=body.encode("ascii"),
                                        headers={"Content-Type": "application/json"})
            error = answer.json()["error"]
            assert error["code"] == 1 and "not valid UTF-8" in error["message"], (options, error)
        for fields in ('"dir": "s\\ud83d"', f'"manifest": "{url}\\n  out=o\\ud83d.bin\\n"'):
            rest = daemon.rest("POST", "/api/jobs", content=f'{{"urls": ["{url}"], {fields}}}'.encode("ascii"),
                               headers={"Content-Type": "application/json"})
            assert rest.status_code == 400, (fields, rest.text)
        assert daemon.call("aria2.tellWaiting", 0, 10) == []
        assert "Traceback" not in daemon.output()


def test_download_roots_symlinks_and_no_overwrite(tmp_path: Path, server, make_data) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    server.add("/f.bin", make_data(10_000, seed=7))
    with running(tmp_path) as daemon:
        (daemon.root / "link").symlink_to(outside)
        url = [server.url("/f.bin")]
        for options in ({"dir": str(outside)}, {"dir": "../outside"}, {"dir": "link"}, {"out": "../outside/f"},
                        {"out": "link/f.bin"}, {"dir": "/etc", "out": "passwd"}, {"out": "/tmp/x"}):
            with pytest.raises(RpcError) as refused:
                daemon.call("aria2.addUri", url, options)
            assert refused.value.code == 1, options
        assert daemon.rest("POST", "/api/jobs", json={"urls": url, "dir": str(outside)}).status_code == 400
        assert daemon.rest("POST", "/api/jobs",
                           json={"manifest": f"{url[0]}\n  out=../../outside/f\n"}).status_code == 400
        assert list(outside.iterdir()) == [] and daemon.call("aria2.tellWaiting", 0, 10) == []
        (daemon.root / "f.bin").write_bytes(b"the user's own file")
        gid = daemon.call("aria2.addUri", url)
        failed = daemon.wait_status(gid, "error")
        assert failed["errorCode"] == "13" and "--overwrite" in failed["errorMessage"]
        assert (daemon.root / "f.bin").read_bytes() == b"the user's own file"
        with pytest.raises(RpcError, match="allow-overwrite"):
            daemon.call("aria2.addUri", url, {"allow-overwrite": "true", "out": "f.bin"})
        assert daemon.rest("POST", "/api/jobs", json={"urls": url, "overwrite": True}).status_code == 400
        assert (daemon.root / "f.bin").read_bytes() == b"the user's own file"
        good = daemon.call("aria2.addUri", url, {"dir": str(daemon.root / "inside")})
        daemon.wait_status(good, "complete")
        assert (daemon.root / "inside" / "f.bin").read_bytes() == server.resource("/f.bin").data


def test_allow_overwrite_lets_a_client_replace_a_file(tmp_path: Path, server, make_data) -> None:
    server.add("/f.bin", make_data(10_000, seed=8))
    with running(tmp_path, "--allow-overwrite") as daemon:
        (daemon.root / "f.bin").write_bytes(b"old")
        gid = daemon.call("aria2.addUri", [server.url("/f.bin")], {"allow-overwrite": "true"})
        daemon.wait_status(gid, "complete")
        assert (daemon.root / "f.bin").read_bytes() == server.resource("/f.bin").data


def test_bad_json_and_oversized_requests_leave_the_daemon_serving(daemon: Daemon) -> None:
    bad = daemon.client.post("/jsonrpc", content=b'{"jsonrpc": "2.0", "id": 1, "method": ')
    assert bad.status_code == 500 and bad.json()["error"] == {"code": -32700, "message": "Parse error."}
    assert daemon.client.post("/jsonrpc", content=b"\xff\xfe").json()["error"]["code"] == -32700
    assert daemon.post(42).json()["error"]["code"] == -32600
    big = daemon.client.post("/jsonrpc", content=b"[" + b" " * (3 * 1024 * 1024) + b"]")
    assert big.status_code == 413 and big.json()["error"]["code"] == -32600
    chunked = daemon.client.post("/jsonrpc", content=iter([b" " * 1024 * 1024] * 3))
    assert chunked.status_code == 413
    batch = daemon.post([daemon.request("system.listMethods")] * 1001)
    assert batch.status_code == 400 and "at most 1000" in batch.json()["error"]["message"]
    many = daemon.call
    with pytest.raises(RpcError, match="at most 1000"):
        many("system.multicall", [{"methodName": "system.listMethods"}] * 1001, token=None)
    events = Events(daemon.ws_url)
    try:
        assert events.call({"jsonrpc": "2.0", "id": "x", "method": "aria2.getVersion"})["error"]["message"] == \
            "Unauthorized"
        events.connection.send("{nope")
        wait_for(lambda: any(m.get("error", {}).get("code") == -32700 for m in events.messages),
                 what="a parse error over the WebSocket")
        events.connection.send("[" + " " * (3 * 1024 * 1024) + "]")
        wait_for(lambda: events.closed, what="the oversized message to close the WebSocket")
    finally:
        events.close()
    assert daemon.call("aria2.getVersion")["enabledFeatures"]
    assert daemon.process.poll() is None


def test_two_clients_at_once_while_downloads_run(tmp_path: Path, server, make_data) -> None:
    files = {f"/two{i}.bin": make_data(SIZE, seed=20 + i) for i in range(2)}
    for path, data in files.items():
        server.add(path, data, throttle=SLOW)
    with running(tmp_path, "-j", "2") as daemon:
        first, second = Events(daemon.ws_url), Events(daemon.ws_url)
        try:
            gids = [first.call(daemon.request("aria2.addUri", [server.url("/two0.bin")]))["result"],
                    second.call(daemon.request("aria2.addUri", [server.url("/two1.bin")]))["result"]]
            for events in (first, second):
                for gid in gids:
                    events.wait("aria2.onDownloadStart", gid)
            errors: list[BaseException] = []

            def poll(events: Events) -> None:
                try:
                    for _ in range(10):
                        answer = events.call(daemon.request("aria2.tellActive", ["gid", "completedLength"]))
                        assert {s["gid"] for s in answer["result"]} <= set(gids)
                        assert daemon.call("aria2.getGlobalStat")["numActive"] in ("0", "1", "2")
                except BaseException as error:  # noqa: BLE001 - reported by the main thread
                    errors.append(error)

            threads = [threading.Thread(target=poll, args=(e,)) for e in (first, second)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            assert not errors
            for path in files:
                server.resource(path).throttle = None
            for events in (first, second):
                for gid in gids:
                    events.wait("aria2.onDownloadComplete", gid, timeout=30)
            for path, data in files.items():
                assert (daemon.root / path[1:]).read_bytes() == data
        finally:
            first.close()
            second.close()


def test_waiting_queue_options_and_global_methods(tmp_path: Path, server, make_data) -> None:
    for i in range(4):
        server.add(f"/w{i}.bin", make_data(SIZE, seed=30 + i), throttle=SLOW)
    server.add("/mirror.bin", make_data(SIZE, seed=30), throttle=SLOW)
    with running(tmp_path, "-j", "1") as daemon:
        gids = [daemon.call("aria2.addUri", [server.url(f"/w{i}.bin")]) for i in range(4)]
        daemon.wait_status(gids[0], "active")
        waiting = daemon.call("aria2.tellWaiting", 0, 10, ["gid", "status"])
        assert [w["gid"] for w in waiting] == gids[1:] and {w["status"] for w in waiting} == {"waiting"}
        assert [w["gid"] for w in daemon.call("aria2.tellWaiting", -1, 2, ["gid"])] == [gids[3], gids[2]]
        assert [w["gid"] for w in daemon.call("aria2.tellWaiting", 1, 1, ["gid"])] == [gids[2]]
        assert daemon.call("aria2.changePosition", gids[2], 0, "POS_CUR") == 1
        assert daemon.call("aria2.changePosition", gids[3], 0, "POS_SET") == 0
        assert [w["gid"] for w in daemon.call("aria2.tellWaiting", 0, 10, ["gid"])] == [gids[3], gids[1], gids[2]]
        assert daemon.call("aria2.pause", gids[2]) == gids[2]
        assert daemon.status(gids[2])["status"] == "paused"
        assert daemon.call("aria2.changeOption", gids[2], {"split": "3", "header": "X-Changed: yes"}) == "OK"
        option = daemon.call("aria2.getOption", gids[2])
        assert option["split"] == "3" and "X-Changed: yes" in option["header"]
        assert daemon.status(gids[2])["status"] == "paused"  # still paused after the change
        assert daemon.call("aria2.changeUri", gids[2], 1, [], [server.url("/mirror.bin")]) == [0, 1]
        assert [u["uri"] for u in daemon.call("aria2.getUris", gids[2])] == [server.url("/w2.bin"),
                                                                             server.url("/mirror.bin")]
        with pytest.raises(RpcError, match="first URI"):
            daemon.call("aria2.changeUri", gids[2], 1, [server.url("/w2.bin")], [])
        assert daemon.call("aria2.pauseAll") == "OK"
        wait_for(lambda: all(daemon.status(g)["status"] == "paused" for g in gids), what="every download paused")
        stat = daemon.call("aria2.getGlobalStat")
        assert stat["numActive"] == "0" and stat["numWaiting"] == "4"
        assert daemon.call("aria2.changeGlobalOption", {"max-concurrent-downloads": "2",
                                                        "max-overall-download-limit": "0"}) == "OK"
        assert daemon.call("aria2.getGlobalOption")["max-concurrent-downloads"] == "2"
        assert "rpc-secret" not in daemon.call("aria2.getGlobalOption")
        assert daemon.call("aria2.unpauseAll") == "OK"
        wait_for(lambda: len(daemon.call("aria2.tellActive", ["gid"])) == 2, what="two downloads at once")
        for i in range(4):
            server.resource(f"/w{i}.bin").throttle = None
        assert daemon.call("aria2.remove", gids[3]) == gids[3]
        assert daemon.call("aria2.removeDownloadResult", gids[3]) == "OK"
        for gid in gids[:3]:
            daemon.wait_status(gid, "complete", timeout=30)
        assert (daemon.root / "w2.bin").read_bytes() == server.resource("/w2.bin").data
        assert server.resource("/w2.bin").requests[0].headers["x-changed"] == "yes"
        assert len(daemon.call("aria2.tellStopped", 0, 10)) == 3
        assert daemon.call("aria2.purgeDownloadResult") == "OK"
        assert daemon.call("aria2.tellStopped", 0, 10) == []
        assert daemon.call("aria2.saveSession") == "OK"
        session = daemon.call("aria2.getSessionInfo")["sessionId"]
        assert len(session) == 40 and int(session, 16) >= 0


def test_change_position_reorders_the_waiting_queue_and_the_next_start(tmp_path: Path, server, make_data) -> None:
    for i in range(5):
        server.add(f"/p{i}.bin", make_data(SIZE, seed=50 + i), throttle=SLOW)
    with running(tmp_path, "-j", "1") as daemon:
        gids = [daemon.call("aria2.addUri", [server.url(f"/p{i}.bin")]) for i in range(4)]
        daemon.wait_status(gids[0], "active")

        def waiting() -> list[str]:
            return [w["gid"] for w in daemon.call("aria2.tellWaiting", 0, 10, ["gid"])]

        def move(gid: str, pos: int, how: str) -> int:
            return daemon.call("aria2.changePosition", gid, pos, how)

        assert waiting() == gids[1:]
        assert move(gids[3], 0, "POS_SET") == 0
        assert waiting() == [gids[3], gids[1], gids[2]]
        assert move(gids[3], 1, "POS_CUR") == 1
        assert move(gids[1], 5, "POS_CUR") == 2  # past the end: the end
        assert waiting() == [gids[3], gids[2], gids[1]]
        assert move(gids[1], -2, "POS_END") == 0
        assert move(gids[2], 0, "POS_END") == 2
        assert move(gids[3], -9, "POS_SET") == 0  # before the front: the front
        assert waiting() == [gids[3], gids[1], gids[2]]
        assert daemon.call("aria2.pause", gids[3]) == gids[3]  # a paused download keeps its place
        assert [(w["gid"], w["status"]) for w in daemon.call("aria2.tellWaiting", 0, 10, ["gid", "status"])] == [
            (gids[3], "paused"), (gids[1], "waiting"), (gids[2], "waiting")]
        assert move(gids[2], -1, "POS_CUR") == 1
        added = daemon.call("aria2.addUri", [server.url("/p4.bin")], {}, 1)  # addUri's position
        assert waiting() == [gids[3], added, gids[2], gids[1]]
        assert [w["gid"] for w in daemon.call("aria2.tellWaiting", -1, 2, ["gid"])] == [gids[1], gids[2]]
        with pytest.raises(RpcError, match=f"GID#{gids[0]} not found in the waiting queue"):
            move(gids[0], 0, "POS_SET")  # active
        with pytest.raises(RpcError, match="Illegal argument"):
            move(gids[1], 0, "POS_FIRST")
        server.resource("/p0.bin").throttle = None
        daemon.wait_status(gids[0], "complete")
        daemon.wait_status(added, "active")  # first in line but the paused one
        assert [daemon.status(g)["status"] for g in (gids[3], gids[2], gids[1])] == ["paused", "waiting", "waiting"]
        assert waiting() == [gids[3], gids[2], gids[1]]


def test_unsupported_and_unknown_methods_answer_clear_errors(daemon: Daemon) -> None:
    for method in ("aria2.addTorrent", "aria2.addMetalink", "aria2.getPeers"):
        with pytest.raises(RpcError, match="not supported"):
            daemon.call(method, "ZGF0YQ==")
    with pytest.raises(RpcError, match="No such method: aria2.nothing"):
        daemon.call("aria2.nothing")
    with pytest.raises(RpcError, match="Only HTTP"):
        daemon.call("aria2.addUri", ["magnet:?xt=urn:btih:abc"])
    with pytest.raises(RpcError, match="Invalid GID"):
        daemon.call("aria2.tellStatus", "xyz")
    with pytest.raises(RpcError, match="required but missing"):
        daemon.call("aria2.tellWaiting")


def test_jobs_added_by_another_process_are_picked_up(daemon: Daemon, server, make_data) -> None:
    data = make_data(100_000, seed=40)
    server.add("/later.bin", data)
    added = subprocess.run([sys.executable, "-m", "dlman", "add", "--later", server.url("/later.bin"), "-d",
                            str(daemon.root)], env=daemon.env, capture_output=True, text=True, timeout=30)
    assert added.returncode == 0, added.stderr
    gid = f"{int(added.stdout.split()[0]):016x}"
    daemon.wait_status(gid, "complete")
    assert (daemon.root / "later.bin").read_bytes() == data


def test_rest_api_openapi_and_event_stream(daemon: Daemon, server, make_data) -> None:
    data = make_data(SIZE, seed=50)
    server.add("/r.bin", data, throttle=SLOW)
    description = daemon.client.get("/api/openapi.json").json()
    assert description["openapi"].startswith("3.") and "/api/jobs/{id}/pause" in description["paths"]
    assert daemon.client.get("/api/info").json()["auth"] is True
    added = daemon.rest("POST", "/api/jobs", json={"urls": [server.url("/r.bin")], "dir": "rest"})
    assert added.status_code == 201
    job = added.json()["jobs"][0]
    assert job["state"] == "queued" and job["gid"] == f"{job['id']:016x}"
    with daemon.client.stream("GET", "/api/events", headers={"Authorization": f"Bearer {SECRET}"}) as events:
        assert events.headers["content-type"].startswith("text/event-stream")
        seen: list[int] = []
        for line in events.iter_lines():
            if line.startswith("data: "):
                jobs = json.loads(line[6:])["jobs"]
                seen.append(next(j["bytes_done"] for j in jobs if j["id"] == job["id"]))
                if len(set(b for b in seen if b > 0)) >= 2:
                    break  # progress moved, pushed by the server
    assert daemon.rest("POST", f"/api/jobs/{job['id']}/pause").json()["state"] == "paused"
    assert daemon.rest("GET", f"/api/jobs/{job['id']}").json()["state"] == "paused"
    assert daemon.rest("POST", f"/api/jobs/{job['id']}/resume").json()["state"] in ("queued", "active")
    wait_for(lambda: daemon.rest("GET", f"/api/jobs/{job['id']}").json()["state"] == "done", timeout=30,
             what="the job to finish")
    assert (daemon.root / "rest" / "r.bin").read_bytes() == data
    listed = daemon.rest("GET", "/api/jobs").json()["jobs"]
    assert [j["id"] for j in listed] == [job["id"]] and listed[0]["path"] == str(daemon.root / "rest" / "r.bin")
    assert daemon.rest("DELETE", f"/api/jobs/{job['id']}").status_code == 204
    assert daemon.rest("GET", f"/api/jobs/{job['id']}").status_code == 404
    manifest = f"{server.url('/r.bin')}\n  out=from-manifest.bin\n"
    assert daemon.rest("POST", "/api/jobs", json={"manifest": manifest}).status_code == 201
    assert daemon.rest("POST", "/api/jobs", json={"manifest": "not a url\n"}).status_code == 400
    assert daemon.rest("POST", "/api/jobs", content=b"{").status_code == 400


def test_sigterm_and_sigint_stop_cleanly_with_state_saved(tmp_path: Path, server, make_data) -> None:
    data = make_data(2 * SIZE, seed=60)
    resource = server.add("/big.bin", data, throttle=SLOW)
    gid = None
    for sig, status in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        daemon = Daemon(tmp_path, "-v")
        if gid is None:
            gid = daemon.call("aria2.addUri", [server.url("/big.bin")])
        # the second daemon takes the interrupted job up again by itself
        served = resource.bytes_served
        wait_for(lambda served=served: resource.bytes_served - served > 200_000, what="the download to be under way")
        assert daemon.stop(sig) == status, daemon.output()
        assert "stopped; partial data kept" in daemon.output()
        listed = subprocess.run([sys.executable, "-m", "dlman", "list", "--json"], env=daemon.env,
                                capture_output=True, text=True, timeout=30)
        job = json.loads(listed.stdout)[0]
        assert job["state"] == "queued" and job["bytes_done"] > 0, job
        assert (daemon.root / "big.bin.part.state").exists()
        assert f"{job['id']:016x}" == gid
    resource.throttle = None
    with running(tmp_path) as daemon:
        daemon.wait_status(gid, "complete")
        assert (daemon.root / "big.bin").read_bytes() == data
        assert "Range" in resource.requests[-1].headers or resource.requests[-1].range


def test_shutdown_method_stops_the_daemon(daemon: Daemon) -> None:
    assert daemon.call("aria2.shutdown") == "OK"
    assert daemon.process.wait(20) == 0


def test_the_secret_never_reaches_logs_or_ps(tmp_path: Path, server, make_data) -> None:
    server.add("/s.bin", make_data(50_000, seed=70))
    with running(tmp_path, "-vv") as daemon:
        cmdline = Path(f"/proc/{daemon.process.pid}/cmdline").read_bytes()
        assert SECRET.encode() not in cmdline
        params = base64.b64encode(json.dumps([f"token:{SECRET}", [server.url("/s.bin")]]).encode()).decode()
        gid = daemon.client.get(f"/jsonrpc?method=aria2.addUri&id=1&params={params}").json()["result"]
        daemon.wait_status(gid, "complete")
        daemon.post(daemon.request("aria2.getVersion", token=SECRET[:-1] + "X"))
        events = Events(daemon.ws_url)
        events.call(daemon.request("aria2.getGlobalOption"))
        events.close()
        daemon.rest("GET", "/api/jobs")
        assert "rpc aria2.addUri" in daemon.output() and "GET /jsonrpc 200" in daemon.output()
    log = daemon.output()
    assert SECRET not in log and SECRET[:-1] not in log and params not in log and params[:40] not in log


def test_exposure_rules_refuse_to_start(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DLMAN_RPC_SECRET"}
    for args in (["--listen", "0.0.0.0:0"], ["--allow-origin", "*"], ["--listen", "[::]:0"]):
        result = subprocess.run([sys.executable, "-m", "dlman.server", *args], env=env, cwd=tmp_path,
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 2 and "secret" in result.stderr, (args, result.stderr)


def test_serve_without_the_extra_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from click.testing import CliRunner

    from dlman.server import command

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    result = CliRunner().invoke(command.serve, [])
    assert result.exit_code == 1 and "pip install 'dlman[server]'" in result.output
