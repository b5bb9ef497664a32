"""The gRPC face of Hearth: services over the parts runtime/daemon.py builds.

  app.py         GrpcServer: one grpc.aio server with hearth.v1, KServe v2,
                 health and reflection; binds TCP, TLS and unix listeners
                 (those through the SO_PEERCRED front, auth/peercred.py)
  registry.py    registers a servicer from its proto service descriptor,
                 with the authentication, request decoding and error mapping
                 every method shares (servicers hold no try/except)
  status.py      the one table from exception family to gRPC status
  converters.py  protobuf <-> core types, both directions, explicitly
  servicers.py   hearth.v1.Inference and hearth.v1.Models: thin adapters
                 over runtime.core and runtime.models
  kserve/        KServe v2 / Triton GRPCInferenceService over the same core
  health.py      grpc.health.v1 statuses that follow model state events
  metrics.py     Prometheus exposition over events and engine statistics
                 (its own loopback HTTP listener)
"""
from runtime.server.app import GrpcServer

__all__ = ["GrpcServer"]
