"""The asyncio side of a native engine.

`EngineSession` registers an engine's event fd with the event loop; when the
engine thread publishes output, one callback drains the ready list and wakes
exactly the streams that have something new.  Streams then take their output
(coalesced: under load one wake-up may carry several tokens) and yield it.
"""
from runtime.engine.session import EngineSession, RequestStream

__all__ = ["EngineSession", "RequestStream"]
