"""The NIM emulator playing NVIDIA's hosted API catalog (``create_nim_app(hosted=True)``,
``nemovlm emulator --hosted``).

On top of the NIM emulator it does what the catalog does and a local NIM does not
(``/work/shared/HOSTED.md`` holds the public sources):

- 413 when a request's inline (base64) media together exceed the model's budget
  (``INLINE_BUDGETS``, 180,000 characters where the reference says nothing);
- the NVCF asset API on itself: create (``POST /v2/nvcf/assets``, Bearer key) -> a
  presigned ``PUT /emulator/storage/{id}?X-Amz-...`` that, like S3, refuses an
  ``Authorization`` header and checks ``Content-Type`` and the description header ->
  ``DELETE /v2/nvcf/assets/{id}``; presigned URLs expire after an hour and assets after
  24 hours of the emulator's clock;
- 422 for a ``data:<mime>;asset_id,<id>`` naming an asset that does not exist, was not
  uploaded or is not listed in ``NVCF-INPUT-ASSET-REFERENCES``;
- the message rules: one system message, first; user and assistant alternating;
  system and assistant content as strings (422 otherwise).

Test hooks (``/emulator/...``, never on the real catalog):
  ``GET /emulator/assets``          the live assets (``?wait_empty=S``: answer once none
                                    is left, or after S seconds)
  ``POST /emulator/clock``          ``{"advance": seconds}`` moves the emulator's clock on
  ``POST /emulator/assets/fail``    ``{"step": "create"|"upload"|"delete", "status": 500,
                                    "times": 1}``: the next such calls fail
  ``POST /emulator/assets/barrier`` ``{"uploads": N}``: each presigned PUT waits until N
                                    have been in flight at once (10 s at most); ``GET
                                    /emulator/assets/stats`` says the most there were
                                    (``?wait_uploading=N``: once N are in flight)
  ``POST /emulator/assets/latency`` ``{"seconds": S}``: every create, presigned PUT and
                                    delete takes S seconds more (the asset API's round
                                    trip, for ``bench/scenarios/hosted_assets.py``)
  ``POST /emulator/hold``           the next chat request waits until released
  ``GET /emulator/hold``            ``?timeout=S``: answers once a chat request is held
  ``DELETE /emulator/hold``         releases every held request
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

__all__ = [
    "ASSET_LIFETIME_S",
    "DEFAULT_INLINE_BUDGET",
    "INLINE_BUDGETS",
    "UPLOAD_URL_LIFETIME_S",
    "HostedError",
    "HostedState",
    "asset_bytes",
    "check_chat",
    "hold_if_armed",
    "hosted_banner",
    "hosted_routes",
]

DEFAULT_INLINE_BUDGET = 180_000
INLINE_BUDGETS: Mapping[str, int] = {
    # docs.api.nvidia.com/nim/reference/nvidia-llama-3_1-nemotron-nano-vl-8b-v1-infer:
    # "If the size of an image is more than 180KB, it needs to be uploaded".
    "nvidia/llama-3.1-nemotron-nano-vl-8b-v1": 180_000,
}
UPLOAD_URL_LIFETIME_S = 3600.0  # "Presigned URLs live 1 hour"
ASSET_LIFETIME_S = 24 * 3600.0  # "assets are deleted by NVIDIA after 24 hours"
ASSET_HEADER = "nvcf-input-asset-references"
_DESCRIPTION_HEADER = "x-amz-meta-nvcf-asset-description"
_ASSET_URL = re.compile(r"^data:([^;,]*);asset_id,(.+)$", re.DOTALL)
_BASE64_URL = re.compile(r"^data:[^,]*;base64,", re.DOTALL)
_IMG_SRC = re.compile(r"""<img\s+src\s*=\s*(?:"([^"]*)"|'([^']*)')""", re.IGNORECASE)
_STEPS = ("create", "upload", "delete")


