"""KServe v2 / Triton gRPC front end (`inference.GRPCInferenceService`).

Lets stock Triton and KServe clients (tritonclient.grpc, among others) use
Hearth's models as text-generation models with the signature of Triton's LLM
backends: `text_input` in, `text_output` out, `stream` for decoupled
streaming, sampling settings as a `sampling_parameters` JSON input or as
request parameters.  The user-facing description is docs/protocols.md.

  tensors.py     the wire form of tensors (typed and raw contents)
  sampling.py    sampling settings -> core GenerationOptions (strict keys)
  requests.py    the model signature; ModelInferRequest -> InferCall
  responses.py   core chunks -> one or many ModelInferResponses
  converters.py  responses, metadata, config, repository index, statistics
  statistics.py  per-model counters from RequestFinished events
  servicer.py    the servicer: thin, registered through server/registry.py
"""
from runtime.server.kserve.servicer import KServeServicer

__all__ = ["KServeServicer"]
