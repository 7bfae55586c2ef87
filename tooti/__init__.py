"""tooti: a peer-to-peer LLM inference network behind an OpenAI-compatible gateway."""

__version__ = "0.1.0"
