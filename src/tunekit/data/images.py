"""Images in training data: read, checked and fitted to the pixel budget when the data is read.

An image is given as a path (a relative one resolves against the data file's folder, or the current directory for
rows given in Python), a ``file://``, ``http(s)://`` or base64 ``data:image/...;base64,...`` URL, a PIL image, the
image file's bytes, or the ``{"bytes": ..., "path": ...}`` object a ``datasets`` Image column stores. Each one is
decoded in full when the row is read, so a missing file, a corrupt or truncated one, a format PIL cannot read, an
animated image or one too large is a :class:`tunekit.DatasetError` naming the row, the field, the image and its
path, before any training starts. The image is then converted to RGB (a transparent one composited onto white, as
transformers' image processors do) and fitted to the pixel budget (:class:`ImageOptions`).

An ``http(s)`` URL is fetched when the row is read, with a timeout (:data:`FETCH_TIMEOUT_S`) and a size limit
(:data:`MAX_FETCH_BYTES`); a failed fetch is a DatasetError naming the URL. For repeatable runs, download the images
and give their paths.

Pillow is the ``vision`` extra: without it, a row with an image raises :class:`tunekit.MissingDependencyError`
naming ``pip install "tunekit[vision]"``; text-only data never imports it.

Example:
    >>> import io
    >>> from PIL import Image
    >>> from tunekit.data.images import ImageOptions, load_image
    >>> buffer = io.BytesIO()
    >>> Image.new("RGB", (64, 32), "red").save(buffer, format="PNG")
    >>> image = load_image(buffer.getvalue(), ImageOptions(max_pixels=512), where="row 1, image 1", row=1)
    >>> image.size, image.mode
    ((32, 16), 'RGB')
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import statistics
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunekit.errors import DatasetError, MissingDependencyError

__all__ = [
    "FETCH_TIMEOUT_S",
    "MAX_FETCH_BYTES",
    "ImageOptions",
    "image_stats",
    "load_image",
    "require_pillow",
]

FETCH_TIMEOUT_S = 20.0  # seconds to connect and read one http(s) image
MAX_FETCH_BYTES = 64 * 2**20  # an http(s) image larger than this is refused (a page or a stream, not an image)
# The formats image processors are routinely given; anything else PIL opens is read too (converted to RGB).
_ORIENTATION = 0x0112  # the EXIF tag of a photo's orientation
_FORMATS = "PNG, JPEG, WebP, GIF (one frame), BMP or TIFF"


@dataclass(frozen=True)
class ImageOptions:
    """How images are read: the pixel budget and where relative paths start.

    ``max_pixels``: an image with more pixels (width x height) is downscaled, aspect ratio kept, to at most this
    many when ``resize``, else refused. ``min_pixels``: one with fewer is upscaled to at least this many, or refused
    when not ``resize``. With no ``max_pixels``, an image over PIL's decompression-bomb limit
    (``PIL.Image.MAX_IMAGE_PIXELS``, about 89 million pixels) is refused. ``base_dir``: the folder relative paths
    resolve against (None: the current directory).
    """

    max_pixels: int | None = None
    min_pixels: int | None = None
    resize: bool = True
    base_dir: Path | None = None

    @classmethod
    def of(cls, training: Any, base_dir: Path | None = None) -> ImageOptions:
        """The options a :class:`tunekit.Training` sets (``max_pixels``, ``min_pixels``, ``resize_images``)."""
        return cls(
            max_pixels=getattr(training, "max_pixels", None),
            min_pixels=getattr(training, "min_pixels", None),
            resize=getattr(training, "resize_images", True),
            base_dir=base_dir,
        )

    def settings(self) -> str:
        """The budget as the user sets it on ``tk.Training`` (for error messages)."""
        return f"Training(max_pixels={self.max_pixels}, min_pixels={self.min_pixels}, resize_images={self.resize})"


def require_pillow(what: str = "a row with an image") -> Any:
    """The ``PIL.Image`` module, or MissingDependencyError naming the extra to install."""
    try:
        from PIL import Image
    except ImportError:
        raise MissingDependencyError(
            f'{what} needs pillow (the vision extra), which is not installed: pip install "tunekit[vision]"'
        ) from None
    return Image


def _is_pil(value: Any) -> bool:
    return type(value).__module__.startswith("PIL.") and hasattr(value, "convert") and hasattr(value, "size")


def _shown(value: Any) -> str:
    """An image's source as an error names it (a path or URL; never a whole base64 payload)."""
    if isinstance(value, (str, Path)):
        text = str(value)
        return repr(text if len(text) <= 80 or not text.startswith("data:") else text[:40] + "...")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"{len(bytes(value)):,} bytes"
    if _is_pil(value):
        return f"a PIL image ({value.size[0]}x{value.size[1]}, {value.mode})"
    return f"{type(value).__name__}"


