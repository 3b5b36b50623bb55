"""Adversarial review of the engine: each test reproduces one way the guarantees still break.

Every test here plays a hostile or buggy server, a second job, a cancelling host program or a
name that collides, and asserts what the README promises. They were written against the engine
as it stands and fail there; each docstring says what happens instead and where.
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

import dlman
from dlman import storage
from dlman.cli import cli
from helpers import fetch, saved_bytes, wait_for

MiB = 1 << 20


def start_and_cancel(url: str | list[str], dest: Path, at_least: int, **options) -> None:
    """Download until the state claims ``at_least`` bytes, then cancel (as Ctrl-C would)."""
    async def main() -> None:
        async with dlman.Engine(timeout=5, **options) as engine:
            task = asyncio.create_task(engine.download(url, dest))
            await asyncio.to_thread(wait_for, lambda: task.done() or saved_bytes(dest) >= at_least, 30.0,
                                    what="a saved state")
            assert not task.done(), "the download ended before it could be interrupted"
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    asyncio.run(main())


def chunks_from(data: bytes, source: bytes, block: int = 64 << 10) -> int:
    """How many ``block``-sized pieces of ``data`` equal those of ``source`` (to show a mix)."""
    return sum(1 for i in range(0, len(data), block) if data[i:i + block] == source[i:i + block])


# -- hangs ----------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_a_server_that_always_answers_416_for_an_empty_file_is_not_asked_for_ever(server, tmp_path):
    """``_first_from`` answers a 416 ``bytes */0`` by asking again without Range, and ``continue``s
    past the retry count; ``judge_first`` calls the next 416 REFUSED with total 0 too, so a server
    that keeps saying 416 is asked thousands of times a second and the download never ends."""
    res = server.add("/empty", b"", status=416, headers={"Content-Range": "bytes */0"})

    async def main() -> None:
        async with dlman.Engine(timeout=2, retries=2) as engine:
            await asyncio.wait_for(engine.download(server.url("/empty"), tmp_path / "empty"), 6)

    with pytest.raises(dlman.DownloadError):
        asyncio.run(main())
    assert len(res.requests) <= 10


# -- mixed files reported done ----------------------------------------------------------------------
def test_a_mirror_is_proven_even_when_the_origin_has_written_nothing_yet(server, server2, make_data, tmp_path):
    """``_probe`` waits ``timeout`` seconds for bytes on disk, then, finding none, calls the mirror
    proven ("nothing on disk to splice with"): but the origin's bytes arrive later, so the mirror's
    segments (another file of the same size) are spliced with the origin's."""
    a, b = make_data(4 * MiB, seed=1), make_data(4 * MiB, seed=2)
    origin = server.add("/f", a, stall_after=0, stall_after_once=True)  # the first body stalls
    mirror = server2.add("/f", b)  # a stale mirror: same size, other bytes, no validators

    def slow_the_origin_retry() -> None:
        # the stalled first request is in; its retry waits a little longer (Retry-After)
        wait_for(lambda: len(origin.requests) >= 1, what="the origin's first request")
        origin.statuses.append((503, {"Retry-After": "2"}))

    helper = threading.Thread(target=slow_the_origin_retry)
    helper.start()
    try:
        fetch([server.url("/f"), server2.url("/f")], tmp_path / "f", connections=2, timeout=2)
    except dlman.DownloadError:
        pass
    finally:
        helper.join()
    dest = tmp_path / "f"
    if dest.exists():
        got = dest.read_bytes()
        assert got == a, (f"published a mix: {chunks_from(got, a)} blocks from the origin, "
                          f"{chunks_from(got, b)} from the unproven mirror; mirror requests: "
                          f"{[r.range for r in mirror.requests]}")