class HostedError(Exception):
    """The catalog's refusal of a chat request: status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Asset:
    asset_id: str
    content_type: str
    description: str
    created: float
    signature: str
    data: bytes | None = None

    def view(self) -> dict[str, Any]:
        return {
            "assetId": self.asset_id,
            "contentType": self.content_type,
            "description": self.description,
            "uploaded": self.data is not None,
            "size": len(self.data) if self.data is not None else None,
        }


@dataclass
class HostedState:
    """The catalog's side of the emulator: assets, its clock, faults, held requests."""

    assets: dict[str, _Asset] = field(default_factory=dict)
    clock_offset: float = 0.0
    faults: dict[str, list[int]] = field(default_factory=dict)
    """Per step, the statuses of the next calls to fail."""
    release: asyncio.Event | None = None
    held: int = 0
    armed: bool = False
    changed: asyncio.Condition | None = None
    barrier: int = 0
    """Uploads that wait for each other (``/emulator/assets/barrier``)."""
    uploading: int = 0
    most_uploading: int = 0
    """The most presigned PUTs ever in flight at once."""
    latency: float = 0.0
    """Seconds added to every asset create, PUT and delete (``/emulator/assets/latency``)."""

    def now(self) -> float:
        return time.time() + self.clock_offset

    def live(self) -> dict[str, _Asset]:
        """Assets not yet deleted by NVIDIA's 24-hour expiry."""
        now = self.now()
        for asset_id in [a for a, v in self.assets.items() if now - v.created > ASSET_LIFETIME_S]:
            del self.assets[asset_id]
        return self.assets

    def fault(self, step: str) -> int | None:
        pending = self.faults.get(step)
        return pending.pop(0) if pending else None

    def condition(self) -> asyncio.Condition:
        # Made on first use, in the server's own event loop.
        if self.changed is None:
            self.changed = asyncio.Condition()
        return self.changed

    async def notify(self) -> None:
        async with self.condition():
            self.condition().notify_all()


def _state(request: Request) -> HostedState:
    state: HostedState = request.app.state.hosted
    return state


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(
        {"type": "about:blank", "status": status, "title": _TITLES.get(status, "Error"),
         "detail": message},
        status_code=status,
    )  # fmt: skip


_TITLES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           413: "Payload Too Large", 422: "Unprocessable Entity"}  # fmt: skip


def _s3_error(status: int, code: str, message: str) -> Response:
    body = f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    return Response(body, status_code=status, media_type="application/xml")


def _record(request: Request) -> None:
    # Keys stay out of the record; whether one was sent is what tests need to see.
    headers = {k: v for k, v in request.headers.items() if k.lower() != "authorization"}
    request.app.state.requests.append(
        {
            "method": request.method,
            "path": request.url.path,
            "headers": headers,
            "authorization_sent": "authorization" in request.headers,
            "body": None,
        }
    )


def _echo(request: Request, status: int) -> str:
    """A faulted 401 echoes the credential it refused, as some servers do: what the
    client must keep out of its errors."""
    if status != 401:
        return f" (status {status})"
    return f": the credential {request.headers.get('authorization', '(none)')!r} was refused"


def _bearer(request: Request) -> bool:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and bool(token.strip())


# --- the NVCF asset API -----------------------------------------------------------------


async def _refusal(request: Request, step: str, doing: str) -> Response | None:
    """What the asset API's create and delete routes check first, in the catalog's
    order: the simulated latency, the key, then an injected failure for ``step``."""
    state = _state(request)
    _record(request)
    await asyncio.sleep(state.latency)
    if not _bearer(request):
        return _error(401, "Authorization: Bearer <NVIDIA API key> is required.")
    status = state.fault(step)
    if status is not None:
        return _error(status, f"Emulated failure {doing} the asset{_echo(request, status)}.")
    return None


