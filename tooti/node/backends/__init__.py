"""Backend adapters: one module per kind of inference server, one contract (``base``)."""

from __future__ import annotations

import httpx

from .base import Backend, BackendError, Reply, Request, Usage

__all__ = ["Backend", "BackendError", "Reply", "Request", "Usage", "make_backend"]


def make_backend(
    kind: str, client: httpx.AsyncClient, *, base_url: str = "", api_key: str | None = None
) -> Backend:
    """The adapter for ``kind`` ("openai", "ollama" or "loopback") sharing ``client``."""
    if kind == "openai":
        from .openai import OpenAIBackend

        return OpenAIBackend(base_url, client, api_key=api_key)
    if kind == "ollama":
        from .ollama import OllamaBackend

        return OllamaBackend(base_url, client, api_key=api_key)
    if kind == "loopback":
        from .loopback import LoopbackBackend

        return LoopbackBackend()
    raise ValueError(f"unknown backend type {kind!r}")