def test_a_mirror_is_proven_by_bytes_that_can_tell_the_files_apart(server, server2, make_data, tmp_path):
    """Disk images (and firmware padded with 0xFF) start with long runs of identical bytes.
    ``_probe`` compares only the 16 KiB before the end of the longest written stretch, which is
    then the first buffer written by the origin: zeros on both mirrors. A stale mirror of the same
    size passes the proof and serves half the file."""
    padding = bytes(2 * MiB)  # the zeros before a disk image's first partition
    a, b = padding + make_data(6 * MiB, seed=1), padding + make_data(6 * MiB, seed=2)
    server.add("/img", a, throttle=4 * MiB)
    mirror = server2.add("/img", b, throttle=4 * MiB)
    try:
        fetch([server.url("/img"), server2.url("/img")], tmp_path / "img", connections=4)
    except dlman.DownloadError:
        return
    got = (tmp_path / "img").read_bytes()
    assert got == a, (f"published a mix: {chunks_from(got, a, 1 << 20)} MiB match the origin, mirror "
                      f"requests {[r.range for r in mirror.requests]}")


def test_a_redirect_followed_again_to_another_server_is_proven_before_it_is_used(server, server2, make_data,
                                                                                  tmp_path):
    """After the pinned URL answers 404 the redirector is followed again, and now leads to another
    server (a stale mirror of the same size). That server is a new source: it must prove itself
    against the bytes on disk before any of its bytes is written, whatever segment it is asked
    for (a takeover has no written bytes right before it to overlap)."""
    a, b = make_data(8 * MiB, seed=1), make_data(8 * MiB, seed=2)
    m1 = server2.add("/m1", a, etag='"one"', throttle=1 * MiB)
    server2.add("/m2", b, etag='"two"')  # a stale mirror of the same size
    redirector = server.add("/get", redirect_to=server2.url("/m1"))

    def mirror_m1_goes_away() -> None:
        wait_for(lambda: sum(1 for r in m1.requests if r.status == 206) >= 2, what="two segments from m1")
        m1.status = 404
        redirector.redirect_to = server2.url("/m2")

    helper = threading.Thread(target=mirror_m1_goes_away)
    helper.start()
    try:
        fetch(server.url("/get"), tmp_path / "f", connections=2)
    except dlman.DownloadError:
        return
    finally:
        helper.join()
    got = (tmp_path / "f").read_bytes()
    assert got == a or got == b, f"published a mix: {chunks_from(got, a)} blocks of m1, {chunks_from(got, b)} of m2"


def test_a_206_without_validators_to_an_if_range_request_is_not_trusted(server, make_data, tmp_path):
    """A server that ignores If-Range and sends its 206s without ETag or Last-Modified: ``_ask``
    sent If-Range, so it asked for no overlap, and ``Validators.contradicts`` finds nothing to
    compare ("a missing value proves nothing"). The new version is spliced onto the old one."""
    old, new = make_data(8 * MiB, seed=1), make_data(8 * MiB, seed=2)
    res = server.add("/f", old, auto_etag=True, throttle=2 * MiB)
    dest = tmp_path / "f"
    start_and_cancel(server.url("/f"), dest, 2 * MiB, connections=2)

    def ranges_without_validators(request):  # If-Range ignored, no ETag on the 206
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", request.headers.get("range") or "")
        if match is None:
            return None
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) else len(new) - 1
        return 206, {"Content-Range": f"bytes {first}-{last}/{len(new)}"}, new[first:last + 1]

    res.data, res.throttle, res.respond = new, None, ranges_without_validators
    fetch(server.url("/f"), dest, connections=2)
    got = dest.read_bytes()
    assert got == new, f"published a mix: {chunks_from(got, old)} blocks old, {chunks_from(got, new)} new"


def test_the_file_published_is_the_file_verified(server, make_data, tmp_path):
    """``PartFile.finish`` checks the size and the checksum through the locked descriptor, then
    publishes by name (``os.replace``/``os.link`` of ``NAME.part``). A second download whose server
    names its file ``x.part`` (Content-Disposition, overwrite on) replaces that name meanwhile:
    the first download then publishes the other server's bytes as ``x``, checksum "verified"."""
    good, evil = make_data(4 * MiB, seed=1), make_data(256 << 10, seed=2)
    res = server.add("/x", good, throttle=512 << 10)
    server.add("/other", evil, content_disposition='attachment; filename="x.part"')
    checksum = "sha256:" + __import__("hashlib").sha256(good).hexdigest()

    async def main() -> None:
        async with dlman.Engine(timeout=5, connections=2, overwrite=True) as engine:
            first = asyncio.create_task(engine.download(server.url("/x"), tmp_path, checksum=checksum))
            await asyncio.to_thread(wait_for, lambda: res.bytes_served >= 256 << 10)
            try:
                await engine.download(server.url("/other"), tmp_path)
            except dlman.DownloadError:
                pass
            try:
                await first
            except dlman.DownloadError:
                pass

    asyncio.run(main())
    published = tmp_path / "x"
    assert not published.exists() or published.read_bytes() == good


