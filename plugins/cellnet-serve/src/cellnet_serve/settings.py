"""What ``cellnet serve`` is configured with (command-line options map one to one onto these fields)."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field

from cellnet_core.errors import ConfigError
from cellnet_core.conversations import ConversationSettings

#: the environment variable read when ``--api-key`` is not given
API_KEY_ENV = "CELLNET_API_KEY"


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (``127.0.0.0/8``, ``::1``)."""
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServeSettings:
    """Limits and switches of the service.

    Batching: a batch closes when it holds ``max_batch`` texts or ``max_wait_ms`` after its first
    request arrived; at most ``max_queue`` requests wait for a batch (more get 503 with
    ``Retry-After``). ``timeout`` (seconds) bounds one request's wait for its answer (504 after).
    Sizes (413 beyond): ``max_body_bytes`` per request body, ``max_texts`` texts or embeddings per
    request, ``max_chars`` characters per text, ``max_k`` candidates. ``api_key``: when set, every
    request but the chat page and the API documentation must carry it. ``cache_embeddings``: keep
    the questions' teacher embeddings in the on-disk embedding cache (off: a server meets an
    unbounded stream of new texts, which would grow the cache and the process without bound).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 256
    timeout: float = 30.0
    max_body_bytes: int = 64 * 1024
    max_texts: int = 64
    max_chars: int = 2000
    max_k: int = 50
    cache_embeddings: bool = False
    conversations: ConversationSettings = field(default_factory=ConversationSettings)

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_queue", "max_body_bytes", "max_texts", "max_chars", "max_k"):
            if getattr(self, name) < 1:
                raise ConfigError(f"serve: {name} must be at least 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise ConfigError(f"serve: max_wait_ms must be 0 or more, got {self.max_wait_ms}")
        if self.timeout <= 0:
            raise ConfigError(f"serve: timeout must be more than 0 seconds, got {self.timeout}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"serve: port must be between 0 and 65535, got {self.port}")
        if self.api_key is not None and not self.api_key.strip():
            raise ConfigError("serve: the API key is empty")
        if not is_loopback(self.host) and not self.api_key:
            raise ConfigError(f"serve: binding {self.host} (not a loopback address) needs an API key: give "
                              f"--api-key KEY or set {API_KEY_ENV}; or bind 127.0.0.1")


def api_key_from_env(given: str | None) -> str | None:
    """``given`` if set, else ``$CELLNET_API_KEY`` (``None`` when neither is)."""
    return given if given is not None else (os.environ.get(API_KEY_ENV) or None)
