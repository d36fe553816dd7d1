"""NVCF assets: large media for NVIDIA's hosted catalog, uploaded for one call and deleted after it.

Flow (``hosted_call`` / ``ahosted_call``, around one request of a hosted ``NIMBackend``):
``nemovlm.hosted.plan_media`` (message rules, inline budget) -> for each planned medium,
concurrently: ``_create`` (``POST assets_url`` with the key) -> ``_put`` (the bytes to
the presigned ``uploadUrl``, *without* the key: it is a storage host) -> the media
swapped for ``data:<mime>;asset_id,<id>`` -> the caller's request, with the
``NVCF-INPUT-ASSET-REFERENCES`` header -> ``_delete`` (``DELETE assets_url/<id>``) of
every asset created, whatever happened: success, an error, cancellation, a stream
closed early or dropped (its generator's ``finally``).

The catalog's 413 and 422 answers become errors that say what to change
(``_hosted_error``). The HTTP calls go through the ``openai`` SDK's own httpx client
(the user's ``http_client`` when given: proxies and TLS settings apply).
"""

from __future__ import annotations

import asyncio
import importlib
import warnings
from collections.abc import AsyncIterator, Hashable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, replace
from typing import Any

import httpx
from pydantic import SecretStr

from nemovlm.errors import MissingCredentialsError, RequestError
from nemovlm.hosted import (
    ASSET_REFERENCES_HEADER,
    HostedSettings,
    MediaPlan,
    plan_media,
    with_media,
)
from nemovlm.media import PreparedMedia
from nemovlm.pipeline import PreparedConversation
from nemovlm.profiles import ModelProfile
from nemovlm.secrets import redact_text, scrub_exception, secret_values

__all__ = ["AssetCleanupWarning", "ahosted_call", "hosted_call"]

_MAX_CONCURRENT_UPLOADS = 8


class AssetCleanupWarning(UserWarning):
    """An NVCF asset could not be deleted after its call (NVIDIA deletes it after 24 h)."""


@dataclass(frozen=True)
class _Call:
    """What every asset request of one call needs."""

    assets_url: str
    api_key: SecretStr | None
    timeout: float | None
    model: str
    secrets: tuple[str, ...] = ()
    """The backend's credentials and any in ``assets_url``: kept out of every error and
    warning here (an asset API may echo the key it refused)."""

    @property
    def auth(self) -> dict[str, str]:
        if self.api_key is None:
            raise MissingCredentialsError(
                "Uploading media as NVCF assets for NVIDIA's hosted catalog needs a key: set "
                "NVIDIA_API_KEY or pass api_key=..., or set hosted_media='fit' to keep media "
                "inline."
            )
        return {"Authorization": f"Bearer {self.api_key.get_secret_value()}"}

    def asset_url(self, asset_id: str) -> str:
        return f"{self.assets_url.rstrip('/')}/{asset_id}"


def _call(
    settings: HostedSettings,
    api_key: SecretStr | None,
    timeout: float | None,
    profile: ModelProfile,
    secrets: tuple[str, ...],
) -> _Call:
    own = secret_values(api_key=api_key, base_url=settings.assets_url)
    every = tuple(sorted(set(secrets) | set(own), key=len, reverse=True))
    return _Call(settings.assets_url, api_key, timeout, profile.model, every)


def _description(media: PreparedMedia, model: str) -> str:
    return f"nemovlm {media.kind} for {model}"


def _mime(media: PreparedMedia) -> str:
    return media.mime_type or ("video/mp4" if media.kind == "video" else "image/png")


def _what(media: PreparedMedia) -> str:
    size = media.size
    return f"{media.kind} ({_mime(media)}, {size:,} bytes)" if size else media.kind


def _asset_media(media: PreparedMedia, asset_id: str) -> PreparedMedia:
    return replace(media, url=f"data:{_mime(media)};asset_id,{asset_id}", data=None, path=None)


def _headers(ids: list[str]) -> dict[str, str]:
    return {ASSET_REFERENCES_HEADER: ",".join(ids)} if ids else {}


def _with_assets(
    prepared: PreparedConversation, plan: MediaPlan, created: dict[Hashable, str]
) -> tuple[PreparedConversation, dict[str, str]]:
    """The conversation with each uploaded medium as its asset, and the header that
    names the assets; the same for sync and async calls."""
    swap = {k: _asset_media(plan.uploads[k], i) for k, i in created.items()}
    out = replace(prepared, turns=with_media(plan.turns, plan.keys, swap))
    return out, _headers(list(created.values()))


