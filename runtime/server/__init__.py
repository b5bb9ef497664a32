"""The gRPC face of Hearth.

  app.py         create_server(): the grpc.aio server with every service,
                 message limits, health and reflection; serve() runs it.
  registry.py    registers a servicer from its proto service descriptor,
                 with the request decoding and error mapping every method
                 shares (so servicers contain no try/except boilerplate).
  status.py      the one table from exception family to gRPC status.
  converters.py  protobuf <-> core types, both directions, explicitly.
  servicers.py   hearth.v1.Inference and hearth.v1.Models: thin adapters
                 over runtime.core and runtime.models.
  health.py      grpc.health.v1 statuses that follow model state events.
"""
from runtime.server.app import HearthServer, create_server

__all__ = ["HearthServer", "create_server"]