async def _create_asset(request: Request) -> Response:
    if (refused := await _refusal(request, "create", "creating")) is not None:
        return refused
    state = _state(request)
    try:
        body = await request.json()
    except ValueError:
        body = None
    content_type = body.get("contentType") if isinstance(body, dict) else None
    description = body.get("description") if isinstance(body, dict) else None
    if not isinstance(content_type, str) or not content_type:
        return _error(400, "'contentType' is required, e.g. image/jpeg.")
    if not isinstance(description, str) or not description:
        return _error(400, "'description' is required.")
    asset = _Asset(
        asset_id=f"emu-asset-{secrets.token_hex(8)}",
        content_type=content_type,
        description=description,
        created=state.now(),
        signature=secrets.token_hex(16),
    )
    state.live()[asset.asset_id] = asset
    await state.notify()
    base = f"{request.url.scheme}://{request.url.netloc}"
    upload_url = (
        f"{base}/emulator/storage/{asset.asset_id}?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        f"&X-Amz-Date={int(asset.created)}&X-Amz-Expires={int(UPLOAD_URL_LIFETIME_S)}"
        f"&X-Amz-Signature={asset.signature}"
    )
    return JSONResponse(
        {
            "assetId": asset.asset_id,
            "uploadUrl": upload_url,
            "contentType": content_type,
            "description": description,
        }
    )


async def _put_asset(request: Request) -> Response:
    """The presigned URL: a storage host that knows nothing of API keys."""
    state = _state(request)
    _record(request)
    if "authorization" in request.headers:
        return _s3_error(
            400,
            "InvalidArgument",
            "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, "
            "Signature query string parameter or the Authorization header should be "
            "specified (the presigned URL carries its own signature: send no API key).",
        )
    asset = state.live().get(request.path_params["asset_id"])
    if asset is None or request.query_params.get("X-Amz-Signature") != asset.signature:
        return _s3_error(403, "AccessDenied", "No such upload, or a wrong signature.")
    if state.now() - asset.created > UPLOAD_URL_LIFETIME_S:
        return _s3_error(403, "AccessDenied", "Request has expired")
    if request.headers.get("content-type") != asset.content_type:
        return _s3_error(
            403,
            "SignatureDoesNotMatch",
            f"Content-Type must be {asset.content_type!r}, as when the asset was created.",
        )
    if request.headers.get(_DESCRIPTION_HEADER) != asset.description:
        return _s3_error(
            403,
            "SignatureDoesNotMatch",
            f"{_DESCRIPTION_HEADER} must be the asset's description, as when it was created.",
        )
    status = state.fault("upload")
    if status is not None:
        return _s3_error(status, "InternalError", f"Emulated upload failure (status {status}).")
    data = await request.body()
    state.uploading += 1
    state.most_uploading = max(state.most_uploading, state.uploading)
    try:
        await asyncio.sleep(state.latency)
        if state.barrier:
            # Waits until that many uploads have been in flight at once (or 10 s pass).
            # Not "are in flight": the first to see the count met finishes and leaves, so
            # the others, woken after it, would see one fewer and wait out the 10 s.
            await state.notify()
            async with state.condition():
                try:
                    await asyncio.wait_for(
                        state.condition().wait_for(lambda: state.most_uploading >= state.barrier),
                        10,
                    )
                except asyncio.TimeoutError:
                    pass
    finally:
        state.uploading -= 1
    asset.data = data
    await state.notify()
    return Response(status_code=200)


async def _delete_asset(request: Request) -> Response:
    if (refused := await _refusal(request, "delete", "deleting")) is not None:
        return refused
    state = _state(request)
    asset = state.live().pop(request.path_params["asset_id"], None)
    if asset is None:
        return _error(404, "No such asset.")
    await state.notify()
    return Response(status_code=204)


# --- test hooks -------------------------------------------------------------------------


async def _list_assets(request: Request) -> Response:
    state = _state(request)
    wait = request.query_params.get("wait_empty")
    if wait is not None:
        async with state.condition():
            try:
                await asyncio.wait_for(
                    state.condition().wait_for(lambda: not state.live()), float(wait)
                )
            except asyncio.TimeoutError:
                pass
    return JSONResponse([a.view() for a in state.live().values()])


