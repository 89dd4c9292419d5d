"""GraphQL over WebSocket (`graphql-transport-ws` only: the legacy `graphql-ws` subprotocol is
not offered, see STACK.md trap 9 and CVE-2026-35523)."""

import asyncio
from datetime import timedelta
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from strawberry.channels import GraphQLWSConsumer
from strawberry.exceptions import ConnectionRejectionError
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL
from strawberry.types.unset import UNSET, UnsetType

from delivery import live
from identity.auth import token_from_header, token_user


class LiveConsumer(GraphQLWSConsumer):
    """Authenticates once, from `connection_init` {"authToken": "<token>"} or an
    `Authorization: Bearer` header on the upgrade request; a bad, expired or revoked token
    closes the socket with 4403. Browser origins other than the server's own must be listed
    in WS_ALLOWED_ORIGINS."""

    auth_token: str | None = None

    @classmethod
    def build(cls, schema: Any) -> Any:
        return cls.as_asgi(
            schema=schema,
            subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL,),
            allowed_origins=settings.WS_ALLOWED_ORIGINS,
            connection_init_wait_timeout=timedelta(seconds=10),
        )

    async def connect(self) -> None:
        if GRAPHQL_TRANSPORT_WS_PROTOCOL not in self.scope.get("subprotocols", []):
            await self.close()  # before accept: the handshake is refused (HTTP 403)
            return
        await super().connect()

    async def disconnect(self, code: int) -> None:
        if self.run_task is not None:
            await super().disconnect(code)

    async def on_ws_connect(self, context: Any) -> UnsetType | dict[str, object] | None:
        params = context.get("connection_params") or {}
        raw = params.get("authToken") if isinstance(params, dict) else None
        if not isinstance(raw, str) or not raw:
            headers = dict(self.scope.get("headers", []))
            raw = token_from_header(headers.get(b"authorization", b"").decode("latin1"))
        user = await sync_to_async(token_user)(raw) if raw else None
        if user is None:
            raise ConnectionRejectionError()
        self.scope["user"] = user
        self.auth_token = raw
        # Lets worker threads of this process reach the in-memory channel layer (embedded).
        live.bind_server_loop(asyncio.get_running_loop())
        return UNSET
