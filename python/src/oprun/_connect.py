"""How the SDK's worker and client reach a server: the channel for a target, and the
bearer token as call metadata."""

from __future__ import annotations

import grpc


def channel(target: str, root_certificates: bytes | None = None) -> grpc.aio.Channel:
    """An asyncio channel to ``target``: ``host:port`` or ``http://host:port`` (plain
    HTTP/2), or ``https://host:port`` (TLS, verified with ``root_certificates`` or the
    system's roots)."""
    options = [("grpc.keepalive_time_ms", 20_000)]
    if target.startswith("https://"):
        credentials = grpc.ssl_channel_credentials(root_certificates)
        return grpc.aio.secure_channel(target[len("https://") :], credentials, options)
    plain = target[len("http://") :] if target.startswith("http://") else target
    return grpc.aio.insecure_channel(plain, options)


def call_metadata(token: str | None) -> list[tuple[str, str]] | None:
    """The ``authorization`` metadata of a bearer token (``None`` without one)."""
    return [("authorization", f"Bearer {token}")] if token else None