# --- sync --------------------------------------------------------------------------


@contextmanager
def hosted_call(
    prepared: PreparedConversation,
    *,
    settings: HostedSettings | None,
    profile: ModelProfile,
    api_key: SecretStr | None,
    client: Any,
    timeout: float | None,
    secrets: tuple[str, ...] = (),
) -> Iterator[tuple[PreparedConversation, dict[str, str]]]:
    """The conversation as the catalog takes it and the headers for the request;
    every asset created for it is deleted on leaving. Not hosted: unchanged, no headers."""
    if settings is None:
        yield prepared, {}
        return
    plan = plan_media(prepared, profile, settings)
    call = _call(settings, api_key, timeout, profile, secrets)
    created: dict[Hashable, str] = {}
    try:
        if plan.uploads:
            headers = call.auth
            _upload_all(client, call, plan, headers, created)
        try:
            yield _with_assets(prepared, plan, created)
        except RequestError as exc:
            raise _hosted_error(exc, settings, plan, profile) from exc
    except BaseException as exc:
        scrub_exception(exc, call.secrets)
        raise
    finally:
        if created:
            _delete_all(client, call, list(created.values()))


def _upload_all(
    client: Any,
    call: _Call,
    plan: MediaPlan,
    auth: dict[str, str],
    created: dict[Hashable, str],
) -> None:
    def one(key: Hashable, media: PreparedMedia) -> None:
        asset_id, upload_url = _create(client, call, media, auth)
        created[key] = asset_id
        _put(client, call, media, upload_url, _read(media))

    items = list(plan.uploads.items())
    if len(items) == 1:
        one(*items[0])
        return
    with ThreadPoolExecutor(min(len(items), _MAX_CONCURRENT_UPLOADS)) as pool:
        futures = [pool.submit(one, key, media) for key, media in items]
        errors = [f.exception() for f in futures]
    first = next((e for e in errors if e is not None), None)
    if first is not None:
        raise first


def _read(media: PreparedMedia) -> bytes:
    if media.data is not None:
        return media.data
    assert media.path is not None
    return media.path.read_bytes()


def _create(
    client: Any, call: _Call, media: PreparedMedia, auth: dict[str, str]
) -> tuple[str, str]:
    body = {"contentType": _mime(media), "description": _description(media, call.model)}
    try:
        response = client.post(call.assets_url, json=body, headers=auth, timeout=call.timeout)
    except _transport_errors() as exc:
        raise _step_error("Creating an NVCF asset for", media, call, exc) from exc
    return _process_created(response, media, call)


def _put(client: Any, call: _Call, media: PreparedMedia, upload_url: str, data: bytes) -> None:
    # The presigned URL is a storage host with its own signature: no API key goes there.
    headers = {
        "Content-Type": _mime(media),
        "x-amz-meta-nvcf-asset-description": _description(media, call.model),
    }
    try:
        response = client.put(upload_url, content=data, headers=headers, timeout=call.timeout)
    except _transport_errors() as exc:
        raise _step_error("Uploading", media, call, exc, to_url=True) from exc
    _process_put(response, media, call)


def _delete_all(client: Any, call: _Call, ids: list[str]) -> None:
    def one(asset_id: str) -> str | None:
        try:
            response = client.delete(
                call.asset_url(asset_id), headers=call.auth, timeout=call.timeout
            )
        except _transport_errors() as exc:
            return f"{asset_id}: {type(exc).__name__}: {exc}"
        return _process_deleted(response, asset_id)

    if len(ids) == 1:
        problems = [one(ids[0])]
    else:
        with ThreadPoolExecutor(min(len(ids), _MAX_CONCURRENT_UPLOADS)) as pool:
            problems = list(pool.map(one, ids))
    _warn_undeleted([p for p in problems if p], call.secrets)


# --- async -------------------------------------------------------------------------


