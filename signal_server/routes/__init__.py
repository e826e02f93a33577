"""The HTTP API (``/api/v1``) by resource: adapters between Starlette and :class:`Service`.

Each resource module lists its operations (:class:`~.common.Operation`: method, path,
security, request and response Structs, status, handler); ``signal_server.app``
assembles the Starlette routes and :mod:`.openapi` the OpenAPI document from those
same lists, so the two cannot drift. Shared pieces (authentication, error answers,
body decoding, the body limit) live in :mod:`.common`. Handlers hold no state: every
store call goes through the service, every change through ``Service.write``.
"""
