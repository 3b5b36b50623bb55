"""The guarantees' mechanisms, each with a way to switch it off and the tests that must then fail.

``scripts/sabotage.py`` runs each entry's tests with that one mechanism switched off (in the
test process and in every dlman process it starts, through ``DLMAN_SABOTAGE``) and reports
the tests that still pass: a test that passes without its mechanism proves nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

ENV = "DLMAN_SABOTAGE"


@dataclass(frozen=True)
class Sabotage:
    name: str
    what: str
    switch_off: Callable[[], None]
    tests: tuple[str, ...]


def _takeover() -> None:
    from dlman.segments import SegmentPlan

    def idle_only(self):  # type: ignore[no-untyped-def]
        for segment in self.segments:
            if not segment.busy and not segment.done:
                segment.busy = True
                return segment
        return None
    SegmentPlan.next_work = idle_only


def _if_range() -> None:
    from dlman.remote import Validators
    Validators.if_range = lambda self: None  # type: ignore[method-assign]


def _range_check() -> None:
    from dlman import remote, transfer
    from dlman.remote import Action, Verdict

    def trusting(answer, ask, remote_file, known):  # type: ignore[no-untyped-def]
        if answer.status in (200, 206):
            return Verdict(Action.ACCEPT, start=ask.start, end=ask.end)
        return original(answer, ask, remote_file, known)
    original = remote.judge_range
    transfer.judge_range = trusting


def _validators() -> None:
    from dlman.remote import Validators
    Validators.contradicts = lambda self, other: False  # type: ignore[method-assign]


def _flush_by_age() -> None:
    from dlman import receiver

    async def nothing(self):  # type: ignore[no-untyped-def]
        return None
    receiver.FLUSH_AGE = float("inf")
    receiver.Receiver.flush = nothing


def _destination_lock() -> None:
    import fcntl

    from dlman import storage
    real_flock = fcntl.flock

    class NoLock:
        LOCK_EX, LOCK_NB, LOCK_UN = fcntl.LOCK_EX, fcntl.LOCK_NB, fcntl.LOCK_UN

        @staticmethod
        def flock(fd, operation):  # type: ignore[no-untyped-def]
            if operation & fcntl.LOCK_EX:
                return None
            return real_flock(fd, operation)
    storage.fcntl = NoLock  # type: ignore[assignment]


def _no_clobber() -> None:
    from dlman import storage
    real = storage._publish
    storage._rename_into_place = storage.aiofiles.os.wrap(
        lambda fd, part, dest, leftovers, overwrite: real(fd, part, dest, leftovers, True))


def _nofollow() -> None:
    from dlman import storage
    storage.NOFOLLOW = 0


def _overlap() -> None:
    from dlman import transfer

    async def trust(self, mirror):  # type: ignore[no-untyped-def]
        return None
    transfer.overlap_before = lambda pos, written, limit=0: 0
    transfer.Transfer._probe = trust


def _fallback() -> None:
    from dlman import remote, transfer
    from dlman.remote import Action, Verdict

    def whole_body_at_offset(answer, ask, remote_file, known):  # type: ignore[no-untyped-def]
        verdict = original(answer, ask, remote_file, known)
        if answer.status == 200 and verdict.action is Action.FALLBACK:
            return Verdict(Action.ACCEPT, start=ask.start, end=ask.end)
        return verdict
    original = remote.judge_range
    transfer.judge_range = whole_body_at_offset


def _retire() -> None:
    from dlman.transfer import Transfer
    Transfer._others_running = lambda self: False  # type: ignore[method-assign]


def _give_back() -> None:
    from dlman.segments import SegmentPlan

    def release_only(self, segment):  # type: ignore[no-untyped-def]
        segment.busy = False
    SegmentPlan.give_back = release_only


def _reprove_after_refollow() -> None:
    from dlman import transfer
    real = transfer.Transfer._act

    async def keep_verified(self, verdict, mirror, response, answer, *, pinned, key=None):  # type: ignore[no-untyped-def]
        verified = set(self._verified)
        try:
            await real(self, verdict, mirror, response, answer, pinned=pinned, key=key)
        finally:
            self._verified |= verified
    transfer.Transfer._act = keep_verified


def _credentials_origin() -> None:
    from dlman import mirrors
    mirrors.allows_credentials = lambda url, credentials_origin: True


def _pinning() -> None:
    from dlman.mirrors import Mirror
    Mirror.ask = property(lambda self: self.url)  # type: ignore[assignment]


def _watchdog() -> None:
    from dlman.receiver import Watchdog
    Watchdog.feed = lambda self, size: None  # type: ignore[method-assign]


def _checksum() -> None:
    from dlman import storage
    real = storage.PartFile.finish

    async def unchecked(self, size, checksum, url, *, overwrite):  # type: ignore[no-untyped-def]
        return await real(self, size, None, url, overwrite=overwrite)
    storage.PartFile.finish = unchecked


def _identity() -> None:
    from dlman.request import Requester
    real = Requester.headers

    def as_asked(self, url, extra):  # type: ignore[no-untyped-def]
        headers = real(self, url, extra)
        for name, value in self.mirrors.user_headers:
            if name.lower() == "accept-encoding":
                headers["Accept-Encoding"] = value
        return headers
    Requester.headers = as_asked


def _weak_dates() -> None:
    from dlman import remote
    real = remote.read_validators

    def all_strong(headers):  # type: ignore[no-untyped-def]
        found = real(headers)
        return remote.Validators(found.etag, found.last_modified, found.last_modified is not None)
    remote.read_validators = all_strong


def _fsync_before_state() -> None:
    from dlman import storage

    async def state_only(self, state):  # type: ignore[no-untyped-def]
        await storage._save_state(self.state_file, state.encode())
    storage.PartFile.save_state = state_only


def _meaningful_progress() -> None:
    from dlman import transfer
    transfer.MEANINGFUL_PROGRESS = 1


def _stoppable_digest() -> None:
    from dlman import storage, transfer

    async def to_the_end(function):  # type: ignore[no-untyped-def]
        import asyncio
        import threading
        future = asyncio.get_running_loop().run_in_executor(None, lambda: function(stop=threading.Event()))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            await asyncio.wait([future])  # a cancel waits for the whole digest
            raise
    storage.stoppable = to_the_end
    transfer.stoppable = to_the_end


def _h2_reset() -> None:
    from dlman import transport
    transport.cancelling_http2_available = lambda: False


def _server_digest() -> None:
    from dlman import transfer
    transfer.strongest = lambda found: None


def _publish_by_name() -> None:
    from dlman import storage
    storage._link_open_file = lambda fd, part, target: storage.os.link(part, target, follow_symlinks=False)


def _uninformative_probe() -> None:
    from dlman import transfer
    transfer.informative = lambda data: len(data) > 0


def _trust_unconfirmed_206() -> None:
    from dlman import remote, transfer
    from dlman.remote import RangeAsk

    def no_if_range_check(answer, ask, remote_file, known):  # type: ignore[no-untyped-def]
        return real(answer, RangeAsk(ask.start, ask.end, None, ask.data_from), remote_file, known) \
            if answer.status == 206 else real(answer, ask, remote_file, known)
    real = remote.judge_range
    transfer.judge_range = no_if_range_check


def _interruptible_cleanup() -> None:
    from dlman import storage, transfer

    async def plain(coroutine):  # type: ignore[no-untyped-def]
        return await coroutine
    transfer.uninterrupted = plain
    storage.uninterrupted = plain


def _save_retry() -> None:
    from dlman import saver
    saver.SAVE_FAILURES = 1


def _cookie_host_only() -> None:
    from http.cookiejar import DefaultCookiePolicy

    from dlman.cookies import HostOnlyPolicy
    HostOnlyPolicy.return_ok_domain = DefaultCookiePolicy.return_ok_domain  # type: ignore[method-assign]


def _ca_stored() -> None:
    from dlman import cli
    cli._ca_from_environment = lambda: None


def _max_speed() -> None:
    from dlman.engine import Engine
    real = Engine.download

    async def unlimited(self, url, dest=".", **options):  # type: ignore[no-untyped-def]
        options.pop("max_speed", None)
        return await real(self, url, dest, **options)
    Engine.download = unlimited  # type: ignore[method-assign]


def _hook_no_shell() -> None:
    import subprocess

    from dlman import hooks

    class Shell:
        DEVNULL = subprocess.DEVNULL

        @staticmethod
        def run(argv, **kwargs):  # type: ignore[no-untyped-def]
            return subprocess.run(" ".join(argv), shell=True, **kwargs)
    hooks.subprocess = Shell  # type: ignore[assignment]


def _list_streams() -> None:
    from dlman.queue import Queue
    real = Queue.iter_jobs
    Queue.iter_jobs = lambda self, state=None: iter(list(real(self, state)))  # type: ignore[method-assign]


def _download_roots() -> None:
    from dlman.server import paths, service

    def anywhere(roots, directory, out):  # type: ignore[no-untyped-def]
        import os
        real = os.path.abspath(os.path.join(roots[0], directory or "."))
        return real, out
    paths.place = anywhere
    service.place = anywhere


def _rpc_token() -> None:
    from dlman.server import jsonrpc, security
    security.token_ok = lambda given, secret: True
    jsonrpc.token_ok = security.token_ok


def _web_origins() -> None:
    from dlman.server import security
    security.origin_allowed = lambda headers, allowed: True
    security.host_allowed = lambda host, loopback: True


def _auth_delay() -> None:
    from dlman.server import app

    async def at_once(self):  # type: ignore[no-untyped-def]
        return None
    app.Throttle.failed = at_once


def _live_owner() -> None:
    import dataclasses

    from dlman.queue import ownership
    real = ownership.owner_gone

    def by_heartbeat_only(owner, heartbeat, now, here, **options):  # type: ignore[no-untyped-def]
        return real(dataclasses.replace(owner, host=owner.host + "-elsewhere"), heartbeat, now, here, **options)
    ownership.owner_gone = by_heartbeat_only


def _owned_not_claimable() -> None:
    from dlman.queue import ownership
    ownership.CLAIM_NEXT = ownership.CLAIM_NEXT.replace(" AND owner IS NULL", "")


def _database_thread() -> None:
    import asyncio
    import functools

    from dlman.queue.runner import Runner

    async def default_executor(self, method, *args, **kwargs):  # type: ignore[no-untyped-def]
        return await asyncio.get_running_loop().run_in_executor(None, functools.partial(method, *args, **kwargs))
    Runner._db = default_executor


def _encoding_kept() -> None:
    import dataclasses

    from dlman.state import ResumeState
    real = ResumeState.encode
    ResumeState.encode = lambda self: real(dataclasses.replace(self, encoding=None))  # type: ignore[method-assign]


def _stays_done() -> None:
    from dlman.queue import store
    store.stays_done = lambda total_bytes, old, new, size_on_disk: False


E = "tests/test_engine.py::"
N = "tests/test_never_wrong.py::"
H = "tests/test_proof_hostile.py::"

CATALOGUE: tuple[Sabotage, ...] = (
    Sabotage("takeover", "a finished connection takes over half of the largest remaining part", _takeover,
             (E + "test_finished_connection_takes_over_half_of_the_slow_one",)),
    Sabotage("if-range", "resumed requests carry If-Range", _if_range,
             (E + "test_resume_with_strong_etag_sends_if_range_and_fetches_only_the_rest",
              E + "test_resume_uses_last_modified_when_there_is_no_etag")),
    Sabotage("range-check", "every 206 is checked (start, total, lengths, encoding) before a byte is written",
             _range_check,
             (E + "test_wrong_content_range_never_writes_at_a_wrong_offset",
              N + "test_a_206_longer_than_its_content_range_is_never_written_past_it",
              H + "test_gzip_appearing_on_a_later_range_never_mixes_representations")),
    Sabotage("validators", "a 206 whose validators differ from the recorded ones means the file changed",
             _validators,
             (N + "test_a_206_with_another_etag_is_a_change_even_when_if_range_is_ignored",
              N + "test_a_206_with_another_etag_is_a_change_even_when_the_overlap_matches")),
    Sabotage("flush-by-age", "what arrived reaches the disk by age and before every save", _flush_by_age,
             (E + "test_state_is_saved_at_least_every_second",
              N + "test_a_slow_connection_reaches_the_disk_and_the_state_within_a_second_or_two")),
    Sabotage("destination-lock", "one transfer per destination, across processes", _destination_lock,
             (N + "test_two_downloads_of_one_destination_never_mix",
              N + "test_a_destination_locked_by_another_process_is_busy")),
    Sabotage("no-clobber", "publishing never replaces a destination that appeared meanwhile", _no_clobber,
             (N + "test_a_destination_that_appears_meanwhile_is_not_clobbered",)),
    Sabotage("nofollow", "no symlink planted at NAME.part or its state files is followed", _nofollow,
             (N + "test_a_planted_symlink_is_never_followed",
              N + "test_a_planted_state_symlink_is_ignored_and_never_written_through")),
    Sabotage("overlap", "without validators, bytes on disk prove a source (overlap and probe)", _overlap,
             (E + "test_resume_without_validators_checks_the_overlap",
              N + "test_a_new_mirror_must_serve_the_bytes_on_disk_before_it_is_used",
              N + "test_a_resume_with_a_weak_date_proves_the_overlap_instead")),
    Sabotage("fallback", "a 200 to a later range falls back to one stream", _fallback,
             (E + "test_200_to_a_later_range_falls_back_to_one_stream",)),
    Sabotage("retire", "a connection that gives up hands its work to the others", _retire,
             (N + "test_a_connection_out_of_retries_hands_back_its_work",)),
    Sabotage("give-back", "a refused takeover goes back to the connection still streaming its range",
             _give_back, ("tests/test_presigned.py::test_running_connections_finish_after_the_url_expired",)),
    Sabotage("reprove-after-refollow", "a redirect followed again must lead to a server that proves itself",
             _reprove_after_refollow,
             (N + "test_a_redirect_followed_again_to_another_server_must_prove_it_serves_the_same_file",)),
    Sabotage("credentials-origin", "credential headers go only to their own origin", _credentials_origin,
             (N + "test_credentials_go_only_to_the_origin_they_were_given_for",)),
    Sabotage("pinning", "a redirect's final URL is pinned for the attempt", _pinning,
             (N + "test_a_redirector_that_picks_another_mirror_each_time_serves_one_download",)),
    Sabotage("watchdog", "a trickle under the read timeout is a stall", _watchdog,
             (H + "test_a_trickled_body_is_a_stall_and_the_engine_gives_up",
              N + "test_a_trickled_overlap_is_a_stall")),
    Sabotage("checksum", "a checksum mismatch fails the job and deletes the data", _checksum,
             (E + "test_checksum_mismatch_raises_and_deletes_the_bad_data",)),
    Sabotage("identity", "every request asks for identity, whatever the user's headers", _identity,
             (N + "test_identity_is_asked_for_whatever_the_user_headers_say",)),
    Sabotage("weak-dates", "a Last-Modified within a second of Date is no If-Range validator", _weak_dates,
             (N + "test_a_freshly_modified_file_on_apache_downloads",)),
    Sabotage("fsync-before-state", "a state never claims bytes that were not fsynced", _fsync_before_state,
             ("tests/test_proof_powercut.py::"
              "test_every_saved_state_claims_only_fsynced_bytes_and_resumes_from_a_power_cut_image",)),
    Sabotage("meaningful-progress", "only a meaningful amount of progress resets the retries",
             _meaningful_progress, (N + "test_progress_means_a_meaningful_amount",)),
    Sabotage("stoppable-digest", "a cancel during verification stops the digest", _stoppable_digest,
             (N + "test_cancel_during_checksum_verification_is_prompt",)),
    Sabotage("h2-reset", "an HTTP/2 stream cut short is reset and its window given back", _h2_reset,
             ("tests/test_http2.py::test_segmented_h2_download_resets_the_streams_it_cuts",
              "tests/test_transport.py::test_http2_response_closed_early_resets_its_stream")),
    Sabotage("server-digest", "the server's digest of the file is verified when no checksum is given",
             _server_digest,
             ("tests/test_digests.py::test_a_server_digest_that_does_not_match_fails_and_deletes_the_data",
              "tests/test_digests.py::test_the_digest_is_kept_for_the_resume")),
    Sabotage("publish-by-fd", "the file published is the locked, verified one, not whatever NAME.part names",
             _publish_by_name,
             ("tests/test_hostile_edges.py::test_a_file_renamed_over_the_part_file_is_never_published",)),
    Sabotage("informative-probe", "a new source is proven by bytes that can tell two files apart",
             _uninformative_probe,
             ("tests/test_hostile_edges.py::test_a_mirror_is_proven_by_bytes_that_can_tell_the_files_apart",)),
    Sabotage("if-range-confirmed", "a 206 to If-Range must carry the validator, else the bytes prove it",
             _trust_unconfirmed_206,
             ("tests/test_hostile_edges.py::test_a_206_without_validators_to_an_if_range_request_is_not_trusted",)),
    Sabotage("uninterrupted-cleanup", "cleanup, the last save and publishing finish under repeated cancels",
             _interruptible_cleanup,
             ("tests/test_hostile_edges.py::test_a_download_cancelled_by_an_anyio_cancel_scope_leaves_no_task_behind",
              "tests/test_hostile_edges.py::test_a_cancel_while_publishing_leaves_no_stray_state",
              "tests/test_hostile_edges.py::test_a_download_cancelled_as_it_starts_releases_its_destination")),
    Sabotage("save-retry", "a failed state save is retried, not fatal", _save_retry,
             (N + "test_a_failed_save_is_retried_and_later_saves_go_on",)),
    Sabotage("cookie-host-only", "a host-only cookie goes to exactly its own host", _cookie_host_only,
             ("tests/test_cookies.py::test_a_host_only_cookie_goes_to_exactly_its_host",
              "tests/test_cookies.py::test_cookies_from_a_file_go_to_their_own_host_only")),
    Sabotage("ca-stored", "the CA bundle in force at add is stored with the job", _ca_stored,
             ("tests/test_cli_jobs.py::test_ssl_cert_file_at_add_later_is_used_by_a_later_run",)),
    Sabotage("max-speed", "--max-speed limits its own download", _max_speed,
             ("tests/test_cli_jobs.py::test_max_speed_limits_its_own_download_only",)),
    Sabotage("hook-no-shell", "hooks run without a shell", _hook_no_shell,
             ("tests/test_hooks.py::test_hooks_get_the_job_and_never_a_shell",)),
    Sabotage("list-streams", "a listing is written as it is read", _list_streams,
             ("tests/test_cli_output.py::test_the_listing_is_written_as_it_is_read",
              "tests/test_cli_output.py::test_a_listing_of_100000_jobs_starts_within_a_second")),
    Sabotage("download-roots", "dir and out from the network stay inside the download roots, symlinks included",
             _download_roots,
             ("tests/test_server.py::test_download_roots_symlinks_and_no_overwrite",
              "tests/test_server_units.py::test_download_roots")),
    Sabotage("rpc-token", "every aria2 call but system.list* carries the secret token", _rpc_token,
             ("tests/test_server.py::test_token_right_wrong_missing_and_in_multicall",
              "tests/test_server_units.py::test_dispatcher_token_rules")),
    Sabotage("web-origins", "requests from foreign web origins and rebinding host names are refused", _web_origins,
             ("tests/test_server.py::test_cors_preflight_origins_and_hosts",)),
    Sabotage("auth-delay", "a refused token is answered late, one at a time", _auth_delay,
             ("tests/test_server.py::test_token_right_wrong_missing_and_in_multicall",)),
    Sabotage("live-owner", "a live owner keeps its jobs however old its heartbeat", _live_owner,
             ("tests/test_queue.py::test_live_owner_keeps_its_job_however_old_its_heartbeat",
              "tests/test_cli_process.py::test_a_stopped_runner_keeps_its_job")),
    Sabotage("owned-not-claimable", "a queued row still owned by a live runner is nobody else's",
             _owned_not_claimable,
             ("tests/test_queue.py::test_paused_then_resumed_row_stays_with_its_owner",
              "tests/test_queue.py::test_adding_a_paused_owned_job_again_leaves_it_with_its_owner")),
    Sabotage("database-thread", "the runner's database calls have a thread of their own", _database_thread,
             ("tests/test_queue.py::test_heartbeats_do_not_wait_behind_busy_disk_threads",)),
    Sabotage("encoding-kept", "the resume state keeps the encoding the bytes were served in",
             _encoding_kept,
             ("tests/test_hostile_edges.py::"
              "test_a_resume_from_a_server_that_encodes_every_answer_keeps_its_progress",)),
    Sabotage("stays-done", "a done job added again stays done while its file is whole", _stays_done,
             ("tests/test_queue.py::test_done_job_with_its_file_stays_done_when_added_again",
              "tests/test_cli_process.py::test_same_manifest_twice_downloads_nothing_even_without_a_size")),
)


def by_name(name: str) -> Sabotage:
    for sabotage in CATALOGUE:
        if sabotage.name == name:
            return sabotage
    raise KeyError(name)


def apply_from_environment() -> None:
    """Switch off the mechanism named in ``DLMAN_SABOTAGE`` (nothing when it is unset)."""
    name = os.environ.get(ENV)
    if name:
        by_name(name).switch_off()