def test_a_file_renamed_over_the_part_file_is_never_published(server, make_data, tmp_path):
    """Whatever takes the name ``NAME.part`` while a transfer runs (another program, a user), no file
    but the one the transfer wrote and verified is published under ``NAME``."""
    good = make_data(4 * MiB, seed=1)
    res = server.add("/x", good, throttle=1 * MiB)
    intruder = tmp_path / "intruder"
    intruder.write_bytes(make_data(4 * MiB, seed=2))
    dest = tmp_path / "x"

    async def main() -> None:
        async with dlman.Engine(timeout=5, connections=2) as engine:
            task = asyncio.create_task(engine.download(server.url("/x"), dest))
            await asyncio.to_thread(wait_for, lambda: res.bytes_served >= MiB)
            os.replace(intruder, tmp_path / "x.part")
            try:
                await task
            except dlman.StorageError as error:  # the written file lost its only name: say so
                assert "replaced by another file" in str(error)

    asyncio.run(main())
    assert not dest.exists() or dest.read_bytes() == good


def test_a_finished_file_named_like_a_part_file_is_never_destroyed(server, make_data, tmp_path):
    """A file downloaded as ``data.part`` (its URL's own name) is done; a later download of
    ``data`` into the same directory opens that finished file as its partial data, truncates it
    (``_attempt`` -> ``PartFile.truncate``) and finally unlinks it: a finished file is silently
    lost."""
    earlier, later = make_data(300_000, seed=1), make_data(200_000, seed=2)
    server.add("/data.part", earlier)
    server.add("/data", later)
    first = fetch(server.url("/data.part"), tmp_path).path
    assert first.read_bytes() == earlier
    assert first.name == "data.part_"  # a name dlman keeps partial data under is never given to a file
    fetch(server.url("/data"), tmp_path)
    assert first.read_bytes() == earlier and (tmp_path / "data").read_bytes() == later
    with pytest.raises(dlman.InvalidInputError, match="partial data"):
        fetch(server.url("/data"), tmp_path / "other.part")


def test_remove_delete_of_another_job_never_deletes_what_an_active_transfer_owns(server, make_data, tmp_path):
    """``Queue.remove(delete=True)`` unlinks ``NAME.part`` and ``NAME.part.state`` by name for a job
    nobody owns, without the destination lock: a queued job for the same ``-o`` wipes the partial
    data of the transfer that is writing it. That transfer then fails at the very end ("cannot
    write f: No such file or directory") and leaves a state file claiming bytes of no part file."""
    data = make_data(2 * MiB)
    server.add("/f", data, throttle=256 << 10)
    server.add("/mirror/f", data)
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update(DLMAN_HOME=str(tmp_path / "home"), NO_PROXY="*")
    work = tmp_path / "work"
    work.mkdir()

    def dlman_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "dlman", *args], cwd=work, env=env, capture_output=True,
                              text=True, timeout=60)

    active = subprocess.Popen([sys.executable, "-m", "dlman", "add", "-c", "2", "-o", "f", server.url("/f")],
                              cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (work / "f.part.state").exists() or active.poll() is not None, what="a saved state")
        assert dlman_cli("add", "--later", "-o", "f", server.url("/mirror/f")).stdout.split() == ["2"]
        assert dlman_cli("remove", "--delete", "2").returncode == 0
        out, err = active.communicate(timeout=60)
    finally:
        if active.poll() is None:
            active.kill()
            active.communicate()
    assert active.returncode == 0, out + err
    assert (work / "f").read_bytes() == data
    assert sorted(p.name for p in work.iterdir()) == ["f"]