@asynccontextmanager
async def ahosted_call(
    prepared: PreparedConversation,
    *,
    settings: HostedSettings | None,
    profile: ModelProfile,
    api_key: SecretStr | None,
    client: Any,
    timeout: float | None,
    secrets: tuple[str, ...] = (),
) -> AsyncIterator[tuple[PreparedConversation, dict[str, str]]]:
    """``hosted_call`` for async callers; uploads run concurrently on the loop, and
    the deletion survives the call's cancellation (it is shielded)."""
    if settings is None:
        yield prepared, {}
        return
    plan = plan_media(prepared, profile, settings)
    call = _call(settings, api_key, timeout, profile, secrets)
    created: dict[Hashable, str] = {}
    creates: list[asyncio.Future[str]] = []
    uploads: list[asyncio.Future[None]] = []
    try:
        if plan.uploads:
            auth = call.auth

            async def create(key: Hashable, media: PreparedMedia) -> str:
                asset_id, upload_url = await _acreate(client, call, media, auth)
                created[key] = asset_id
                return upload_url

            async def one(key: Hashable, media: PreparedMedia) -> None:
                # The create is shielded: one the server has done is read back, so its
                # id is known and deleted even when the call is cancelled meanwhile.
                creates.append(asyncio.ensure_future(create(key, media)))
                upload_url = await asyncio.shield(creates[-1])
                data = (
                    media.data if media.data is not None else await asyncio.to_thread(_read, media)
                )
                await _aput(client, call, media, upload_url, data)

            uploads = [asyncio.ensure_future(one(k, m)) for k, m in plan.uploads.items()]
            await asyncio.gather(*uploads)
        try:
            yield _with_assets(prepared, plan, created)
        except RequestError as exc:
            raise _hosted_error(exc, settings, plan, profile) from exc
    except BaseException as exc:
        scrub_exception(exc, call.secrets)
        raise
    finally:
        if uploads:
            await _settle(uploads, creates)
        if created:
            cleanup = asyncio.ensure_future(_adelete_all(client, call, list(created.values())))
            await _shielded(cleanup)


async def _settle(uploads: list[asyncio.Future[None]], creates: list[asyncio.Future[str]]) -> None:
    """Stop the uploads still running, and let every create end so each id is known."""
    for task in uploads:
        task.cancel()
    await _shielded(asyncio.gather(*uploads, *creates, return_exceptions=True))


async def _shielded(future: asyncio.Future[Any]) -> None:
    """Wait for ``future`` even if this task is cancelled meanwhile (then re-raise)."""
    cancelled = False
    while not future.done():
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError


async def _acreate(
    client: Any, call: _Call, media: PreparedMedia, auth: dict[str, str]
) -> tuple[str, str]:
    body = {"contentType": _mime(media), "description": _description(media, call.model)}
    try:
        response = await client.post(call.assets_url, json=body, headers=auth, timeout=call.timeout)
    except _transport_errors() as exc:
        raise _step_error("Creating an NVCF asset for", media, call, exc) from exc
    return _process_created(response, media, call)


async def _aput(
    client: Any, call: _Call, media: PreparedMedia, upload_url: str, data: bytes
) -> None:
    headers = {
        "Content-Type": _mime(media),
        "x-amz-meta-nvcf-asset-description": _description(media, call.model),
    }
    try:
        response = await client.put(upload_url, content=data, headers=headers, timeout=call.timeout)
    except _transport_errors() as exc:
        raise _step_error("Uploading", media, call, exc, to_url=True) from exc
    _process_put(response, media, call)


async def _adelete_all(client: Any, call: _Call, ids: list[str]) -> None:
    async def one(asset_id: str) -> str | None:
        try:
            response = await client.delete(
                call.asset_url(asset_id), headers=call.auth, timeout=call.timeout
            )
        except _transport_errors() as exc:
            return f"{asset_id}: {type(exc).__name__}: {exc}"
        return _process_deleted(response, asset_id)

    problems = await asyncio.gather(*(one(i) for i in ids))
    _warn_undeleted([p for p in problems if p], call.secrets)


# --- answers -----------------------------------------------------------------------


