"""The aria2 methods, each over the service, with aria2's parameters, results and error texts."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from dlman import __version__
from dlman.errors import InvalidInputError
from dlman.options import check_url, parse_rate
from dlman.server import aria2
from dlman.server.aria2 import Aria2Error, View
from dlman.server.service import Service

log = logging.getLogger("dlman.server")

Method = Callable[[list[Any]], Awaitable[Any]]


def arg(params: list[Any], index: int, kind: type | tuple[type, ...], required: bool = True) -> Any:
    """Parameter ``index`` of type ``kind`` (aria2's messages for a missing or mistyped one)."""
    if index >= len(params) or params[index] is None:
        if required:
            raise Aria2Error(f"The parameter at {index} is required but missing.")
        return None
    value = params[index]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise Aria2Error(f"The parameter at {index} has wrong type.")
    return value


def keys_arg(params: list[Any], index: int) -> list[str] | None:
    keys = arg(params, index, list, required=False)
    return [k for k in keys if isinstance(k, str)] if keys else None


class Aria2Methods:
    """``call(method, params)`` for the JSON-RPC dispatcher (the token is already checked)."""

    def __init__(self, service: Service, shutdown: Callable[[], None]) -> None:
        self.service = service
        self.shutdown_daemon = shutdown
        self.table: dict[str, Method] = {
            "aria2.addUri": self.add_uri,
            "aria2.remove": self.remove, "aria2.forceRemove": self.remove,
            "aria2.pause": self.pause, "aria2.forcePause": self.pause,
            "aria2.pauseAll": self.pause_all, "aria2.forcePauseAll": self.pause_all,
            "aria2.unpause": self.unpause, "aria2.unpauseAll": self.unpause_all,
            "aria2.changePosition": self.change_position,
            "aria2.tellStatus": self.tell_status, "aria2.getUris": self.get_uris, "aria2.getFiles": self.get_files,
            "aria2.getServers": self.get_servers, "aria2.tellActive": self.tell_active,
            "aria2.tellWaiting": self.tell_waiting, "aria2.tellStopped": self.tell_stopped,
            "aria2.getOption": self.get_option, "aria2.changeUri": self.change_uri,
            "aria2.changeOption": self.change_option, "aria2.getGlobalOption": self.get_global_option,
            "aria2.changeGlobalOption": self.change_global_option,
            "aria2.purgeDownloadResult": self.purge, "aria2.removeDownloadResult": self.remove_result,
            "aria2.getVersion": self.get_version, "aria2.getSessionInfo": self.get_session_info,
            "aria2.shutdown": self.shutdown, "aria2.forceShutdown": self.shutdown,
            "aria2.getGlobalStat": self.get_global_stat, "aria2.saveSession": self.save_session,
            "system.listMethods": self.list_methods, "system.listNotifications": self.list_notifications,
        }

    async def __call__(self, method: str, params: list[Any]) -> Any:
        if method in aria2.UNSUPPORTED:
            raise Aria2Error(aria2.UNSUPPORTED[method])
        return await self.table[method](params)

    async def _view(self, params: list[Any], index: int = 0) -> View:
        gid = arg(params, index, str)
        view = await self.service.find(aria2.from_gid(gid))
        if view is None:
            raise Aria2Error(f"No such download for GID#{gid}")
        return view

    # -- adding --------------------------------------------------------------------------------------

    async def add_uri(self, params: list[Any]) -> str:
        uris = [u for u in arg(params, 0, list) if isinstance(u, str)]
        options = arg(params, 1, dict, required=False) or {}
        position = arg(params, 2, int, required=False)
        if position is not None and position < 0:
            raise Aria2Error("Position must be greater than or equal to 0.")
        if not uris:
            raise Aria2Error("URI is not provided.")
        for uri in uris:
            if not uri.lower().startswith(("http://", "https://")):
                raise Aria2Error(f"Only HTTP(S) URIs are supported, not {uri.split(':', 1)[0]}:")
            check_url(uri)
        request = aria2.request_from(options, len(uris))
        new = self.service.plan(uris, request.directory, request.out, request.options)
        job = (await self.service.add([new], position))[0]
        return aria2.to_gid(job.id)

    # -- reading --------------------------------------------------------------------------------------

    async def tell_status(self, params: list[Any]) -> dict[str, Any]:
        view = await self._view(params)
        return aria2.status_entry(view, keys_arg(params, 1))

    async def tell_active(self, params: list[Any]) -> list[dict[str, Any]]:
        keys = keys_arg(params, 0)
        return [aria2.status_entry(v, keys) for v in await self.service.views(["active"])]

    async def tell_waiting(self, params: list[Any]) -> list[dict[str, Any]]:
        return await self._tell_page(params, self.service.waiting)

    async def tell_stopped(self, params: list[Any]) -> list[dict[str, Any]]:
        return await self._tell_page(params, self.service.stopped)

    async def _tell_page(self, params: list[Any],
                         views: Callable[[], Awaitable[list[View]]]) -> list[dict[str, Any]]:
        """tellWaiting/tellStopped: ``offset``, ``num`` and ``keys`` over one list of downloads."""
        offset, num, keys = arg(params, 0, int), arg(params, 1, int), keys_arg(params, 2)
        if num < 0:
            raise Aria2Error("The parameter at 1 must be greater than or equal to 0.")
        return [aria2.status_entry(v, keys) for v in aria2.page(await views(), offset, num)]

    async def get_files(self, params: list[Any]) -> list[dict[str, Any]]:
        return aria2.files_entry(await self._view(params))

    async def get_uris(self, params: list[Any]) -> list[dict[str, str]]:
        return aria2.uris_entry(await self._view(params))

    async def get_servers(self, params: list[Any]) -> list[dict[str, Any]]:
        view = await self._view(params)
        if view.status != "active":
            raise Aria2Error(f"No active download for GID#{view.gid}")
        return aria2.servers_entry(view)

    async def get_option(self, params: list[Any]) -> dict[str, str]:
        return aria2.options_of(await self._view(params), self.service.config.allow_overwrite)

    async def get_global_stat(self, params: list[Any]) -> dict[str, str]:
        stat = await self.service.global_stat()
        stat["uploadSpeed"] = 0
        return {key: str(value) for key, value in stat.items()}

    async def get_version(self, params: list[Any]) -> dict[str, Any]:
        return {"version": aria2.VERSION, "enabledFeatures": ["HTTPS", "Message Digest"], "dlman": __version__}

    async def get_session_info(self, params: list[Any]) -> dict[str, str]:
        return {"sessionId": self.service.session_id}

    async def get_global_option(self, params: list[Any]) -> dict[str, str]:
        config, service = self.service.config, self.service
        return {
            "dir": config.roots[0],
            "max-concurrent-downloads": str(service.jobs),
            "max-overall-download-limit": str(service.limit_rate or 0),
            "split": "8", "max-connection-per-server": "8",
            "allow-overwrite": "true" if config.allow_overwrite else "false",
            "continue": "true",
            "rpc-listen-port": str(config.listen.port),
            "rpc-listen-all": "false" if config.listen.loopback else "true",
            "rpc-allow-origin-all": "true" if "*" in config.origins else "false",
            "rpc-max-request-size": str(config.max_request),
        }

    async def list_methods(self, params: list[Any]) -> list[str]:
        return list(aria2.METHODS)

    async def list_notifications(self, params: list[Any]) -> list[str]:
        return list(aria2.NOTIFICATIONS)

    # -- changing -------------------------------------------------------------------------------------

    async def pause(self, params: list[Any]) -> str:
        view = await self._view(params)
        if view.status not in ("active", "waiting"):
            raise Aria2Error(f"GID#{view.gid} cannot be paused now")
        await self.service.pause([view.job_id])
        return view.gid

    async def pause_all(self, params: list[Any]) -> str:
        views = await self.service.views(["active", "queued"])
        await self.service.pause(v.job_id for v in views)
        return "OK"

    async def unpause(self, params: list[Any]) -> str:
        view = await self._view(params)
        if view.status != "paused":
            raise Aria2Error(f"GID#{view.gid} cannot be unpaused now")
        await self.service.resume([view.job_id])
        return view.gid

    async def unpause_all(self, params: list[Any]) -> str:
        await self.service.resume(v.job_id for v in await self.service.views(["paused"]))
        return "OK"

    async def remove(self, params: list[Any]) -> str:
        view = await self._view(params)
        if view.status not in ("active", "waiting", "paused"):
            raise Aria2Error(f"Active Download not found for GID#{view.gid}")
        await self.service.remove([view.job_id])
        return view.gid

    async def remove_result(self, params: list[Any]) -> str:
        view = await self._view(params)
        if view.status not in ("complete", "error", "removed"):
            raise Aria2Error(f"Could not remove download result of GID#{view.gid}")
        await self.service.forget([view.job_id])
        return "OK"

    async def purge(self, params: list[Any]) -> str:
        stopped = await self.service.stopped()
        await self.service.forget(v.job_id for v in stopped)
        return "OK"

    async def change_position(self, params: list[Any]) -> int:
        view = await self._view(params)
        pos, how = arg(params, 1, int), aria2.move_of(arg(params, 2, str))
        if view.status not in ("waiting", "paused"):
            raise Aria2Error(f"GID#{view.gid} not found in the waiting queue.")
        try:
            return await self.service.move(view.job_id, pos, how)
        except InvalidInputError:  # started (or removed) since it was looked at
            raise Aria2Error(f"GID#{view.gid} not found in the waiting queue.") from None

    async def change_uri(self, params: list[Any]) -> list[int]:
        view = await self._view(params)
        index = arg(params, 1, int)
        deleted = [u for u in arg(params, 2, list) if isinstance(u, str)]
        added = [u for u in arg(params, 3, list) if isinstance(u, str)]
        position = arg(params, 4, int, required=False)
        if index != 1:
            raise Aria2Error("fileIndex is out of range")
        if view.status not in ("active", "waiting", "paused"):
            raise Aria2Error(f"Cannot remove URIs from GID#{view.gid}")
        urls = list(view.urls)
        removed = 0
        for uri in deleted:
            if uri in urls:
                urls.remove(uri)
                removed += 1
        fresh = [check_url(u) for u in added if u not in urls]
        at = len(urls) if position is None else min(max(position, 0), len(urls))
        urls[at:at] = fresh
        if not urls:
            raise Aria2Error("No URI to download.")
        if urls != list(view.urls):
            job = await self.service.db(self.service.queue.get, view.job_id)
            if job is None:
                raise Aria2Error(f"Cannot remove URIs from GID#{view.gid}")
            await self.service.reask(job, urls, dict(job.options))
        return [removed, len(fresh)]

    async def change_option(self, params: list[Any]) -> str:
        view = await self._view(params)
        options = arg(params, 1, dict)
        if view.status not in ("active", "waiting", "paused"):
            raise Aria2Error(f"Cannot change option for GID#{view.gid}")
        request = aria2.request_from(options, len(view.urls))
        if request.options.get("overwrite") and not self.service.config.allow_overwrite:
            raise InvalidInputError("overwriting existing files is refused: the daemon was not started with "
                                    "--allow-overwrite")
        job = await self.service.db(self.service.queue.get, view.job_id)
        if job is None:
            raise Aria2Error(f"Cannot change option for GID#{view.gid}")
        merged = dict(job.options)
        merged.update(request.options)
        if merged != dict(job.options):
            await self.service.reask(job, list(job.urls), merged)
        return "OK"

    async def change_global_option(self, params: list[Any]) -> str:
        options = arg(params, 0, dict)
        jobs = options.get("max-concurrent-downloads")
        limit = options.get("max-overall-download-limit")
        new_jobs = None
        if jobs is not None:
            try:
                new_jobs = int(str(jobs))
            except ValueError:
                raise Aria2Error(f"max-concurrent-downloads must be a whole number, got {jobs!r}") from None
            if new_jobs < 1:
                raise Aria2Error("max-concurrent-downloads must be at least 1")
        new_limit = None
        if limit is not None:
            new_limit = 0 if str(limit).strip() in ("0", "") else parse_rate(str(limit))
        self.service.reconfigure(new_jobs, new_limit)
        return "OK"

    async def save_session(self, params: list[Any]) -> str:
        return "OK"  # the queue is saved as it changes

    async def shutdown(self, params: list[Any]) -> str:
        asyncio.get_running_loop().call_later(0.2, self.shutdown_daemon)
        return "OK"
