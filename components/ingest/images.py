"""Image checks, run in parallel: the file exists, decodes completely with PIL, has a sane size; SHA-256."""

from __future__ import annotations

import hashlib
import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from components.shared import storage


@dataclass(frozen=True)
class ImageCheck:
    """Outcome of checking one image URI ("" reason = good)."""

    uri: str
    sha256: str | None
    reason: str = ""
    message: str = ""


def check_image(uri: str, min_side: int, max_side: int) -> ImageCheck:
    """Read, hash and fully decode one image (``load()`` catches truncated files that ``open()`` accepts)."""
    from PIL import Image

    try:
        data = storage.read_bytes(uri)
    except (storage.StorageError, OSError) as err:
        return ImageCheck(uri, None, "image_missing", f"image {uri}: cannot be read ({err})")
    digest = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            width, height = img.size
    except Exception as err:  # PIL raises many types for corrupt data
        return ImageCheck(
            uri, digest, "image_undecodable", f"image {uri}: does not decode ({type(err).__name__}: {err})"
        )
    if min(width, height) < min_side or max(width, height) > max_side:
        return ImageCheck(
            uri,
            digest,
            "image_size_out_of_bounds",
            f"image {uri}: {width}x{height} pixels, outside [{min_side}, {max_side}] per side",
        )
    return ImageCheck(uri, digest)


def check_images(uris: list[str], workers: int, min_side: int, max_side: int) -> dict[str, ImageCheck]:
    """Check many images in parallel (I/O bound: threads); returns one result per distinct URI."""
    unique = sorted(set(uris))
    if not unique:
        return {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda u: check_image(u, min_side, max_side), unique)
        return {r.uri: r for r in results}
