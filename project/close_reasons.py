"""daphne (4.2) drops the reason of an ASGI `websocket.close`: its serverClose sends the code
alone, so clients saw 4401, 4403 and 4429 with an empty reason. `install_close_reasons` makes
daphne's WebSocket protocol send the reason too (the ASGI spec's `reason` key, cut to the 123
bytes of UTF-8 that RFC 6455 allows). project/asgi.py installs it, so it holds for
`daphne project.asgi:application` and for `manage.py serve`."""

from typing import Any

MAX_REASON_BYTES = 123


def _reason(text: str) -> str:
    return text.encode()[:MAX_REASON_BYTES].decode(errors="ignore")


def install_close_reasons() -> None:
    """Patch daphne's WebSocketProtocol.handle_reply (idempotent)."""
    from daphne.ws_protocol import WebSocketProtocol

    if getattr(WebSocketProtocol, "_sends_close_reasons", False):
        return
    handle_reply = WebSocketProtocol.handle_reply

    def with_reasons(self: Any, message: dict[str, Any]) -> None:
        if (
            message.get("type") == "websocket.close"
            and message.get("reason")
            and self.state != self.STATE_CONNECTING
        ):
            self.sendClose(code=message.get("code") or 1000, reason=_reason(message["reason"]))
            return
        handle_reply(self, message)

    WebSocketProtocol.handle_reply = with_reasons
    WebSocketProtocol._sends_close_reasons = True