# -- cancellation -------------------------------------------------------------------------------------
def test_a_download_cancelled_by_an_anyio_cancel_scope_leaves_no_task_behind(server, make_data, tmp_path):
    """anyio (Starlette, FastAPI) cancels a task again at every await until it ends. The second
    cancel lands while ``_run_connections`` awaits its workers: ``saver.stop()`` and the last
    save are skipped, ``run`` closes the part's descriptor, and the saver task lives on, reporting
    progress for a download that ended and then dying with an AssertionError in ``save_state``
    (with writes that may still be in flight on a closed descriptor)."""
    anyio = pytest.importorskip("anyio")
    server.add("/f", make_data(16 * MiB), throttle=2 * MiB)
    dest = tmp_path / "f"
    leftovers: list[str] = []

    async def main() -> None:
        async with dlman.Engine(timeout=5, connections=4) as engine:
            async with anyio.create_task_group() as group:
                group.start_soon(functools.partial(engine.download, server.url("/f"), dest))
                await asyncio.to_thread(wait_for, lambda: saved_bytes(dest) >= MiB, what="a saved state")
                group.cancel_scope.cancel()
            me = asyncio.current_task()
            leftovers.extend(task.get_coro().__qualname__ for task in asyncio.all_tasks()
                             if task is not me and not task.done())

    asyncio.run(main())
    assert leftovers == [], f"tasks still running after the download ended: {leftovers}"


def test_a_download_cancelled_as_it_starts_releases_its_destination(server, make_data, tmp_path):
    """The first await of a download is the thread that opens and flocks ``NAME.part``
    (``PartFile.lock``). A cancel while that thread runs abandons its result: the descriptor stays
    open with its lock held, so the destination is "being downloaded by another transfer" for the
    rest of the process (and a stray ``NAME.part`` stays). Whether the thread has started when the
    cancel lands depends on the executor, so the cancel is tried on twenty destinations."""
    data = make_data(64 << 10)
    server.add("/f", data)
    dests = [tmp_path / f"f{i}" for i in range(20)]

    async def main() -> list[object]:
        async with dlman.Engine(timeout=5) as engine:
            for dest in dests:
                task = asyncio.create_task(engine.download(server.url("/f"), dest))
                await asyncio.sleep(0)  # one turn of the loop: the download takes its first step
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            return await asyncio.gather(*(engine.download(server.url("/f"), dest) for dest in dests),
                                        return_exceptions=True)

    before = len(os.listdir("/proc/self/fd"))
    outcomes = asyncio.run(main())
    busy = [o for o in outcomes if isinstance(o, BaseException)]
    assert busy == [], f"{len(busy)} of 20 destinations stayed locked: {busy[0]}"
    assert all(dest.read_bytes() == data for dest in dests)
    assert len(os.listdir("/proc/self/fd")) <= before


