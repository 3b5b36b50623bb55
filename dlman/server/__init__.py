"""``dlman serve``: a daemon over the queue that aria2's clients can drive, with its own web page.

Where each rule lives:

* ``config.py``: what the command line asked for, and the rules about exposure (loopback by
  default, a secret before anything else);
* ``security.py``: the token, the hosts and origins a request may come from, CORS;
* ``paths.py``: where a download from the network may be written (inside the download roots);
* ``aria2.py``: aria2's vocabulary: GIDs, status names, result shapes, options, error codes;
* ``jsonrpc.py``: JSON-RPC 2.0 as aria2 speaks it: requests, batches, GET with base64, errors;
* ``methods.py``: the aria2 methods over the service;
* ``service.py``: the queue run for ever, live progress and speed, events for listeners;
* ``rest.py`` and ``openapi.py``: dlman's own API and its description;
* ``app.py``: the ASGI application tying them to HTTP and WebSocket;
* ``command.py``: the ``serve`` click command, which imports none of the web stack until it runs.

Nothing here is imported by ``import dlman``: the web stack is the ``server`` extra.
"""