def _data_url(url: str, where: str, row: int | None, field: str | None) -> bytes:
    head, sep, payload = url.partition(",")
    if not sep or not head.startswith("data:image/") or not head.endswith(";base64"):
        raise DatasetError(
            f"{where}: {_shown(url)} is not a base64 image data URL; write it as "
            "'data:image/png;base64,<the file's bytes in base64>'",
            row=row,
            field=field,
        )
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise DatasetError(f"{where}: the data URL's base64 is invalid ({e})", row=row, field=field) from None


def _fetch(url: str, where: str, row: int | None, field: str | None) -> bytes:
    # urllib rather than requests: one GET with a timeout needs no extra dependency.
    try:
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as response:
            data: bytes = response.read(MAX_FETCH_BYTES + 1)
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise DatasetError(
            f"{where}: could not fetch {url!r} ({reason}); check the URL, or download the images and give their "
            "paths (relative paths start from the data file's folder)",
            row=row,
            field=field,
        ) from None
    if len(data) > MAX_FETCH_BYTES:
        raise DatasetError(
            f"{where}: {url!r} is larger than {MAX_FETCH_BYTES // 2**20} MiB, too large for an image; download it "
            "and give a smaller copy's path",
            row=row,
            field=field,
        )
    return data


def _path(text: str, options: ImageOptions, where: str, row: int | None, field: str | None) -> Path:
    path = Path(urllib.parse.unquote(urllib.parse.urlparse(text).path) if text.startswith("file://") else text)
    path = path.expanduser()
    if not path.is_absolute():
        path = (options.base_dir or Path.cwd()) / path
    if not path.is_file():
        start = "the data file's folder" if options.base_dir is not None else "the current directory"
        what = "is a directory, not an image file" if path.is_dir() else "file not found"
        raise DatasetError(
            f"{where}: image {text!r}: {what} ({path}); a relative path starts from {start}",
            row=row,
            field=field,
        )
    return path


def _source(value: Any, options: ImageOptions, where: str, row: int | None, field: str | None) -> tuple[Any, str]:
    """What PIL opens (a path, a byte stream or an image) and how errors name it."""
    if _is_pil(value):
        return value, _shown(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(value)), _shown(value)
    if isinstance(value, dict) and set(value) <= {"bytes", "path"} and value:  # a datasets Image column's cell
        if value.get("bytes") is not None:
            return _source(value["bytes"], options, where, row, field)
        if isinstance(value.get("path"), str):
            return _source(value["path"], options, where, row, field)
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str) and value.strip():
        text = value.strip()
        if text.startswith("data:"):
            return io.BytesIO(_data_url(text, where, row, field)), _shown(text)
        if text.startswith(("http://", "https://")):
            return io.BytesIO(_fetch(text, where, row, field)), repr(text)
        scheme = urllib.parse.urlparse(text).scheme
        if len(scheme) > 1 and scheme != "file":  # one letter is a Windows drive
            raise DatasetError(
                f"{where}: image {text!r}: the URL scheme {scheme!r} cannot be read; give a path, an http(s) URL or "
                "a base64 data URL",
                row=row,
                field=field,
            )
        path = _path(text, options, where, row, field)
        return path, repr(str(path))
    raise DatasetError(
        f"{where}: expected an image (a path, an http(s) or data URL, a PIL image or the file's bytes), got "
        f"{type(value).__name__} ({value!r:.60})",
        row=row,
        field=field,
    )


def _decode(
    pil: Any, source: Any, shown: str, options: ImageOptions, where: str, row: int | None, field: str | None
) -> Any:
    """Open and fully decode one image (PIL reads lazily: a truncated file fails only when its pixels are read).

    Over PIL's decompression-bomb limit an image is refused unless a budget downscales it (``max_pixels`` with
    ``resize``); PIL itself refuses twice its limit at any budget."""
    shrinks = options.max_pixels is not None and options.resize
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore" if shrinks else "error", pil.DecompressionBombWarning)
            image = source if _is_pil(source) else pil.open(source)
            width, height = image.size
            if not shrinks and pil.MAX_IMAGE_PIXELS and width * height > pil.MAX_IMAGE_PIXELS:
                raise pil.DecompressionBombError("over the limit")
            if shrinks and not _is_pil(source) and width * height > options.max_pixels:
                # JPEG decodes at 1/2, 1/4 or 1/8 scale when asked (never below the size asked for): a large photo
                # is not decoded in full only to be downscaled.
                scale = math.sqrt(options.max_pixels / (width * height))  # type: ignore[operator]
                image.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
            image.load()
    except (pil.DecompressionBombError, pil.DecompressionBombWarning):
        raise  # named by the caller, with the budget
    except pil.UnidentifiedImageError:
        raise DatasetError(
            f"{where}: {shown} is not an image PIL can read (unsupported or unrecognised format); convert it to "
            f"{_FORMATS}",
            row=row,
            field=field,
        ) from None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... for a corrupt or truncated file
        raise DatasetError(
            f"{where}: {shown} is corrupt or truncated: PIL could not decode it ({type(e).__name__}: {e}); "
            "re-save or replace the file",
            row=row,
            field=field,
        ) from None
    return image