async def _upload_stats(request: Request) -> Response:
    state = _state(request)
    wait = request.query_params.get("wait_uploading")
    if wait is not None:
        async with state.condition():
            try:
                await asyncio.wait_for(
                    state.condition().wait_for(lambda: state.uploading >= int(wait)), 20
                )
            except asyncio.TimeoutError:
                pass
    return JSONResponse(
        {
            "most_uploading": state.most_uploading,
            "uploading": state.uploading,
            "barrier": state.barrier,
        }
    )


async def _set_barrier(request: Request) -> Response:
    state = _state(request)
    body = await request.json()
    state.barrier = int(body.get("uploads", 0))
    state.most_uploading = 0
    await state.notify()  # uploads waiting for an earlier barrier re-check this one
    return JSONResponse({"barrier": state.barrier})


async def _set_latency(request: Request) -> Response:
    body = await request.json()
    seconds = body.get("seconds") if isinstance(body, dict) else None
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds <= 60:
        return _error(400, "'seconds' must be a number from 0 to 60.")
    _state(request).latency = float(seconds)
    return JSONResponse({"latency": float(seconds)})


async def _advance_clock(request: Request) -> Response:
    state = _state(request)
    body = await request.json()
    state.clock_offset += float(body.get("advance", 0))
    await state.notify()
    return JSONResponse({"clock_offset": state.clock_offset})


async def _fail_next(request: Request) -> Response:
    body = await request.json()
    step, status, times = body.get("step"), int(body.get("status", 500)), int(body.get("times", 1))
    if step not in _STEPS:
        return _error(400, f"'step' must be one of {', '.join(_STEPS)}.")
    _state(request).faults.setdefault(step, []).extend([status] * times)
    return JSONResponse({"armed": step, "status": status, "times": times})


async def _arm_hold(request: Request) -> Response:
    state = _state(request)
    state.armed = True
    state.release = asyncio.Event()
    return JSONResponse({"armed": True})


async def _wait_held(request: Request) -> Response:
    state = _state(request)
    timeout = float(request.query_params.get("timeout", "10"))
    async with state.condition():
        try:
            await asyncio.wait_for(state.condition().wait_for(lambda: state.held > 0), timeout)
        except asyncio.TimeoutError:
            pass
    return JSONResponse({"held": state.held})


async def _release(request: Request) -> Response:
    state = _state(request)
    state.armed = False
    if state.release is not None:
        state.release.set()
    return JSONResponse({"released": state.held})


def hosted_banner(url: str) -> str:
    """What ``nemovlm emulator --hosted`` adds to its banner: the exports, and the one
    setting the environment cannot carry."""
    return (
        f"  export NVCF_ASSETS_URL={url}/v2/nvcf/assets\n"
        "  export NVIDIA_API_KEY=emulator-key   # the asset API wants a Bearer key\n"
        "  # It plays NVIDIA's hosted catalog: pass hosted=True to ChatNemoVLM / NemoVLM\n"
        "  # (a base URL on this host is not hosted by default). Media over the inline\n"
        "  # budget go up as NVCF assets to this emulator, which deletes them on request."
    )


def hosted_routes() -> list[Route]:
    return [
        Route("/v2/nvcf/assets", _create_asset, methods=["POST"]),
        Route("/v2/nvcf/assets/{asset_id}", _delete_asset, methods=["DELETE"]),
        Route("/emulator/storage/{asset_id}", _put_asset, methods=["PUT"]),
        Route("/emulator/assets", _list_assets, methods=["GET"]),
        Route("/emulator/assets/fail", _fail_next, methods=["POST"]),
        Route("/emulator/assets/barrier", _set_barrier, methods=["POST"]),
        Route("/emulator/assets/stats", _upload_stats, methods=["GET"]),
        Route("/emulator/assets/latency", _set_latency, methods=["POST"]),
        Route("/emulator/clock", _advance_clock, methods=["POST"]),
        Route("/emulator/hold", _arm_hold, methods=["POST"]),
        Route("/emulator/hold", _wait_held, methods=["GET"]),
        Route("/emulator/hold", _release, methods=["DELETE"]),
    ]


