"""Hearth: an on-premise LLM appliance runtime.

Hearth serves quantized GGUF models to on-site applications over gRPC.  The
parts, from the bottom up:

  native/    cffi binding of libhearth_core, the C engine.  One engine per
             loaded model owns a llama.cpp context and a thread that batches
             every running request into one llama_decode per step.  Python
             never runs per token: it is woken through an eventfd and takes
             whatever text the engine produced since it last looked.
  engine/    the asyncio side of that: EngineSession turns a native engine
             into async streams; typed dataclasses for requests and output.
  models/    model files: GGUF header checks, the default model, the tiny
             test model, and ModelManager (load, unload, state, health).
  core/      transport-neutral services: InferenceService validates and runs
             generate/chat/embed/tokenize; events fan out what happened.
  server/    gRPC: thin servicers, explicit proto<->core converters, and one
             table mapping exception families to status codes.
  cli/       the `hearth` command: `serve` plus client subcommands.
  config     hearth.toml, validated with errors that name the bad key.
  errors     the exception families every layer raises.

Start a server with `hearth serve --model NAME=PATH`, talk to it with
`hearth generate "..."`, or from Python with runtime.client.HearthClient.
"""

__version__ = "0.1.0"
