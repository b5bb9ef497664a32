"""The OpenAI-compatible HTTP face of Hearth (off unless server.http_listen
or `hearth serve --http-listen HOST:PORT` is set).

It runs on the daemon's asyncio loop beside the gRPC server and adapts the
same transport-neutral InferenceService, with the same authentication
(bearer tokens), ACLs, limits and request log:

  app.py         HttpGateway: the aiohttp app, its routes (/v1/models,
                 /v1/completions, /v1/chat/completions, /v1/embeddings,
                 /health) and the middleware every request passes.
  converters.py  OpenAI request JSON -> core requests, strictly checked.
  fields.py      typed reads of JSON fields, errors naming the field.
  responses.py   core results -> OpenAI response and stream-chunk JSON.
  sse.py         one JSON reply or server-sent events; closes the core's
                 stream however the reply ends (that frees the slot).
  errors.py      exception family -> HTTP status and OpenAI error body:
                 the one table, beside server/status.py's gRPC one.
"""
from runtime.http.app import HttpGateway

__all__ = ["HttpGateway"]