def test_a_cancel_while_publishing_leaves_no_stray_state(server, make_data, tmp_path, monkeypatch):
    """A cancel that arrives while the rename runs in its thread (a slow disk) lets the rename
    finish, but ``_publish`` takes the CancelledError for a failure and saves the state again:
    ``f.part.state`` reappears beside the published file, and every later run that finds the
    file complete leaves ``f.part`` and ``f.part.state`` behind for good."""
    data = make_data(MiB)
    server.add("/f", data)
    dest = tmp_path / "f"
    published, go_on = threading.Event(), threading.Event()
    real = storage._publish

    def slow_publish(*args):
        real(*args)
        published.set()
        go_on.wait(10)

    monkeypatch.setattr(storage, "_rename_into_place", storage.aiofiles.os.wrap(slow_publish))

    async def main() -> None:
        async with dlman.Engine(timeout=5) as engine:
            task = asyncio.create_task(engine.download(server.url("/f"), dest))
            await asyncio.to_thread(published.wait, 20)
            task.cancel()
            go_on.set()
            try:
                await task
            except asyncio.CancelledError:
                pass

    asyncio.run(main())
    monkeypatch.setattr(storage, "_rename_into_place", storage.aiofiles.os.wrap(real))
    assert fetch(server.url("/f"), dest).path == dest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_a_cancel_that_arrives_with_an_answer_head_is_not_lost(server, make_data, tmp_path):
    """On Python 3.10 and 3.11 ``asyncio.wait_for`` swallows a cancel that arrives after the
    awaited call finished but before the caller resumed, and returns the result instead.
    ``Requester.get`` waits for every answer head with ``wait_for``: a Ctrl-C that lands in that
    loop turn is lost by the connection, which downloads on (taking more work), and the cancelled
    transfer waits for it. Here an event hook delivers the cancel at that moment; the 8 s download runs to its
    end before the cancel completes."""
    server.add("/f", make_data(8 * MiB), throttle=1 * MiB)
    took: list[float] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        target: dict[str, asyncio.Task] = {}

        async def cancel_as_the_head_arrives(response: httpx.Response) -> None:
            if target and response.request.headers.get("range") != "bytes=0-":
                loop.call_soon(target.pop("task").cancel)  # a Ctrl-C, as this head comes in

        async with dlman.Engine(timeout=5, connections=2, event_hooks={"response": [cancel_as_the_head_arrives]}
                                ) as engine:
            task = asyncio.create_task(engine.download(server.url("/f"), tmp_path / "f"))
            target["task"] = task
            started = time.monotonic()
            with pytest.raises(asyncio.CancelledError):
                await task
            took.append(time.monotonic() - started)

    asyncio.run(main())
    assert took[0] < 3, f"the cancelled download took {took[0]:.1f}s to stop"


_NOTEBOOK_CELL = """
import asyncio, sys, dlman
async def cell():
    dlman.download(sys.argv[1], sys.argv[2], connections=2)  # blocking, in a running loop
loop = asyncio.new_event_loop()
try:
    loop.run_until_complete(cell())
except KeyboardInterrupt:
    sys.exit(130)
"""


