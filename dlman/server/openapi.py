"""The OpenAPI 3.1 description of dlman's own REST API (served at ``/api/openapi.json``)."""

from __future__ import annotations

from typing import Any

from dlman import __version__


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}
_ERRORS = {"400": _json(_ref("Error"), "Invalid input"), "401": _json(_ref("Error"), "Missing or wrong secret"),
           "404": _json(_ref("Error"), "No such job")}

JOB = {
    "type": "object",
    "required": ["id", "gid", "url", "urls", "dest", "state", "bytes_done", "total_bytes", "error"],
    "properties": {
        "id": {"type": "integer"},
        "gid": {"type": "string", "pattern": "^[0-9a-f]{16}$", "description": "The job's aria2 GID"},
        "url": {"type": "string", "description": "The first URL, credentials masked"},
        "urls": {"type": "array", "items": {"type": "string"}},
        "dest": {"type": "string", "description": "Absolute path: a directory until the file name is known"},
        "path": {"type": ["string", "null"], "description": "The file, once its name is known"},
        "state": {"enum": ["queued", "active", "paused", "done", "failed"]},
        "bytes_done": {"type": "integer"},
        "total_bytes": {"type": ["integer", "null"]},
        "speed": {"type": "integer", "description": "Bytes per second over the last seconds"},
        "eta": {"type": ["number", "null"], "description": "Seconds left at the current speed"},
        "connections": {"type": "integer"},
        "error": {"type": ["string", "null"]},
        "options": {"type": "object"},
        "created": {"type": "number"},
        "updated": {"type": "number"},
    },
}

NEW_JOBS = {
    "type": "object",
    "description": "Either `urls` (one job: its mirrors) or `manifest` (aria2 input-file text: one job per entry)",
    "properties": {
        "urls": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "manifest": {"type": "string"},
        "dir": {"type": "string", "description": "Inside a download root; relative to the first one"},
        "out": {"type": "string", "description": "File name relative to dir (with urls only)"},
        "connections": {"type": "integer", "minimum": 1, "maximum": 64},
        "checksum": {"type": "string", "examples": ["sha256:9f86d081..."]},
        "headers": {"type": "array", "items": {"type": "string"}, "examples": [["Authorization: Bearer abc"]]},
        "overwrite": {"type": "boolean", "description": "Refused unless the daemon runs with --allow-overwrite"},
    },
}


def description() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "dlman", "version": __version__,
                 "description": "dlman's queue over HTTP. With a secret, send `Authorization: Bearer SECRET`. "
                                "aria2's JSON-RPC is served at /jsonrpc."},
        "components": {
            "securitySchemes": {"secret": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Job": JOB, "NewJobs": NEW_JOBS,
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
                "Jobs": {"type": "object", "required": ["jobs"],
                         "properties": {"jobs": {"type": "array", "items": _ref("Job")}}},
            },
        },
        "security": [{"secret": []}],
        "paths": {
            "/api/jobs": {
                "get": {"summary": "Every job, in id order", "operationId": "listJobs",
                        "responses": {"200": _json(_ref("Jobs"), "The jobs"), "401": _ERRORS["401"]}},
                "post": {"summary": "Add jobs; they start as soon as a slot is free", "operationId": "addJobs",
                         "requestBody": {"required": True,
                                         "content": {"application/json": {"schema": _ref("NewJobs")}}},
                         "responses": {"201": _json(_ref("Jobs"), "The jobs added (or asked for again)"),
                                       "400": _ERRORS["400"], "401": _ERRORS["401"],
                                       "413": _json(_ref("Error"), "The body is too large")}},
            },
            "/api/jobs/{id}": {
                "parameters": [_ID],
                "get": {"summary": "One job", "operationId": "getJob",
                        "responses": {"200": _json(_ref("Job"), "The job"), **_ERRORS}},
                "delete": {"summary": "Remove a job, stopping it if active", "operationId": "removeJob",
                           "parameters": [{"name": "delete", "in": "query", "schema": {"type": "boolean"},
                                           "description": "Also delete its partial data (never a finished file)"}],
                           "responses": {"204": {"description": "Removed"}, **_ERRORS}},
            },
            "/api/jobs/{id}/pause": {
                "parameters": [_ID],
                "post": {"summary": "Pause a queued or active job (an active one stops within a second or so)",
                         "operationId": "pauseJob", "responses": {"200": _json(_ref("Job"), "The job"), **_ERRORS}},
            },
            "/api/jobs/{id}/resume": {
                "parameters": [_ID],
                "post": {"summary": "Put a paused or failed job back in the queue", "operationId": "resumeJob",
                         "responses": {"200": _json(_ref("Job"), "The job"), **_ERRORS}},
            },
            "/api/events": {
                "get": {"summary": "Server-Sent Events: a `jobs` event with every job and the totals whenever "
                                   "anything changed (at most twice a second)",
                        "operationId": "events",
                        "responses": {"200": {"description": "An event stream",
                                              "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                                      "401": _ERRORS["401"]}},
            },
            "/api/info": {
                "get": {"summary": "Whether a secret is needed, and the version", "operationId": "info",
                        "security": [],
                        "responses": {"200": _json({"type": "object", "properties": {
                            "auth": {"type": "boolean"}, "version": {"type": "string"}}}, "About the daemon")}},
            },
        },
    }