# --- the chat request -------------------------------------------------------------------


async def hold_if_armed(request: Request) -> None:
    """A chat request waits here while a test holds it (at most a minute)."""
    state = _state(request)
    if not state.armed or state.release is None:
        return
    state.armed = False
    release = state.release
    state.held += 1
    await state.notify()
    try:
        await asyncio.wait_for(release.wait(), 60)
    except asyncio.TimeoutError:
        pass
    finally:
        state.held -= 1


def check_chat(body: dict[str, Any], request: Request) -> dict[str, bytes]:
    """The catalog's checks on a chat body; the bytes of each asset it refers to."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return {}
    _check_roles(messages)
    model = body.get("model")
    budget = INLINE_BUDGETS.get(model, DEFAULT_INLINE_BUDGET) if isinstance(model, str) else 0
    listed = {a.strip() for a in request.headers.get(ASSET_HEADER, "").split(",") if a.strip()}
    state = _state(request)
    inline = 0
    used: dict[str, bytes] = {}
    for url in _media_urls(messages):
        if _BASE64_URL.match(url):
            inline += len(url) - url.index(",") - 1
            continue
        match = _ASSET_URL.match(url)
        if match is None:
            continue
        asset_id = unquote(match.group(2)).strip()
        asset = state.live().get(asset_id)
        if asset_id not in listed:
            raise HostedError(
                422,
                f"Asset {asset_id} is referenced in the messages but not listed in the "
                "NVCF-INPUT-ASSET-REFERENCES header.",
            )
        if asset is None:
            raise HostedError(422, f"Asset {asset_id} does not exist (deleted or expired).")
        if asset.data is None:
            raise HostedError(422, f"Asset {asset_id} was created but never uploaded.")
        used[asset_id] = asset.data
    if inline > budget:
        raise HostedError(
            413,
            f"Request carries {inline:,} characters of inline base64 media; the limit for "
            f"{model} is {budget:,}. Upload larger media with the NVCF asset API and refer "
            "to them as data:<mime>;asset_id,<id>.",
        )
    return used


def _check_roles(messages: list[Any]) -> None:
    previous: str | None = None
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            continue
        role, content = message.get("role"), message.get("content")
        if role == "system" and index != 0:
            raise HostedError(
                422, f"messages[{index}]: a system message must be the very first message."
            )
        if role in ("system", "assistant") and isinstance(content, list):
            raise HostedError(
                422,
                f"messages[{index}]: for system and assistant roles, the object list format "
                "is not supported; send the content as a string.",
            )
        if role in ("user", "assistant") and role == previous:
            raise HostedError(
                422,
                f"messages[{index}]: the roles of the messages must be alternating between "
                f"user and assistant (two {role} messages in a row).",
            )
        previous = role if isinstance(role, str) else None


def _media_urls(messages: list[Any]) -> list[str]:
    urls: list[str] = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        texts: list[str] = [content] if isinstance(content, str) else []
        for part in content if isinstance(content, list) else []:
            if not isinstance(part, dict):
                continue
            kind = part.get("type")
            if kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif kind in ("image_url", "video_url"):
                value = part.get(kind)
                url = value.get("url") if isinstance(value, dict) else value
                if isinstance(url, str):
                    urls.append(url)
        for text in texts:
            urls += [m.group(1) or m.group(2) or "" for m in _IMG_SRC.finditer(text)]
    return urls


def asset_bytes(url: str, assets: Mapping[str, bytes] | None, where: str) -> bytes | None:
    """The bytes of a ``data:<mime>;asset_id,<id>`` URL, or ``None`` if it is not one."""
    match = _ASSET_URL.match(url)
    if match is None:
        return None
    asset_id = unquote(match.group(2)).strip()
    if assets is None:
        raise HostedError(
            400, f"{where}: asset_id URLs are served by NVIDIA's hosted catalog, not a NIM."
        )
    return assets[asset_id]
