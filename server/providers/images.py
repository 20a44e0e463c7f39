"""An image of a message as the provider wire formats carry it: inline base64 with its MIME type, or a URL."""

from __future__ import annotations

import base64
import mimetypes

from server.types import Image

__all__ = ["as_data_url", "inline", "url_mime_type"]


def inline(image: Image) -> tuple[str, str] | None:
    """(MIME type, base64 data) of an inline image or a base64 data: URL; None for a fetched URL."""
    if image.data:
        return image.mime_type, base64.b64encode(image.data).decode("ascii")
    if image.url.startswith("data:"):
        head, _, data = image.url.partition(",")
        return head[len("data:") :].removesuffix(";base64"), data
    return None


def as_data_url(image: Image) -> str:
    """The image as OpenAI's image_url takes it: its URL, or a data: URL of its bytes."""
    if image.data:
        return f"data:{image.mime_type};base64," + base64.b64encode(image.data).decode("ascii")
    return image.url


def url_mime_type(image: Image) -> str:
    """The MIME type of a fetched image: the client's, else guessed from the URL's extension."""
    return image.mime_type or mimetypes.guess_type(image.url.partition("?")[0])[0] or "image/jpeg"
