"""Hearth: an on-premise LLM appliance runtime.

Hearth serves quantized GGUF models to on-site applications over gRPC (and
an OpenAI-compatible HTTP API), keeps every artifact sealed on disk, and
fine-tunes adapters across sites by federated learning.  The parts, from the
bottom up (each imports only the ones before it; ARCHITECTURE.md has the
list that tests/test_layers.py checks):

  errors, exit_codes  the exception families every layer raises; exit codes
  names        identifier checks (models, tokens, sites, ids): InvalidArgument
  events       the in-process event bus (RequestFinished, ModelStateChanged)
  config       hearth.toml, validated with errors that name the bad key
  native/      cffi binding of libhearth_core, the C engine: one engine per
               loaded model batches every running request into one
               llama_decode per step; Python never runs per token
  engine/      EngineSession: a native engine as asyncio streams
  storage/     the sealed store: encrypted objects, catalog, keys, audit log
  models/      GGUF checks and ModelManager (load, unload, state, adapters)
  auth/        who is calling (token, client certificate, unix socket uid)
               and what they may use
  core/        transport-neutral InferenceService: validate, tokenize, run
  server/      the gRPC face (hearth.v1, KServe v2, health); http/ the
               OpenAI-compatible face over the same core
  federation/  federated fine-tuning: coordinator, sites, transports
  daemon       composes the parts and runs the daemon's life (reload,
               systemd watchdog, signals)
  doctor, bundle/, client  installation checks, offline bundles, the Python
               client (runtime.client.HearthClient)
  cli/         the `hearth` command

Start a server with `hearth serve --model NAME=PATH`, talk to it with
`hearth generate "..."`, or from Python with runtime.client.HearthClient.
"""

__version__ = "0.1.0"
