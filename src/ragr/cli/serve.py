"""``ragr serve``: a rerank and embedding HTTP service (Cohere, TEI/Jina and OpenAI-compatible APIs)."""

from __future__ import annotations

from typing import List, Optional

import typer

from ragr.cli.common import handle_errors

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def bind(host: str, port: int):
    """A listening socket on (host, port); port 0 picks a free port. A clear UserError if it is taken."""
    import socket

    from ragr.errors import UserError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UserError(f"--host {host}: cannot resolve ({exc.strerror})") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port") from None
    return sock


def register(app: typer.Typer) -> None:
    @app.command()
    @handle_errors
    def serve(
        model: List[str] = typer.Option(..., "--model", "-m", help="PATH, alias or hub id, or NAME=PATH (clients send NAME as 'model'); repeat to serve several."),
        host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0 exposes the service to the network)."),
        port: int = typer.Option(8080, "--port", min=0, max=65535, help="Port (0: any free port; the URL is printed)."),
        api_key: Optional[str] = typer.Option(None, "--api-key", envvar="RAGR_API_KEY", help="Require 'Authorization: Bearer KEY' (env RAGR_API_KEY)."),
        max_batch_tokens: int = typer.Option(16384, "--max-batch-tokens", min=1, help="Token budget of one forward pass, shared by concurrent requests."),
        batch_size: int = typer.Option(32, "--batch-size", min=1, help="Most pairs (or texts) in one forward pass; length-sorted, as in ragr rerank."),
        dtype: Optional[str] = typer.Option(None, "--dtype", help="fp32 (default), bf16 or fp16."),
        backend: Optional[str] = typer.Option(None, "--backend", help="torch or onnx (ONNX Runtime, a folder from `ragr export`); default: read from each folder."),
        device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: CUDA when available)."),
        max_length: Optional[int] = typer.Option(None, "--max-length", min=8, help="Input length in tokens (default: the model's)."),
        long_doc: str = typer.Option("truncate", "--long-doc", help="truncate | max-chunk (max over overlapping windows), as in ragr rerank."),
        overlap: int = typer.Option(32, "--overlap", min=0, help="Tokens shared by consecutive max-chunk windows."),
        max_documents: int = typer.Option(1000, "--max-documents", min=1, help="Most documents (or embedding inputs) in one request."),
        max_text_length: int = typer.Option(100_000, "--max-text-length", min=1, help="Most characters in one query, document or input."),
        max_request_bytes: int = typer.Option(8 * 1024 * 1024, "--max-request-bytes", min=1, help="Largest request body in bytes (larger: 413)."),
        max_queue: int = typer.Option(256, "--max-queue", min=1, help="Most requests waiting per model; past it a request is refused at once with 503 and Retry-After."),
        threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads per forward pass (torch.set_num_threads; default: torch's choice). 1 helps on a busy machine."),
        log_level: str = typer.Option("info", "--log-level", help="uvicorn log level: critical, error, warning, info (one line per request), debug."),
    ) -> None:
        """Serve rerankers and embedders over HTTP: Cohere /v2/rerank and /v1/rerank, TEI/Jina /rerank,
        OpenAI /v1/embeddings (embedders), GET /v1/models, /health, and the API page at /docs.

        Example: ragr serve --model reranker=runs/x/model --model minilm --port 8080
        """
        import sys

        from ragr.errors import UserError
        from ragr.infer.reranker import LONG_DOC

        try:
            import fastapi  # noqa: F401
            import uvicorn
        except ImportError as exc:
            raise UserError(f"ragr serve needs FastAPI and uvicorn ({exc.name} is not installed): install the 'serve' "
                            "extra of ragr, or pip install fastapi uvicorn") from None
        if long_doc not in LONG_DOC:
            raise UserError(f"--long-doc must be one of {', '.join(LONG_DOC)}, got '{long_doc}'")
        levels = ("critical", "error", "warning", "info", "debug", "trace")
        if log_level not in levels:
            raise UserError(f"--log-level must be one of {', '.join(levels)}, got '{log_level}'")

        from ragr.serve import ServeSettings, create_app, load_model
        from ragr.serve.models import parse_specs

        settings = ServeSettings(api_key=api_key, max_batch_tokens=max_batch_tokens, batch_size=batch_size,
                                 max_documents=max_documents, max_text_length=max_text_length,
                                 max_request_bytes=max_request_bytes, max_queue=max_queue)
        specs = parse_specs(model)
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        sock = bind(host, port)  # before the (slow) model loads: a taken port fails at once
        try:
            models = [load_model(name, source, device=device, dtype=dtype, max_length=max_length, long_doc=long_doc,
                                 overlap=overlap, batch_size=batch_size, backend=backend) for name, source in specs]
            app_ = create_app(models, settings)
            bound = sock.getsockname()[1]
            shown = f"[{host}]" if ":" in host else host
            for m in models:
                extra = " + /v1/embeddings" if m.can_embed else " + /embed_sparse" if m.can_embed_sparse else ""
                print(f"serving '{m.name}' ({m.family}{extra}) from {m.source}", file=sys.stderr)
            if host not in LOOPBACK and api_key is None:
                print(f"warning: listening on {host} without --api-key: anyone who can reach this port can use it", file=sys.stderr)
            print(f"ragr serve: http://{shown}:{bound} (API page: http://{shown}:{bound}/docs)", file=sys.stderr, flush=True)
            server = uvicorn.Server(uvicorn.Config(app_, log_level=log_level, timeout_graceful_shutdown=10))
            server.run(sockets=[sock])
        finally:
            sock.close()
