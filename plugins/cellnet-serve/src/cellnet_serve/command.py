"""``cellnet serve RUN``: the arguments and what running the command does.

Cheap to import: FastAPI, uvicorn and torch are imported inside :func:`run`.
"""

from __future__ import annotations

import argparse
import socket
import sys

from cellnet_core.errors import ConfigError

HELP = "serve a trained run over HTTP: answers, conversations, a chat page, metrics"
DESCRIPTION = ("Serve a trained run over HTTP (FastAPI + uvicorn): POST /v1/answer, /v1/embed, /v1/think, "
               "/v1/decode; GET /healthz, /readyz, /metrics; the API documentation at /docs and a chat page "
               "at /. The run loads in the background (/readyz says when it is ready). Concurrent requests "
               "share one forward pass (--max-batch, --max-wait-ms). Binds 127.0.0.1 by default; binding any "
               "other address needs an API key (--api-key or $CELLNET_API_KEY), then checked on every request. "
               "SIGTERM or Ctrl-C finishes the requests in flight, then exits.")
EXAMPLES = ("  cellnet serve runs/demo\n"
            "  cellnet serve runs/demo --port 8080 --max-batch 64 --max-wait-ms 10\n"
            "  cellnet serve runs/demo --host 0.0.0.0 --api-key \"$(cat key.txt)\"\n"
            "  cellnet serve runs/demo --repeat-penalty 0.2 --conversation-idle 600")


def configure(p: argparse.ArgumentParser) -> None:
    """Add ``cellnet serve``'s arguments to its subparser."""
    from cellnet_core.conversations import ConversationSettings

    from cellnet_serve.settings import ServeSettings

    d, s = ServeSettings(), ConversationSettings()
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory made by 'cellnet train'")
    p.add_argument("--host", default=d.host, help=f"address to bind (default {d.host}; any non-loopback address "
                                                  f"needs --api-key)")
    p.add_argument("--port", type=int, default=d.port, help=f"port (default {d.port}; 0 picks a free one)")
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help="require this key on every request (Authorization: Bearer KEY or X-API-Key: KEY); "
                        "default $CELLNET_API_KEY")
    g = p.add_argument_group("batching and limits")
    g.add_argument("--max-batch", type=int, default=d.max_batch, metavar="N",
                   help=f"texts per forward pass at most (default {d.max_batch})")
    g.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms, metavar="MS",
                   help=f"how long a batch waits for more requests after its first (default {d.max_wait_ms:g})")
    g.add_argument("--max-queue", type=int, default=d.max_queue, metavar="N",
                   help=f"requests waiting at most; more get 503 with Retry-After (default {d.max_queue})")
    g.add_argument("--timeout", type=float, default=d.timeout, metavar="S",
                   help=f"seconds a request waits for its answer before 504 (default {d.timeout:g})")
    g.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes, metavar="N",
                   help=f"request body size limit, 413 beyond (default {d.max_body_bytes})")
    g.add_argument("--max-texts", type=int, default=d.max_texts, metavar="N",
                   help=f"questions, texts or embeddings per request, 413 beyond (default {d.max_texts})")
    g.add_argument("--cache-embeddings", action="store_true",
                   help="keep the questions' embeddings in the on-disk embedding cache (default off: a server's "
                        "stream of new texts would grow it without bound)")
    g = p.add_argument_group("conversations")
    g.add_argument("--conversation-turns", type=int, default=s.max_turns, metavar="N",
                   help=f"turns kept per conversation (default {s.max_turns})")
    g.add_argument("--repeat-penalty", type=float, default=s.penalty, metavar="W",
                   help=f"score taken off an answer the conversation got in its last --penalty-turns turns "
                        f"(default {s.penalty:g}; 0: off)")
    g.add_argument("--penalty-turns", type=int, default=s.penalty_turns, metavar="N",
                   help=f"how many recent answers are penalised (default {s.penalty_turns})")
    g.add_argument("--max-conversations", type=int, default=s.max_conversations, metavar="N",
                   help=f"conversations held at most; the least recently used goes first (default {s.max_conversations})")
    g.add_argument("--conversation-idle", type=float, default=s.idle_timeout, metavar="S",
                   help=f"seconds after its last turn a conversation is forgotten (default {s.idle_timeout:g})")
    p.add_argument("--device", default=None, help="run on this device instead of the run's own: cpu, cuda, auto")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="server log level (default info)")


def settings_from_args(args: argparse.Namespace):
    """The :class:`~cellnet_serve.settings.ServeSettings` the arguments describe (ConfigError when bad)."""
    from cellnet_core.conversations import ConversationSettings

    from cellnet_serve.settings import ServeSettings, api_key_from_env

    conversations = ConversationSettings(max_turns=args.conversation_turns, penalty=args.repeat_penalty,
                               penalty_turns=args.penalty_turns, max_conversations=args.max_conversations,
                               idle_timeout=args.conversation_idle)
    return ServeSettings(host=args.host, port=args.port, api_key=api_key_from_env(args.api_key),
                         max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                         timeout=args.timeout, max_body_bytes=args.max_body_bytes, max_texts=args.max_texts,
                         cache_embeddings=args.cache_embeddings, conversations=conversations)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``; ConfigError with one line when it cannot be had."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError(f"serve: cannot resolve --host {host}: {exc.strerror}") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"serve: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _server_class():
    """uvicorn's server, except that after SIGTERM or Ctrl-C (requests in flight answered, queue
    drained) it returns, so the command exits 0, instead of re-raising the signal."""
    import contextlib
    import signal
    import threading

    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    return Server


def run(args: argparse.Namespace) -> int:
    """Run the server until SIGTERM / Ctrl-C; 0 after a clean shutdown."""
    import logging

    from cellnet_core import api

    settings = settings_from_args(args)
    api.check_run_dir(args.run_dir)  # a missing or damaged run fails here, in one line, before binding
    import uvicorn

    from cellnet_serve.app import create_app
    from cellnet_serve.service import Service, run_loader

    logger = logging.getLogger("cellnet.serve")
    logger.setLevel(args.log_level.upper())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("cellnet serve: %(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    sock = bind(settings.host, settings.port)
    host, port = sock.getsockname()[:2]
    service = Service(run_loader(args.run_dir, args.device), settings, name=str(args.run_dir))
    app = create_app(service)
    shown = f"[{host}]" if ":" in str(host) else host
    print(f"serving {args.run_dir} at http://{shown}:{port}  (chat page /, API docs /docs; loading the run …)",
          file=sys.stderr, flush=True)
    note = api.untrained_warning(args.run_dir)
    if note:
        print(note, file=sys.stderr, flush=True)
    config = uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=int(settings.timeout) + 5,
                            access_log=args.log_level == "debug", lifespan="on")
    server = _server_class()(config)
    server.run(sockets=[sock])
    print("cellnet serve: stopped", file=sys.stderr, flush=True)
    if service.error:
        print(f"error: the run failed to load: {service.error}", file=sys.stderr)
        return 2
    return 0