def _process_created(response: Any, media: PreparedMedia, call: _Call) -> tuple[str, str]:
    if response.status_code >= 400:
        raise RequestError(
            f"Creating an NVCF asset for the {_what(media)} failed at {call.assets_url}: "
            f"{_server_message(response)}. No chat request was sent.",
            status_code=response.status_code,
            request_id=response.headers.get("x-request-id"),
            model=call.model,
        )
    try:
        body = response.json()
        asset_id, upload_url = body["assetId"], body["uploadUrl"]
    except (ValueError, KeyError, TypeError) as exc:
        raise RequestError(
            f"Creating an NVCF asset for the {_what(media)} gave an answer without "
            f"'assetId' and 'uploadUrl' ({exc!r}); check assets_url ({call.assets_url}). "
            "No chat request was sent.",
            status_code=response.status_code,
            model=call.model,
        ) from exc
    if not isinstance(asset_id, str) or not isinstance(upload_url, str):
        raise RequestError(
            f"Creating an NVCF asset for the {_what(media)} gave a non-text 'assetId' or "
            "'uploadUrl'. No chat request was sent.",
            status_code=response.status_code,
            model=call.model,
        )
    return asset_id, upload_url


def _process_put(response: Any, media: PreparedMedia, call: _Call) -> None:
    if response.status_code >= 400:
        raise RequestError(
            f"Uploading the {_what(media)} to the NVCF asset's presigned URL failed: "
            f"{_server_message(response)}. No chat request was sent.",
            status_code=response.status_code,
            request_id=response.headers.get("x-amz-request-id"),
            model=call.model,
        )


def _process_deleted(response: Any, asset_id: str) -> str | None:
    # Already gone (expired, or deleted by NVIDIA) is what deletion wants.
    if response.status_code < 400 or response.status_code == 404:
        return None
    return f"{asset_id}: status {response.status_code}: {_server_message(response)}"


def _warn_undeleted(problems: list[str], secrets: tuple[str, ...]) -> None:
    if problems:
        warnings.warn(
            "Could not delete NVCF asset(s) after the call (NVIDIA deletes assets after 24 "
            f"hours): {redact_text('; '.join(problems), secrets)}",
            AssetCleanupWarning,
            stacklevel=4,
        )


def _server_message(response: Any) -> str:
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        return (
            f"status {response.status_code}: {text[:300]}"
            if text
            else f"status {response.status_code}"
        )
    if isinstance(body, Mapping):
        for key in ("detail", "message", "error"):
            value = body.get(key)
            if isinstance(value, Mapping):
                value = value.get("message")
            if isinstance(value, str) and value:
                return f"status {response.status_code}: {value}"
    return f"status {response.status_code}: {str(body)[:300]}"


def _step_error(
    step: str, media: PreparedMedia, call: _Call, exc: Exception, *, to_url: bool = False
) -> RequestError:
    where = "its presigned URL" if to_url else call.assets_url
    what = f"{step} the {_what(media)}" + (" to" if to_url else " at")
    return RequestError(
        f"{what} {where} failed: could not reach the server ({type(exc).__name__}: {exc}). "
        "No chat request was sent.",
        model=call.model,
    )


def _hosted_error(
    exc: RequestError, settings: HostedSettings, plan: MediaPlan, profile: ModelProfile
) -> RequestError:
    """The catalog's 413 and 422 answers, with what to change."""
    if exc.status_code == 413:
        budget = profile.hosted_inline_budget
        if settings.media == "fit":
            change = "set hosted_media='auto' (the default) so large media go up as NVCF assets"
        else:
            change = (
                "lower the model's budget with profile_overrides={'hosted_inline_budget': ...}, "
                "or set hosted_media='upload' so every medium goes up as an NVCF asset"
            )
        hint = (
            f"The hosted catalog refused the request as too large ({exc.server_message}). It "
            f"carried {plan.inline_chars:,} base64 characters of media inline (budget "
            f"{budget:,} for {profile.model}): {change}; or send smaller images."
        )
    elif exc.status_code == 422:
        hint = (
            f"The hosted catalog could not process the request ({exc.server_message}). If it "
            "names an asset: check that assets_url / NVCF_ASSETS_URL is the NVCF assets "
            "endpoint of the same account as the key; otherwise check the messages: one "
            "system message first, user and assistant alternating, media only in user "
            "messages."
        )
    else:
        return exc
    return type(exc)(hint, status_code=exc.status_code, request_id=exc.request_id, model=exc.model)


def _transport_errors() -> tuple[type[Exception], ...]:
    modules: list[Any] = [httpx]
    try:
        modules.append(importlib.import_module("httpx2"))
    except ImportError:
        pass
    return tuple(module.HTTPError for module in modules)
