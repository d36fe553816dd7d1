"""Images checked against a model and shaped for it: ``prepare_image`` (cache
lookup; an http(s) URL kept, or fetched only when ``needs_fetch`` says its extension
names a format the model does not take) -> ``_process_image_bytes`` (sniff, read the
size from the header and refuse more than ``MediaPolicy.max_decode_pixels`` before
decoding, decode (JPEG at reduced scale), downscale to the pixel budget, then turn
upright and convert to ``profile.convert_images_to``). Peak memory stays near one
decoded copy of the picture: every later step works on the downscaled one."""

from __future__ import annotations

import io
import math

from PIL import Image

from nemovlm.errors import UnsupportedInputError
from nemovlm.media.cache import DATA_URLS, IMAGE_CACHE, content_key
from nemovlm.media.fetch import fetch_remote
from nemovlm.media.formats import (
    IMAGE_FORMATS,
    MIME_TYPES,
    format_from_url,
    normalize_format,
    normalize_formats,
    sniff_format,
)
from nemovlm.media.prepared import PreparedMedia, model_label, refuse_kind
from nemovlm.media.sources import (
    MediaPolicy,
    checked_data_url,
    parse_data_url,
    read_file,
    refuse_url_scheme,
    scheme_of,
    stat_file,
)
from nemovlm.media.worker import check_cancelled
from nemovlm.messages import MediaPart
from nemovlm.profiles import ModelProfile

# Formats Pillow can write, by our name.
_PIL_WRITERS = {
    "jpeg": "JPEG",
    "png": "PNG",
    "gif": "GIF",
    "webp": "WEBP",
    "bmp": "BMP",
    "tiff": "TIFF",
    "avif": "AVIF",
}


def prepare_image(
    part: MediaPart,
    profile: ModelProfile,
    policy: MediaPolicy,
) -> PreparedMedia:
    if not profile.accepts_images:
        raise refuse_kind(part, profile)
    settings = _settings(profile, policy)
    formats, target, budget, cap = settings

    def process(data: bytes) -> PreparedMedia:
        return _process_image_bytes(data, part, profile, formats, target, budget, cap)

    if part.url is not None:
        scheme = scheme_of(part.url)
        if scheme in ("http", "https"):
            if not needs_fetch(part, profile):
                return PreparedMedia.passed_through("image", part.url)
            # The extension says the model cannot take it: fetch, sniff and convert.
            fetched = fetch_remote(part.url, policy, part)
            return IMAGE_CACHE.get_or_make(
                (content_key(fetched), settings), lambda: process(fetched)
            )
        if scheme != "data":
            raise refuse_url_scheme(part)
        _, key, decoded = checked_data_url(part.url, part.describe())

        def from_url() -> PreparedMedia:
            assert part.url is not None
            data = decoded if decoded is not None else parse_data_url(part.url, part.describe())[1]
            return process(data)

        return IMAGE_CACHE.get_or_make((key, settings), from_url)
    if part.data is not None:
        data = part.data
        return IMAGE_CACHE.get_or_make((content_key(data), settings), lambda: process(data))
    assert part.path is not None
    path = part.path.expanduser().resolve()
    st = stat_file(path, part)
    # Same path with the same mtime and size: reuse without reading the file again.
    key = (("file", str(path), st.st_mtime_ns, st.st_size), settings)
    return IMAGE_CACHE.get_or_make(key, lambda: process(read_file(path, part)))


def _settings(
    profile: ModelProfile, policy: MediaPolicy
) -> tuple[frozenset[str] | None, str | None, int | None, int]:
    """What a prepared image depends on besides its bytes (part of its cache key)."""
    formats = normalize_formats(profile.image_formats)
    target = normalize_format(profile.convert_images_to) if profile.convert_images_to else None
    budget = (policy.max_image_pixels or profile.max_image_pixels) if policy.downscale else None
    return formats, target, budget, policy.max_decode_pixels


def is_prepared(part: MediaPart, profile: ModelProfile, policy: MediaPolicy) -> bool:
    """Whether ``part`` is a data URL checked before whose prepared image is cached for
    these settings: preparing it again is two lookups, nothing to decode."""
    if part.kind != "image" or part.url is None or not profile.accepts_images:
        return False
    known = DATA_URLS.get(part.url) if scheme_of(part.url) == "data" else None
    return known is not None and IMAGE_CACHE.holds((known[1], _settings(profile, policy)))


