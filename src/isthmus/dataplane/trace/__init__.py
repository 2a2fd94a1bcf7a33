"""The trace driver: packets walked through the compiled state; the reachability matrix."""

from isthmus.dataplane.trace.walk import Hop, Source, Trace, Tracer

__all__ = ["Hop", "Source", "Trace", "Tracer"]