def _rgb(pil: Any, image: Any) -> Any:
    """RGB, a transparent image composited onto white: transformers' ``convert_to_rgb`` does the same, so the
    model trains on what its processor would show it."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = pil.new("RGBA", rgba.size, (255, 255, 255, 255))
        return pil.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _fit(pil: Any, image: Any, options: ImageOptions, where: str, row: int | None, field: str | None) -> Any:
    """The image within ``max_pixels`` and ``min_pixels``: resized (keeping its aspect) when ``options.resize``,
    else refused with a DatasetError."""
    width, height = image.size
    pixels = width * height
    if options.max_pixels is not None and pixels > options.max_pixels:
        down, bound = True, options.max_pixels
        fix = f"over max_pixels={bound:,} ({options.settings()}); shrink the image, raise max_pixels"
    elif options.min_pixels is not None and pixels < options.min_pixels:
        down, bound = False, options.min_pixels
        fix = f"under min_pixels={bound:,} ({options.settings()}); give a larger image, lower min_pixels"
    else:
        return image
    if not options.resize:
        raise DatasetError(
            f"{where}: the image is {width}x{height} = {pixels:,} pixels, {fix}, or set resize_images=True to "
            f"{'downscale' if down else 'upscale'} it",
            row=row,
            field=field,
        )
    scale = math.sqrt(bound / pixels)
    if down:
        size = (max(1, math.floor(width * scale)), max(1, math.floor(height * scale)))
    else:
        size = (math.ceil(width * scale), math.ceil(height * scale))
    return image.resize(size, pil.Resampling.BICUBIC)


def load_image(
    value: Any,
    options: ImageOptions | None = None,
    *,
    where: str,
    row: int | None = None,
    field: str | None = None,
) -> Any:
    """One image, read, checked, in RGB and within the budget of ``options``: a ``PIL.Image.Image``.

    ``where`` starts every error message (``"row 3, field 'images', image 2"``); ``row`` and ``field`` go on the
    :class:`tunekit.DatasetError`."""
    pil = require_pillow()
    options = options or ImageOptions()
    source, shown = _source(value, options, where, row, field)
    try:
        image = _decode(pil, source, shown, options, where, row, field)
    except (pil.DecompressionBombError, pil.DecompressionBombWarning):
        raise DatasetError(
            f"{where}: {shown} is over PIL's decompression-bomb limit of {pil.MAX_IMAGE_PIXELS:,} pixels "
            f"(PIL.Image.MAX_IMAGE_PIXELS); shrink the image file, or set Training(max_pixels=...) to downscale "
            "images up to twice that limit as they are read",
            row=row,
            field=field,
        ) from None
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        raise DatasetError(
            f"{where}: {shown} is an animated image ({frames} frames); give one frame as a still image "
            "(video is not supported)",
            row=row,
            field=field,
        )
    if not _is_pil(value):
        try:  # a phone photo's EXIF orientation: what a viewer shows, the pixels the model should see
            if image.getexif().get(_ORIENTATION, 1) != 1:
                image = _ops().exif_transpose(image)
        except Exception:  # an unreadable EXIF block: the pixels as stored
            pass
    return _fit(pil, _rgb(pil, image), options, where, row, field)


def _ops() -> Any:
    from PIL import ImageOps

    return ImageOps


def image_stats(images_per_row: Sequence[Sequence[Any]]) -> dict[str, Any] | None:
    """Images per row (min / mean / max over every row), the rows with images and the images' smallest and largest
    sizes (by pixels, as ``"WxH"``); None when no row has an image."""
    counts = [len(images) for images in images_per_row]
    sizes = [image.size for images in images_per_row for image in images]
    if not sizes:
        return None
    by_pixels = sorted(sizes, key=lambda s: (s[0] * s[1], s))
    return {
        "rows_with_images": sum(1 for n in counts if n),
        "images": len(sizes),
        "per_row": {"min": min(counts), "mean": round(statistics.fmean(counts), 2), "max": max(counts)},
        "smallest": f"{by_pixels[0][0]}x{by_pixels[0][1]}",
        "largest": f"{by_pixels[-1][0]}x{by_pixels[-1][1]}",
        "width": {"min": min(s[0] for s in sizes), "max": max(s[0] for s in sizes)},
        "height": {"min": min(s[1] for s in sizes), "max": max(s[1] for s in sizes)},
    }
