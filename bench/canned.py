"""A canned OpenAI-compatible server, so the overhead scenarios measure clients, not a server.

It answers ``POST .../chat/completions`` at once with a fixed completion (or, when the
body asks for ``"stream": true``, a fixed SSE stream), and ``GET .../models`` with one
model. It runs in its own process (``start_canned_server``), so it never competes with
the measured clients for the GIL, and is a bare asyncio protocol rather than an ASGI
app so its own cost per request stays in the tens of microseconds.

The stream length is chosen by the URL: a base URL ``http://host:port/n200/v1`` streams
200 content chunks, so every client (whatever headers it can set) can ask for it.

Counters for the concurrency scenario: ``GET /stats`` -> ``{"requests", "connections",
"open_connections", "body_bytes"}`` and ``POST /stats/reset``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DEFAULT_STREAM_CHUNKS = 20
_PREFIX = re.compile(r"^/n(\d+)(?=/)")
_USAGE = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
# Clients that check the model against ``/v1/models`` (llama-index-llms-nvidia) find it.
MODEL_IDS = (
    "nvidia/nemotron-nano-12b-v2-vl",
    "nvidia/llama-3.1-nemotron-nano-vl-8b-v1",
    "google/diffusiongemma-26b-a4b-it",
)
_MODELS = json.dumps(
    {
        "object": "list",
        "data": [{"id": m, "object": "model", "owned_by": "nvidia"} for m in MODEL_IDS],
    }
).encode()


def _completion(model: str) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-canned",
            "object": "chat.completion",
            "created": 1_760_000_000,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "A small blue square."},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": _USAGE,
        }
    ).encode()


def _chunk(model: str, delta: dict[str, object], finish: str | None) -> bytes:
    body = {
        "id": "chatcmpl-canned",
        "object": "chat.completion.chunk",
        "created": 1_760_000_000,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def _stream(model: str, chunks: int, include_usage: bool) -> bytes:
    parts = [_chunk(model, {"role": "assistant", "content": ""}, None)]
    parts += [_chunk(model, {"content": "tok "}, None) for _ in range(chunks)]
    parts.append(_chunk(model, {}, "stop"))
    if include_usage:
        usage = {
            "id": "chatcmpl-canned",
            "object": "chat.completion.chunk",
            "created": 1_760_000_000,
            "model": model,
            "choices": [],
            "usage": _USAGE,
        }
        parts.append(b"data: " + json.dumps(usage).encode() + b"\n\n")
    parts.append(b"data: [DONE]\n\n")
    return b"".join(parts)


class _Stats:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.connections = 0
        self.open_connections = 0
        self.body_bytes = 0

    def as_json(self) -> bytes:
        return json.dumps(
            {
                "requests": self.requests,
                "connections": self.connections,
                "open_connections": self.open_connections,
                "body_bytes": self.body_bytes,
            }
        ).encode()


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: parse requests from a buffer, answer each."""

    def __init__(self, stats: _Stats, cache: dict[tuple[str, int, bool], bytes]) -> None:
        self.stats = stats
        self.cache = cache
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.stats.connections += 1
        self.stats.open_connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.stats.open_connections -= 1

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self._answer_one():
            pass

    def _answer_one(self) -> bool:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(self.buffer[:end]).decode("latin-1")
        lines = head.split("\r\n")
        method, target = lines[0].split(" ")[:2]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        start = end + 4
        if "chunked" in headers.get("transfer-encoding", "").lower():
            decoded = _dechunk(self.buffer, start)
            if decoded is None:
                return False
            body, consumed = decoded
        else:
            length = int(headers.get("content-length", "0"))
            if len(self.buffer) < start + length:
                return False
            body, consumed = bytes(self.buffer[start : start + length]), start + length
        del self.buffer[:consumed]
        self._respond(method, target, body)
        return True

    def _respond(self, method: str, target: str, body: bytes) -> None:
        path = target.split("?", 1)[0]
        status, content_type, payload = "200 OK", "application/json", b""
        if path == "/stats" and method == "GET":
            payload = self.stats.as_json()
        elif path == "/stats/reset" and method == "POST":
            self.stats.reset()
            payload = b"{}"
        elif path.endswith("/chat/completions") and method == "POST":
            self.stats.requests += 1
            self.stats.body_bytes += len(body)
            payload, content_type = self._chat(path, body)
        elif path.endswith("/models") and method == "GET":
            payload = _MODELS
        else:
            status, payload = "404 Not Found", b'{"error": {"message": "not found"}}'
        head = (
            f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\n"
            f"content-length: {len(payload)}\r\nconnection: keep-alive\r\n\r\n"
        ).encode()
        assert self.transport is not None
        self.transport.write(head + payload)

    def _chat(self, path: str, body: bytes) -> tuple[bytes, str]:
        request = json.loads(body or b"{}")
        model = str(request.get("model", "canned"))
        if not request.get("stream"):
            return _completion(model), "application/json"
        match = _PREFIX.match(path)
        chunks = int(match.group(1)) if match else DEFAULT_STREAM_CHUNKS
        usage = bool((request.get("stream_options") or {}).get("include_usage"))
        key = (model, chunks, usage)
        if key not in self.cache:
            self.cache[key] = _stream(model, chunks, usage)
        return self.cache[key], "text/event-stream"


def _dechunk(buffer: bytearray, start: int) -> tuple[bytes, int] | None:
    body = bytearray()
    pos = start
    while True:
        line_end = buffer.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size = int(bytes(buffer[pos:line_end]).split(b";")[0], 16)
        pos = line_end + 2
        if len(buffer) < pos + size + 2:
            return None
        body += buffer[pos : pos + size]
        pos += size + 2
        if size == 0:
            return bytes(body), pos


async def _serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    stats = _Stats()
    cache: dict[tuple[str, int, bool], bytes] = {}
    server = await loop.create_server(
        lambda: _Connection(stats, cache), "127.0.0.1", port, backlog=4096
    )
    bound = server.sockets[0].getsockname()[1]
    print(f"READY {bound}", flush=True)
    async with server:
        await server.serve_forever()


@contextmanager
def start_canned_server() -> Iterator[str]:
    """Start the canned server in a child process; yields its root URL."""
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 20
        line = process.stdout.readline()
        if not line.startswith("READY") or time.monotonic() > deadline:
            raise RuntimeError(f"The canned server did not start (it printed {line!r}).")
        yield f"http://127.0.0.1:{int(line.split()[1])}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    try:
        asyncio.run(_serve(args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
