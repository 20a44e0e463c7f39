"""Images on each provider's wire: inline bytes, base64 data: URLs and fetched URLs."""

from __future__ import annotations

from server.providers.anthropic import request_body as anthropic_body
from server.providers.gemini import request_body as gemini_body
from server.providers.openai import _body as openai_body
from server.types import ChatMessage, ChatRequest, Image, Role

DATA_URL = "data:image/webp;base64,UklGRg=="
IMAGES = (Image(data=b"GIF89a", mime_type="image/gif"), Image(url=DATA_URL), Image(url="https://x.test/a.png?s=1"))


def request(content: str = "look") -> ChatRequest:
    return ChatRequest("m", (ChatMessage(Role.USER, content, images=IMAGES),), max_output_tokens=100)


def test_openai_takes_every_image_as_a_url() -> None:
    assert openai_body(request())["messages"][0]["content"] == [
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": "data:image/gif;base64,R0lGODlh"}},
        {"type": "image_url", "image_url": {"url": DATA_URL}},
        {"type": "image_url", "image_url": {"url": "https://x.test/a.png?s=1"}},
    ]


def test_anthropic_and_gemini_take_data_urls_inline_and_an_image_only_message_has_no_empty_text() -> None:
    assert anthropic_body(request(""))["messages"][0]["content"] == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/gif", "data": "R0lGODlh"}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/webp", "data": "UklGRg=="}},
        {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png?s=1"}},
    ]
    assert gemini_body(request(""))["contents"][0]["parts"] == [
        {"inlineData": {"mimeType": "image/gif", "data": "R0lGODlh"}},
        {"inlineData": {"mimeType": "image/webp", "data": "UklGRg=="}},
        {"fileData": {"mimeType": "image/png", "fileUri": "https://x.test/a.png?s=1"}},
    ]
