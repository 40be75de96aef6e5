"""Application-layer decoding for the decoder's fast path: see inspector.AppInspector."""

from services.decoder.app.inspector import AppInspector

__all__ = ["AppInspector"]