def test_ctrl_c_stops_a_blocking_download_called_from_a_running_loop(server, make_data, tmp_path):
    """In a notebook ``dlman.download`` runs its own loop in a worker thread and waits for it in
    ``with ThreadPoolExecutor``: Ctrl-C raises KeyboardInterrupt in the waiting thread, and
    leaving the ``with`` block joins the worker, which downloads on to the end of the file."""
    res = server.add("/f", make_data(16 * MiB), throttle=512 << 10)  # about 16 s on two connections
    script = tmp_path / "cell.py"
    script.write_text(_NOTEBOOK_CELL)
    process = subprocess.Popen([sys.executable, str(script), server.url("/f"), str(tmp_path / "f")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: res.bytes_served > MiB or process.poll() is not None, what="the download to start")
        interrupted = time.monotonic()
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        took = time.monotonic() - interrupted if process.poll() is not None else float("inf")
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()
    assert took < 5, f"still downloading {took:.1f}s after Ctrl-C ({res.bytes_served} bytes served)"


# -- errors that are not DownloadError ----------------------------------------------------------------
@pytest.mark.parametrize("chunked", [False, True], ids=["sized", "unsized"])
def test_a_dangling_symlink_at_the_destination_is_a_download_error(server, make_data, tmp_path, chunked):
    """``_check_existing`` sees the name with ``lexists`` and then ``stat``s through the link
    (``FileNotFoundError``); unsized, ``_compare_with_existing`` opens it after the whole download
    (``FileNotFoundError`` again, and ``f.part`` stays)."""
    server.add("/f", make_data(100_000), chunked=chunked)
    dest = tmp_path / "f"
    dest.symlink_to(tmp_path / "nowhere")
    with pytest.raises(dlman.DownloadError):
        fetch(server.url("/f"), dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


@pytest.mark.parametrize("value", [
    "attachment; filename*=unicode_escape''%5Cud800.bin",   # a lone surrogate: UnicodeEncodeError
    "attachment; filename*=undefined''%ff.bin",              # a codec that raises UnicodeError
])
def test_a_hostile_content_disposition_is_never_an_internal_error(server, make_data, tmp_path, value):
    """``parse_content_disposition`` catches LookupError and UnicodeDecodeError, but a charset
    named by the server can raise a plain UnicodeError, or decode to a lone surrogate that
    ``sanitise_name`` cannot encode."""
    data = make_data(1000)
    server.add("/f.bin", data, content_disposition=value)
    try:
        result = fetch(server.url("/f.bin"), tmp_path)
    except dlman.DownloadError:
        return
    assert result.path.parent == tmp_path and result.path.read_bytes() == data


@pytest.mark.parametrize("url, headers", [
    ("http://xn--zz/f", None),                      # passes check_url, refused by httpx (IDNAError)
    ("http://127.0.0.1:9/f\x7f", None),             # passes check_url, refused by httpx (InvalidURL)
    ("http://127.0.0.1:9/f", {"X-Note": "café"}),   # a header httpx cannot encode
], ids=["idna", "control-character", "non-ascii-header"])
def test_input_httpx_refuses_is_invalid_input(tmp_path, url, headers):
    """``check_url`` and ``parse_header`` accept what ``client.build_request`` then refuses, in
    ``Requester.request`` (outside any ``try``): the error escapes as IDNAError, InvalidURL or
    UnicodeEncodeError."""
    with pytest.raises(dlman.InvalidInputError):
        fetch(url, tmp_path / "f", headers=headers)


@pytest.mark.parametrize("dest, options", [
    ("f\x00g", {}),                                     # ValueError: embedded null byte
    ("f", {"limit_rate": [1024]}),                      # not a rate at all
    ("f", {"headers": {"X-Note": "a\x00b"}}),           # retried, then NetworkError (LocalProtocolError)
], ids=["nul-in-dest", "list-rate", "control-character-in-header"])
def test_other_bad_input_is_invalid_input(server, tmp_path, dest, options):
    """Bad input raises ``InvalidInputError`` before anything is attempted (SPEC: exit 2)."""
    res = server.add("/f", b"data")
    with pytest.raises(dlman.InvalidInputError):
        fetch(server.url("/f"), tmp_path / dest, retries=1, **options)
    assert res.requests == []


def test_a_rate_may_be_a_float_as_well(server, tmp_path):
    server.add("/f", b"data")
    assert fetch(server.url("/f"), tmp_path / "f", limit_rate=1024.0).size == 4


@pytest.mark.parametrize("args", [
    ["http://xn--zz/f"],
    ["-H", "X-Note: café", "http://127.0.0.1:9/f"],
], ids=["idna", "non-ascii-header"])
def test_the_cli_refuses_input_httpx_refuses_and_enqueues_nothing(tmp_path, monkeypatch, args):
    """SPEC: bad input exits 2 and enqueues nothing. Today the job is enqueued and fails with
    "internal error: IDNAError" (exit 1)."""
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    home = str(tmp_path / "home")
    result = runner.invoke(cli, ["--home", home, "add", *args])
    assert result.exit_code == 2, result.output
    listing = runner.invoke(cli, ["--home", home, "list", "--json"])
    assert json.loads(listing.stdout) == []


# -- credentials --------------------------------------------------------------------------------------
def test_the_callers_client_cookie_never_follows_a_redirect_to_another_host(server, server2, make_data,
                                                                           tmp_path):
    """``Requester.request`` removes every credential header for another origin except Cookie,
    assuming it came from the client's jar (which matches domains); a Cookie among the caller's
    client default headers goes to whatever host a redirect names (httpx itself drops it)."""
    target = server2.add("/f", make_data(1000))
    server.add("/get", redirect_to=server2.url("/f"))

    async def main() -> None:
        async with httpx.AsyncClient(headers={"Cookie": "session=secret"}) as client:
            async with dlman.Engine(client=client, timeout=5) as engine:
                await engine.download(server.url("/get"), tmp_path / "f")

    asyncio.run(main())
    assert target.requests
    assert [r.headers.get("cookie") for r in target.requests] == [None] * len(target.requests)


@pytest.mark.parametrize("name", ["X-Goog-Api-Key", "Ocp-Apim-Subscription-Key", "apikey", "X-Auth-Key",
                                  "X-JFrog-Art-Api"])
def test_well_known_api_key_headers_never_follow_a_redirect_to_another_host(server, server2, make_data,
                                                                           tmp_path, name):
    """``is_credential_header`` knows Authorization, Cookie, X-Api-Key and names with token,
    secret, passw, signature or credential: the API-key headers of Google, Azure API Management,
    Supabase/Kong, Cloudflare and Artifactory go to any host a redirect names (and to mirrors)."""
    target = server2.add("/f", make_data(1000))
    server.add("/get", redirect_to=server2.url("/f"))
    fetch(server.url("/get"), tmp_path / "f", headers={name: "secret-key"})
    assert target.requests
    assert [r.headers.get(name) for r in target.requests] == [None] * len(target.requests)


def test_a_malformed_credential_header_is_refused_without_printing_it(server, make_data, tmp_path, monkeypatch):
    """``parse_header`` refuses only CR and LF; h11 refuses other control characters (a vertical
    tab pasted with a token) at send time with ``Illegal header value b'Bearer ...'``, which the
    retry message and the job's error repeat verbatim: the token is printed and stored in the
    queue. SPEC: a bad header is a usage error (exit 2, nothing enqueued)."""
    monkeypatch.chdir(tmp_path)
    server.add("/f", make_data(1000))
    runner = CliRunner()
    home = str(tmp_path / "home")
    result = runner.invoke(cli, ["--home", home, "add", "--retries", "0", "-H",
                                 "Authorization: Bearer SECRETTOKEN\x0bx", server.url("/f")])
    listing = runner.invoke(cli, ["--home", home, "list"])
    assert "SECRETTOKEN" not in result.output + listing.output
    assert result.exit_code == 2, result.output


def test_cdn_signed_url_parameters_are_never_printed(server, tmp_path, monkeypatch):
    """Alibaba Cloud CDN signs URLs with ``auth_key``, Akamai token auth with ``hdnts``: neither is
    in ``CREDENTIAL_PARAMETERS``, so both are printed as they are in errors and listings."""
    monkeypatch.chdir(tmp_path)
    url = server.url("/missing?auth_key=1700000000-0-0-SECRETHASH&hdnts=exp%3D1~hmac%3DSECRETHMAC")
    runner = CliRunner()
    home = str(tmp_path / "home")
    result = runner.invoke(cli, ["--home", home, "add", url])
    assert result.exit_code == 1
    listing = runner.invoke(cli, ["--home", home, "list"])
    for text in (result.output, listing.output):
        assert "SECRETHASH" not in text and "SECRETHMAC" not in text, text


# -- progress ---------------------------------------------------------------------------------------------
def test_a_resume_from_a_server_that_encodes_every_answer_keeps_its_progress(server, make_data, tmp_path):
    """A server that gzips every answer (Accept-Encoding ignored) is downloaded in segments of its
    gzip representation. The state records the encoding served, so on resume every 206 that says
    gzip matches it and the saved progress is kept; without it, ``judge_range`` would fall back to
    one plain stream from zero (SPEC rule 5: a resume re-downloads at most what arrived since the
    last save). The server stays throttled: a takeover cuts a running range short, and an
    unthrottled server would have pushed up to a socket buffer's worth past the cut by then."""
    data = make_data(8 * MiB)
    res = server.add("/gz", data, gzip_always=True, auto_etag=True, throttle=2 * MiB)
    dest = tmp_path / "gz"
    start_and_cancel(server.url("/gz"), dest, 2 * MiB, connections=2)
    claimed = saved_bytes(dest)
    served = gzip.compress(data, compresslevel=6, mtime=0)
    res.reset_counters()
    fetch(server.url("/gz"), dest, connections=2)
    assert dest.read_bytes() == served
    # From zero would be ``claimed`` (over 2 MiB) more; a cut range's overshoot is a few slices.
    assert res.bytes_served <= len(served) - claimed + (256 << 10), (res.bytes_served, claimed)
