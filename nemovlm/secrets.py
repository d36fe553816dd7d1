"""Credentials in places not marked secret: the one rule for spotting and hiding them.

A key passed as ``api_key`` is a ``SecretStr`` already. But users also put credentials
in ``default_headers`` (``Authorization``, ``X-Api-Key``, a proxy's token) and in
``base_url`` (``https://user:password@proxy/v1``). This module decides which of those
are secret (``is_secret_name``, ``url_secrets``) and hides them everywhere a model is
shown or saved:

- ``Headers`` and ``BaseURL`` are the field types the adapters declare: ``repr`` and
  ``model_dump`` (so LlamaIndex ``to_dict`` / ``to_json``) show ``REDACTED`` in place
  of each secret, while the model itself still sends the real values;
- ``lc_secret_paths`` names them for LangChain's ``dumps`` (and so callbacks'
  ``serialized``), which then writes secret references instead of values: the whole
  ``default_headers`` when one of them is a credential (LangChain escapes references
  nested deeper), and the whole ``base_url`` when it holds a password;
- ``redact_text`` / ``scrub_exception`` take the values out of error messages,
  including a server's message that echoes a key back.

A model rebuilt from a dump never holds these values. LangChain's ``loads`` gives them
back from its ``secrets_map`` (``NEMOVLM_DEFAULT_HEADERS``: the headers as a dict or
as JSON text; ``NVIDIA_BASE_URL``), else the model has none, as with ``api_key``. A
``REDACTED`` value (a LlamaIndex dump read back) is refused with a message that says
to pass the credential again.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Annotated, Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

from pydantic import AfterValidator, BeforeValidator, PlainSerializer

REDACTED = "**********"
"""What a hidden value is shown as (the same as pydantic's ``SecretStr``)."""

_SECRET_NAME = re.compile(
    r"auth|key|token|secret|passw|cookie|credential|signature|session", re.IGNORECASE
)
_MIN_SCRUB = 6
"""Shorter values are not scrubbed from text: replacing every "abc" would garble
messages and hide nothing worth hiding."""


def is_secret_name(name: str) -> bool:
    """Whether a header or query parameter called ``name`` carries a credential:
    ``Authorization``, ``X-Api-Key``, anything named like a key, token or secret."""
    return bool(_SECRET_NAME.search(name))


# --- headers ---------------------------------------------------------------------------


def redact_headers(headers: Mapping[str, str] | None) -> dict[str, str] | None:
    """``headers`` with each credential's value replaced by ``REDACTED``."""
    if headers is None:
        return None
    return {k: REDACTED if is_secret_name(k) else v for k, v in headers.items()}


def header_secrets(headers: Mapping[str, str] | None) -> list[str]:
    """The credential values in ``headers`` (and the token after an auth scheme)."""
    found: list[str] = []
    for name, value in (headers or {}).items():
        if not is_secret_name(name) or not isinstance(value, str):
            continue
        found.append(value)
        scheme, _, token = value.partition(" ")
        if token and scheme.isalpha():
            found.append(token.strip())
    return found


class SecretHeaders(dict[str, str]):
    """A plain header dict whose ``repr`` hides the credentials in it."""

    def __repr__(self) -> str:
        return repr(redact_headers(self))


def _check_headers(value: Any) -> Any:
    if isinstance(value, str):
        # LangChain's loads hands back the secret as given in its secrets_map.
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError(
                f"default_headers must be a dict (or its JSON text for {HEADERS_SECRET_ID} "
                "in LangChain's secrets_map)."
            ) from None
    if isinstance(value, Mapping):
        for name, item in value.items():
            if is_secret_name(str(name)) and item == REDACTED:
                raise ValueError(
                    f"default_headers[{name!r}] holds no credential (it was redacted when "
                    "the model was saved, which never keeps one): pass the header again."
                )
    return value


def _wrap_headers(value: dict[str, str] | None) -> dict[str, str] | None:
    return None if value is None else SecretHeaders(value)


Headers = Annotated[
    dict[str, str] | None,
    BeforeValidator(_check_headers),
    AfterValidator(_wrap_headers),
    PlainSerializer(redact_headers),
]
"""The type of a ``default_headers`` field: credentials hidden in repr and dumps."""


HEADERS_SECRET_ID = "NEMOVLM_DEFAULT_HEADERS"
"""The LangChain secret id ``default_headers`` are saved under when they hold a
credential."""


# --- URLs ------------------------------------------------------------------------------


def url_secrets(url: str | None) -> list[str]:
    """The credentials in ``url``: its password (also as the Basic auth token an HTTP
    client makes of it, which a server may echo) and query values named like secrets."""
    if not url:
        return []
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return []
    # A user name with no password (``https://TOKEN@host``) is a token.
    secret = password if password else parts.username
    found = [secret] if secret else []
    if secret:
        pair = f"{unquote(parts.username or '')}:{unquote(password or '')}"
        found.append(base64.b64encode(pair.encode()).decode())
    found += [v for k, v in parse_qsl(parts.query) if v and is_secret_name(k)]
    return found


def redact_url(url: str | None) -> str | None:
    """``url`` with its password (a lone user name: the name) and secret query values
    replaced by ``REDACTED``."""
    if not url or not url_secrets(url):
        return url
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password:
        userinfo, _, host = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        netloc = f"{user}:{REDACTED}@{host}"
    elif parts.username:
        netloc = f"{REDACTED}@{netloc.rpartition('@')[2]}"
    query = "&".join(
        f"{quote(k, safe='')}={REDACTED if is_secret_name(k) else quote(v, safe='')}"
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class SecretURL(str):
    """A URL string whose ``repr`` hides the password in it."""

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(redact_url(str(self)))


def _url_check(name: str, env: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if isinstance(value, str) and REDACTED in value and url_secrets(value):
            raise ValueError(
                f"{name} holds a redacted password (the model was saved, which never keeps "
                f"one): pass {name} again, or set {env}."
            )
        return value

    return check


def _wrap_url(value: str | None) -> str | None:
    return None if value is None else SecretURL(value)


BaseURL = Annotated[
    str | None,
    BeforeValidator(_url_check("base_url", "NVIDIA_BASE_URL")),
    AfterValidator(_wrap_url),
    PlainSerializer(redact_url),
]
"""The type of a ``base_url`` field: a password in it hidden in repr and dumps."""

AssetsURL = Annotated[
    str | None,
    BeforeValidator(_url_check("assets_url", "NVCF_ASSETS_URL")),
    AfterValidator(_wrap_url),
    PlainSerializer(redact_url),
]
"""The type of an ``assets_url`` field, hidden like ``BaseURL``."""


# --- LangChain -------------------------------------------------------------------------


def lc_secret_paths(
    headers: Mapping[str, str] | None, base_url: str | None, assets_url: str | None = None
) -> dict[str, str]:
    """Entries for a LangChain model's ``lc_secrets``: ``default_headers`` when one of
    them is a credential, ``base_url`` when it holds a password (saved as a reference
    to ``NVIDIA_BASE_URL``, the variable the URL is otherwise read from), and
    ``assets_url`` likewise (``NVCF_ASSETS_URL``)."""
    paths: dict[str, str] = {}
    if any(is_secret_name(name) for name in headers or {}):
        paths["default_headers"] = HEADERS_SECRET_ID
    if url_secrets(base_url):
        paths["base_url"] = "NVIDIA_BASE_URL"
    if url_secrets(assets_url):
        paths["assets_url"] = "NVCF_ASSETS_URL"
    return paths


# --- text and errors -------------------------------------------------------------------


def secret_values(
    *,
    api_key: Any = None,
    headers: Mapping[str, str] | None = None,
    base_url: str | None = None,
) -> tuple[str, ...]:
    """Every credential value a backend holds, longest first (for ``redact_text``)."""
    key = api_key.get_secret_value() if hasattr(api_key, "get_secret_value") else api_key
    values = [key] if isinstance(key, str) else []
    values += header_secrets(headers) + url_secrets(base_url)
    unique = {v for v in values if len(v) >= _MIN_SCRUB}
    return tuple(sorted(unique, key=len, reverse=True))


def redact_text(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of each secret replaced by ``REDACTED``."""
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, REDACTED)
    return text


def _scrubbed(value: Any, secrets: tuple[str, ...], depth: int = 0) -> Any:
    if isinstance(value, str):
        return redact_text(value, secrets)
    if depth > 8:
        return value
    if isinstance(value, dict):
        return {k: _scrubbed(v, secrets, depth + 1) for k, v in value.items()}
    if isinstance(value, Mapping) and any(
        isinstance(v, str) and redact_text(v, secrets) != v for v in value.values()
    ):
        # Request headers kept on an error (aiohttp's ``RequestInfo`` of a redirect loop,
        # a multi-dict): a plain dict of them, scrubbed.
        return {k: _scrubbed(v, secrets, depth + 1) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_make"):  # a named tuple
        return value._make(_scrubbed(v, secrets, depth + 1) for v in value)
    if isinstance(value, (list, tuple)):
        return type(value)(_scrubbed(v, secrets, depth + 1) for v in value)
    url = getattr(value, "url", None)
    if url is not None and any(s in str(url) for s in secrets):
        # An HTTP client's request, kept on its error: its URL may carry the password.
        try:
            value.url = type(url)(redact_text(str(url), secrets))
        except (AttributeError, TypeError, ValueError):
            pass
    return value


def scrub_exception(error: BaseException, secrets: tuple[str, ...]) -> None:
    """Take ``secrets`` out of ``error`` and every exception chained to it, in place:
    their messages and their text attributes (an SDK error's ``message`` and ``body``
    hold what the server said, which may echo the key)."""
    if not secrets:
        return
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.args = tuple(_scrubbed(a, secrets) for a in current.args)
        for name, value in list(vars(current).items()):
            scrubbed = _scrubbed(value, secrets)
            if scrubbed is not value:
                setattr(current, name, scrubbed)
        current = current.__cause__ or current.__context__


@contextmanager
def scrubbing(secrets: tuple[str, ...]) -> Iterator[None]:
    """Whatever leaves this block, error or not, leaves without ``secrets``
    (``scrub_exception``): the one wrapper round each backend's error converter."""
    try:
        yield
    except BaseException as exc:
        scrub_exception(exc, secrets)
        raise


__all__ = [
    "REDACTED",
    "AssetsURL",
    "BaseURL",
    "Headers",
    "SecretHeaders",
    "SecretURL",
    "HEADERS_SECRET_ID",
    "header_secrets",
    "is_secret_name",
    "lc_secret_paths",
    "redact_headers",
    "redact_text",
    "redact_url",
    "scrub_exception",
    "scrubbing",
    "secret_values",
    "url_secrets",
]