def needs_fetch(part: MediaPart, profile: ModelProfile) -> bool:
    """Whether preparing ``part`` for ``profile`` fetches an http(s) URL: an image URL
    whose extension names a format the model does not take (to convert it)."""
    if part.kind != "image" or part.url is None or not profile.accepts_images:
        return False
    if scheme_of(part.url) not in ("http", "https"):
        return False
    formats = normalize_formats(profile.image_formats)
    url_format = format_from_url(part.url)
    return formats is not None and url_format is not None and url_format not in formats


def _process_image_bytes(
    data: bytes,
    part: MediaPart,
    profile: ModelProfile,
    formats: frozenset[str] | None,
    target: str | None,
    budget: int | None,
    cap: int,
) -> PreparedMedia:
    check_cancelled()
    fmt = sniff_format(data)
    if fmt is None:
        raise UnsupportedInputError(
            f"The {part.describe()} is not in an image format this package recognises "
            "(JPEG, PNG, GIF, WebP, BMP, TIFF, AVIF, HEIC); it may be corrupt or not an image."
        )
    if fmt not in IMAGE_FORMATS:
        raise UnsupportedInputError(
            f"The {part.describe()} holds {fmt} data, not an image; send a video as a video part."
        )
    needs_conversion = formats is not None and fmt not in formats
    if needs_conversion and target is None:
        raise UnsupportedInputError(
            f"{model_label(profile)} accepts images as {', '.join(sorted(formats or ()))}; "
            f"the {part.describe()} is {fmt}. Convert it to one of those first "
            "(or set the profile's convert_images_to to let nemovlm convert it)."
        )
    if needs_conversion and target not in _PIL_WRITERS:
        raise UnsupportedInputError(
            f"The profile asks to convert images to '{target}', which nemovlm cannot write; "
            f"use one of {', '.join(sorted(_PIL_WRITERS))} in convert_images_to."
        )
    image = _open_image(data, fmt, part)
    width, height = image.size
    if width * height > cap:
        raise UnsupportedInputError(
            f"The {part.describe()} is {width}x{height} pixels "
            f"({width * height / 1e6:.0f} megapixels), more than the client decodes "
            f"(MediaPolicy.max_decode_pixels, max_decode_pixels on the chat models: {cap}); "
            "a small file can declare a huge picture. Scale it down before sending, or "
            "raise the limit if you trust it."
        )
    IMAGE_CACHE.count_decode()
    # EXIF orientations 5-8 turn the picture a quarter: it shows as height x width.
    try:
        # Reading EXIF (kept after the pixels in a PNG) or counting frames (TIFF) can
        # decode a broken file, so corruption may show here already.
        turned = image.getexif().get(0x0112) in (5, 6, 7, 8)
        # Camera JPEGs (MPO) carry extra pictures as "frames", but they are stills.
        animated = getattr(image, "n_frames", 1) > 1 and fmt != "jpeg"
    except Exception as exc:  # Pillow's plugins raise many types on malformed input.
        raise UnsupportedInputError(
            f"The {part.describe()} cannot be decoded ({exc}); it may be corrupt or truncated."
        ) from exc
    untouched = PreparedMedia(
        kind="image",
        url=None,
        data=data,
        path=None,
        mime_type=MIME_TYPES[fmt],
        format=fmt,
        width=height if turned else width,
        height=width if turned else height,
    )
    # A downscaled animation would lose its frames; an accepted one goes as it is.
    too_big = budget is not None and width * height > budget and not animated
    if not needs_conversion and (not too_big or fmt not in _PIL_WRITERS):
        # Decoding at 1/8 scale still reads every byte, so corruption shows, cheaply.
        _decode(image, part, draft_to=(max(1, width // 8), max(1, height // 8)))
        return untouched
    out_format = target if needs_conversion and target else fmt
    check_cancelled()
    if too_big and budget is not None:
        _decode(image, part, draft_to=_fit(width, height, budget))
    else:
        _decode(image, part)
    check_cancelled()
    source_mode = image.mode
    icc_source = image.info.get("icc_profile")
    orientation = _orientation(image)
    converted = image
    if too_big and budget is not None:
        # Shrink first, so turning and converting work on the small copy.
        converted = _to_encodable_mode(converted, out_format, for_resize=True)
        converted = converted.resize(
            _fit(converted.width, converted.height, budget), Image.Resampling.LANCZOS
        )
        image.close()  # the full-size pixels are not needed any more
    converted = _upright(converted, orientation)
    converted = _to_encodable_mode(converted, out_format)
    # An ICC profile only describes the pixels while the colour mode is unchanged.
    icc = icc_source if converted.mode == source_mode else None
    encoded = _encode(converted, out_format, icc)
    if not needs_conversion and len(encoded) >= len(data):
        # Re-encoding did not pay off: the original bytes are kept untouched.
        return untouched
    return PreparedMedia(
        kind="image",
        url=None,
        data=encoded,
        path=None,
        mime_type=MIME_TYPES[out_format],
        format=out_format,
        width=converted.width,
        height=converted.height,
    )


def _open_image(data: bytes, fmt: str, part: MediaPart) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise UnsupportedInputError(
            f"The {part.describe()} has too many pixels to decode safely ({exc}; Pillow's "
            "own limit, Image.MAX_IMAGE_PIXELS, ahead of MediaPolicy.max_decode_pixels); "
            "resize it before sending."
        ) from exc
    except Exception as exc:  # Pillow's plugins raise many types on malformed input.
        raise UnsupportedInputError(
            f"The {part.describe()} looks like {fmt} but cannot be decoded ({exc}); "
            "it may be corrupt or truncated."
        ) from exc


def _decode(image: Image.Image, part: MediaPart, draft_to: tuple[int, int] | None = None) -> None:
    """Decode the pixels (first frame), so corrupt data fails here and not at the server."""
    try:
        if draft_to is not None and image.format in ("JPEG", "MPO"):
            # JPEG can decode straight at 1/2, 1/4 or 1/8 scale, never below draft_to.
            image.draft(image.mode, draft_to)
        image.load()
    except Exception as exc:  # Pillow's decoders raise many types on malformed input.
        raise UnsupportedInputError(
            f"The {part.describe()} cannot be decoded ({exc}); it may be corrupt or truncated."
        ) from exc


# EXIF orientation -> the transposition that shows the picture upright.
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block: shown as stored, like viewers do
        return 1
    return value if isinstance(value, int) else 1


def _upright(image: Image.Image, orientation: int) -> Image.Image:
    """``image`` turned as its EXIF orientation asks (``ImageOps.exif_transpose`` would
    also copy an upright picture in full)."""
    method = _UPRIGHT.get(orientation)
    return image if method is None else image.transpose(method)


def _fit(width: int, height: int, budget: int) -> tuple[int, int]:
    """The largest size with the same aspect ratio and at most ``budget`` pixels."""
    scale = math.sqrt(budget / (width * height))
    new_w, new_h = max(1, math.floor(width * scale)), max(1, math.floor(height * scale))
    # Guards against float rounding only; floor() already keeps within the budget.
    while new_w * new_h > budget and max(new_w, new_h) > 1:
        if new_w >= new_h:
            new_w -= 1
        else:
            new_h -= 1
    return new_w, new_h


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    )


def _to_encodable_mode(image: Image.Image, fmt: str, for_resize: bool = False) -> Image.Image:
    if image.mode.startswith("I;16"):
        # 16-bit grey: keep the top 8 bits, where a plain convert would clip to white.
        image = image.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    alpha = _has_alpha(image)
    if fmt == "jpeg":
        if image.mode in ("L", "RGB"):
            return image
        if alpha:
            # JPEG has no alpha: flatten onto white, as viewers show transparency.
            rgba = image.convert("RGBA")
            flat = Image.new("RGB", rgba.size, (255, 255, 255))
            flat.paste(rgba, mask=rgba.getchannel("A"))
            return flat
        return image.convert("RGB")
    # LANCZOS needs continuous tones; PNG and GIF can also store palette images.
    keep: tuple[str, ...] = ("L", "RGB", "RGBA")
    if not for_resize and fmt in ("png", "gif"):
        keep = ("1", "L", "P", "RGB", "RGBA")
    if image.mode in keep:
        return image
    return image.convert("RGBA" if alpha else "RGB")


def _encode(image: Image.Image, fmt: str, icc: bytes | None) -> bytes:
    buffer = io.BytesIO()
    options: dict[str, object] = {}
    if fmt in ("jpeg", "webp", "avif"):
        options["quality"] = 90
    if icc and fmt in ("jpeg", "png", "webp", "tiff", "avif"):
        options["icc_profile"] = icc
    image.save(buffer, _PIL_WRITERS[fmt], **options)
    return buffer.getvalue()
