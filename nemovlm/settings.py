"""The settings every adapter offers, declared once.

``CommonSettings`` holds what any backend takes; ``NimSettings`` and ``FalSettings`` add
a backend's own. ``ChatNemoVLM``/``NemoVLM`` (and ``NemoVLMMultiModal``) inherit
``NimSettings``, ``ChatNemoFal``/``NemoFal`` (and ``NemoFalMultiModal``) ``FalSettings``;
an adapter adds only its framework's spellings (LangChain's ``model_name`` alias...) and
what has no meaning outside it (``streaming``, callbacks).

The neutral objects are derived here: ``request_options`` (``RequestOptions``: fields,
then per-call arguments on top), ``media_policy`` (``MediaPolicy``), ``nemo_profile``,
and ``backend`` (the core backend the adapter calls, made on first use).
A setting added to one of these classes, and read in the method that derives its
neutral object, reaches both frameworks and the wire.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, Field, PrivateAttr, SecretStr, model_validator

from nemovlm.errors import UnsupportedInputError
from nemovlm.hosted import HostedMedia, decide_hosted
from nemovlm.media import MediaPolicy
from nemovlm.model_ids import warn_if_near_miss
from nemovlm.options import ImageTransport, RequestOptions, build_options
from nemovlm.profiles import PROFILES, Backend, ModelProfile, get_profile
from nemovlm.secrets import AssetsURL, BaseURL, Headers

if TYPE_CHECKING:
    from nemovlm.backends import ChatBackend
    from nemovlm.backends.fal import FalBackend
    from nemovlm.backends.nim import NIMBackend, ServedModel

# nemovlm.backends.fal.UPLOAD_THRESHOLD_BYTES; not imported, so the core's settings load
# without the ``fal`` extra.
_FAL_UPLOAD_THRESHOLD_BYTES = 1_000_000
_FAL_UPLOAD_EXPIRES_IN = "1h"  # nemovlm.backends.fal.UPLOAD_EXPIRES_IN, likewise
_POLICY = MediaPolicy()  # the media limits' defaults live on MediaPolicy
_MAX_RETRIES = 2


# Packages between a user's ``ChatNemoVLM(...)`` and a validator here.
_OUR_STACK = frozenset(
    {"pydantic", "langchain_core", "llama_index", "nemovlm", "langchain_nemovlm",
     "llama_index_nemovlm"}
)  # fmt: skip


def _callers_level() -> int:
    """The ``stacklevel`` of the first frame outside the libraries that build a model,
    so a warning points at the user's line, not at pydantic's."""
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and (
        str(frame.f_globals.get("__name__", "")).split(".")[0] in _OUR_STACK
    ):
        frame, level = frame.f_back, level + 1
    return level


def _secret_from_env(name: str) -> Callable[[], SecretStr | None]:
    def read() -> SecretStr | None:
        value = os.environ.get(name)
        return SecretStr(value) if value else None

    return read


class CommonSettings(BaseModel):
    """What every model class takes, whichever backend serves it."""

    _backend_kind: ClassVar[Backend] = "nim"

    model: str = Field(description="Model id, e.g. nvidia/nemotron-nano-12b-v2-vl.")
    temperature: float | None = Field(
        default=None, description="Sampling temperature (>= 0); None: the model's default."
    )
    top_p: float | None = Field(
        default=None, description="Nucleus sampling (0..1); None: the model's default."
    )
    max_tokens: int | None = Field(default=None, description="Most tokens to generate.")
    seed: int | None = Field(default=None, description="Sampling seed, where the model takes one.")
    reasoning: bool | None = Field(
        default=None,
        description="None: the model's default; True/False: switched the model's own way.",
    )
    include_reasoning: bool = Field(
        default=True,
        description="False asks the server to leave the reasoning out "
        "(DiffusionGemma, non-streaming).",
    )
    max_retries: int = Field(
        default=_MAX_RETRIES,
        description="Retries of a failed request (NIM). fal-client retries on its own, with "
        "no setting: on fal another value than the default warns that it does not apply.",
    )
    allowed_media_dirs: list[Path] = Field(
        default_factory=list,
        description="Directories from which a bare path or file:// URL inside message "
        "content may be read. Empty (default): such strings are refused, since content "
        "may come from a tool or a web page. (LlamaIndex: ImageBlock(path=...) is always "
        "read.)",
    )
    downscale_images: bool = Field(
        default=True, description="Shrink images larger than the model can use before sending."
    )
    max_image_pixels: int | None = Field(
        default=None, description="Pixel budget for the downscale; None: the model profile's."
    )
    allowed_media_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts, addresses or networks (e.g. 10.0.0.0/8) the client may fetch "
        "media from although they are not public (loopback, private, link-local, "
        "reserved). Empty (default): the client fetches only from public addresses.",
    )
    max_decode_pixels: int = Field(
        default=_POLICY.max_decode_pixels,
        description="Most pixels an image may declare in its header before it is decoded "
        "(a decode-bomb guard of our own, whatever Pillow's global limit is).",
    )
    max_video_bytes: int = Field(
        default=_POLICY.max_video_bytes,
        description="Largest video file the client reads to send inline or upload.",
    )
    profile_overrides: dict[str, Any] | None = Field(
        default=None,
        description="Replace fields of the model's nemovlm profile (see nemovlm.profiles).",
    )

    _backend: Any = PrivateAttr(default=None)
    _extra_arguments_field: ClassVar[str | None] = None
    """The adapter's field of extra wire parameters (``model_kwargs``,
    ``additional_kwargs``): unknown constructor arguments go there, with a warning."""

    @model_validator(mode="before")
    @classmethod
    def _unknown_arguments_go_on_the_wire(cls, values: Any) -> Any:
        """An argument that names no field (``top_k=7``, a typo) is warned about and sent
        in the request body (as ``ChatOpenAI``'s ``build_extra`` does), never dropped."""
        field = cls._extra_arguments_field
        if field is None or not isinstance(values, dict):
            return values
        known = set(cls.model_fields)
        known |= {f.alias for f in cls.model_fields.values() if f.alias}
        unknown = [name for name in values if name not in known]
        if not unknown:
            return values
        values = dict(values)
        extra = dict(values.get(field) or {})
        for name in unknown:
            if name in extra:
                raise UnsupportedInputError(f"{name} is given both as an argument and in {field}.")
            warnings.warn(
                f"{name}={values[name]!r} is not a parameter of {cls.__name__}; it is sent "
                f"in the request body as given ({field}). Check the spelling if that is "
                "not what you meant.",
                UserWarning,
                stacklevel=_callers_level(),
            )
            extra[name] = values.pop(name)
        values[field] = extra
        return values

    @model_validator(mode="after")
    def _warn_near_miss_model_id(self) -> CommonSettings:
        # When the model is made, not at its first call: that is where the typo is.
        warn_if_near_miss(self.model, PROFILES)
        return self

    def make_backend(self) -> ChatBackend:
        """A new core backend for these settings."""
        raise NotImplementedError

    @property
    def backend(self) -> ChatBackend:
        """The core backend, made on first use (and again after unpickling)."""
        if self._backend is None:
            self._backend = self.make_backend()
        return self._backend

    @property
    def nemo_profile(self) -> ModelProfile:
        """The ``nemovlm`` profile in force (quirks, limits, prices)."""
        return get_profile(self.model, self.profile_overrides, backend=self._backend_kind)

    def media_policy(self) -> MediaPolicy:
        """What the client may do with media on the user's behalf, from these settings."""
        return MediaPolicy(
            allowed_dirs=tuple(Path(p) for p in self.allowed_media_dirs),
            allowed_hosts=tuple(self.allowed_media_hosts),
            downscale=self.downscale_images,
            max_image_pixels=self.max_image_pixels,
            max_decode_pixels=self.max_decode_pixels,
            max_video_bytes=self.max_video_bytes,
        )

    def request_defaults(self) -> RequestOptions:
        """The request options these settings give before any per-call argument."""
        return RequestOptions(
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            seed=self.seed,
            reasoning=self.reasoning,
            include_reasoning=self.include_reasoning,
        )

    def request_options(
        self,
        overrides: Mapping[str, Any] | None = None,
        *,
        extra: Mapping[str, Any] | None = None,
        stop: Sequence[str] | None = None,
    ) -> RequestOptions:
        """The options of one call: ``request_defaults``, then ``overrides`` (the call's
        keyword arguments) on top; see ``nemovlm.options.build_options``."""
        return build_options(self.request_defaults(), overrides, extra=extra, stop=stop)


DEFAULT_NIM_MODEL = "nvidia/nemotron-nano-12b-v2-vl"


class NimSettings(CommonSettings):
    """A NIM's (or NVIDIA's hosted API catalog's) settings: the connection and video."""

    model: str = Field(
        default=DEFAULT_NIM_MODEL,
        description="Model id; Nemotron Nano 12B v2 VL (nvidia/nemotron-nano-12b-v2-vl) "
        "unless given, as NVIDIA's own integrations have a default model.",
    )
    base_url: BaseURL = Field(
        default=None,
        description="The NIM's /v1 URL; else NVIDIA_BASE_URL, else NVIDIA's hosted API catalog. "
        "A password in it is kept out of repr, dumps and errors.",
    )
    api_key: SecretStr | None = Field(
        default_factory=_secret_from_env("NVIDIA_API_KEY"),
        description="Else NVIDIA_API_KEY; a local NIM needs none.",
    )
    timeout: float | None = Field(
        default=60.0,
        description="Seconds: a deadline for a whole non-streamed reply; for a stream, the "
        "longest wait between chunks. None: no limit.",
    )
    default_headers: Headers = Field(
        default=None,
        description="Headers sent with every request; credentials in them (Authorization, "
        "X-Api-Key, anything named like a key, token or secret) are kept out of repr, "
        "dumps and errors.",
    )
    http_client: Any = Field(
        default=None,
        exclude=True,
        description="An HTTP client of your own (proxies, custom TLS) for sync calls and for "
        "the media the client fetches itself, of the type the installed openai SDK takes "
        "(httpx.Client; httpx2.Client with openai 3.x).",
    )
    async_http_client: Any = Field(
        default=None,
        exclude=True,
        description="The same for async calls (httpx.AsyncClient; httpx2.AsyncClient with "
        "openai 3.x), and for the media async calls fetch, on the caller's event loop.",
    )
    image_transport: ImageTransport = Field(
        default="parts",
        description="img_tag sends images as <img src=...> in plain text (Llama Nano VL 8B).",
    )
    video_fps: float | None = Field(
        default=None, description="Frames per second sampled from a video (or video_num_frames)."
    )
    video_num_frames: int | None = Field(
        default=None, description="Frames sampled from a video, at most 128 (or video_fps)."
    )
    max_num_tiles: int | None = Field(
        default=None, description="Most tiles an image or frame is cut into (Nano 12B v2 VL)."
    )

    # NVIDIA's hosted catalog (nemovlm.hosted): its message rules and NVCF assets.
    hosted: bool | None = Field(
        default=None,
        description="Follow NVIDIA's hosted catalog's rules (inline budget, NVCF assets, "
        "message rules). None: decided from the base URL (the catalog's host: hosted); "
        "see is_hosted.",
    )
    assets_url: AssetsURL = Field(
        default=None,
        description="The NVCF assets endpoint; None: NVCF_ASSETS_URL, else NVIDIA's "
        "(https://api.nvcf.nvidia.com/v2/nvcf/assets). A password in it is kept out of "
        "repr, dumps and errors.",
    )
    hosted_media: HostedMedia = Field(
        default="auto",
        description="On the catalog: auto keeps media inline while they fit the model's "
        "budget and uploads the rest as NVCF assets; upload uploads all; fit never uploads "
        "and shrinks images to fit.",
    )

    @property
    def is_hosted(self) -> bool:
        """Whether calls follow the hosted catalog's rules (``hosted``, else the base URL)."""
        return decide_hosted(self.hosted, self.base_url)

    def make_backend(self) -> NIMBackend:
        from nemovlm.backends.nim import NIMBackend

        return NIMBackend.connect(
            self.nemo_profile,
            base_url=self.base_url,
            api_key=self.api_key,
            timeout=self.timeout,
            max_retries=self.max_retries,
            default_headers=self.default_headers,
            http_client=self.http_client,
            async_http_client=self.async_http_client,
            policy=self.media_policy(),
            hosted=self.hosted,
            assets_url=self.assets_url,
            hosted_media=self.hosted_media,
        )

    def media_policy(self) -> MediaPolicy:
        return replace(
            super().media_policy(),
            http_client=self.http_client,
            async_http_client=self.async_http_client,
        )

    @property
    def available_models(self) -> list[ServedModel]:
        """The models the server serves, from its ``/v1/models`` (one request each time
        it is read), as ``ServedModel(id, owned_by, max_model_len, known)``; ``known``:
        nemovlm has that model's profile."""
        return self._nim_backend().available_models()

    async def aavailable_models(self) -> list[ServedModel]:
        """``available_models``, asynchronously."""
        return await self._nim_backend().aavailable_models()

    def _nim_backend(self) -> NIMBackend:
        from nemovlm.backends.nim import NIMBackend

        backend = self.backend
        assert isinstance(backend, NIMBackend)
        return backend

    def request_defaults(self) -> RequestOptions:
        return replace(
            super().request_defaults(),
            image_transport=self.image_transport,
            video_fps=self.video_fps,
            video_num_frames=self.video_num_frames,
            max_num_tiles=self.max_num_tiles,
        )


class FalSettings(CommonSettings):
    """A fal app's settings: the key, the queue, and the diffusion VLM's decoding."""

    _backend_kind: ClassVar[Backend] = "fal"

    api_key: SecretStr | None = Field(
        default_factory=_secret_from_env("FAL_KEY"),
        description="Else FAL_KEY, else FAL_KEY_ID + FAL_KEY_SECRET.",
    )
    timeout: float | None = Field(
        default=300.0,
        description="Seconds for the whole queued request (queue wait included); more than 1.",
    )
    poll_interval: float = Field(default=0.1, description="Seconds between queue status polls.")
    upload_threshold_bytes: int = Field(
        default=_FAL_UPLOAD_THRESHOLD_BYTES,
        description="Inline media up to this size; upload anything larger to fal's storage.",
    )
    upload_expires_in: str | int = Field(
        default=_FAL_UPLOAD_EXPIRES_IN,
        description="How long fal's storage keeps uploaded media: never, immediate (about a "
        "minute), 1h, 1d, 7d, 30d, 1y, or seconds.",
    )
    num_inference_steps: int | None = Field(
        default=None, description="Diffusion VLM decoding steps (1..1024); None: 256 rounded up."
    )
    block_length: int | None = Field(
        default=None, description="Diffusion VLM block length (8..128); None: the app's 32."
    )
    threshold: float | None = Field(
        default=None, description="Diffusion VLM confidence threshold (0..1); None: the app's 0.9."
    )

    @model_validator(mode="after")
    def _warn_max_retries(self) -> FalSettings:
        # LangChain passes max_retries=2 to every chat model: the default stays quiet.
        if "max_retries" in self.model_fields_set and self.max_retries != _MAX_RETRIES:
            warnings.warn(
                f"max_retries={self.max_retries} does not apply to {self.model} on fal: "
                "fal-client retries 408/409/429 and connection errors on its own and has no "
                "setting for it. Drop max_retries.",
                UserWarning,
                stacklevel=2,
            )
        return self

    def make_backend(self) -> FalBackend:
        from nemovlm.backends.fal import FalBackend, resolve_fal_key

        return FalBackend(
            profile=self.nemo_profile,
            api_key=resolve_fal_key(self.api_key),
            timeout=self.timeout,
            poll_interval=self.poll_interval,
            upload_threshold_bytes=self.upload_threshold_bytes,
            upload_expires_in=self.upload_expires_in,
            policy=self.media_policy(),
        )

    def request_options(
        self,
        overrides: Mapping[str, Any] | None = None,
        *,
        extra: Mapping[str, Any] | None = None,
        stop: Sequence[str] | None = None,
    ) -> RequestOptions:
        from nemovlm.backends.fal import with_diffusion_settings

        return with_diffusion_settings(
            super().request_options(overrides, extra=extra, stop=stop),
            self.nemo_profile,
            num_inference_steps=self.num_inference_steps,
            block_length=self.block_length,
            threshold=self.threshold,
        )
