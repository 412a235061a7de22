"""Multi-device sync: the change feed (long-poll and SSE) and Yjs state over HTTP."""
