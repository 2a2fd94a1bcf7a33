"""Dataplane drivers of the compiled state: the trace driver (in memory) and the kernel driver."""
