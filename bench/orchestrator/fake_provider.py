"""An instant fake OpenAI-format provider for the orchestrator benchmark (its own process).

    python bench/orchestrator/fake_provider.py     # prints the bound port, serves until killed

`POST /v1/chat/completions` streams a short answer at once: a role chunk, four content chunks,
a finish chunk, a usage chunk and ``[DONE]``, exactly as OpenAI's Chat Completions streaming
format does. `POST /slow/v1/chat/completions` sends the same answer after `SLOW_SECONDS`, so
sessions can be held in flight while their memory is measured. `GET /stats` returns how many
requests were answered and the seconds the handler spent on them (the provider's own share of
a turn, which the benchmark subtracts).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

from aiohttp import web

SLOW_SECONDS = 2.0
CREATED = 1_767_225_600


def stream_body(model: str, speaker: str) -> bytes:
    """The whole SSE body of one streamed answer."""

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    words = [speaker, " agrees", " with", " the plan"]
    events: list[dict[str, Any]] = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": word}) for word in words]
    events.append(chunk({}, "stop"))
    events.append(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": model,
            "choices": [],
            "usage": {"prompt_tokens": 40, "completion_tokens": 5, "total_tokens": 45},
        }
    )
    body = "".join(f"data: {json.dumps(event)}\n\n" for event in events) + "data: [DONE]\n\n"
    return body.encode()


class FakeProvider:
    def __init__(self) -> None:
        self.requests = 0
        self.busy_seconds = 0.0

    async def instant(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, 0.0)

    async def slow(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, SLOW_SECONDS)

    async def _answer(self, request: web.Request, delay: float) -> web.StreamResponse:
        started = time.perf_counter()
        chat = await request.json()
        system = next((m["content"] for m in chat["messages"] if m["role"] == "system"), "")
        who = re.search(r"You are (\w+)", system)
        if delay:
            await asyncio.sleep(delay)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        try:
            await response.prepare(request)
            await response.write(stream_body(chat["model"], who.group(1) if who else "someone"))
            await response.write_eof()
        except ConnectionResetError:  # the gateway cancelled the call (a cancelled session)
            return response
        self.requests += 1
        self.busy_seconds += time.perf_counter() - started - delay
        return response

    async def stats(self, _: web.Request) -> web.Response:
        return web.json_response({"requests": self.requests, "busy_seconds": self.busy_seconds})


async def serve() -> None:
    provider = FakeProvider()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", provider.instant)
    app.router.add_post("/slow/v1/chat/completions", provider.slow)
    app.router.add_get("/stats", provider.stats)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    server = site._server
    assert server is not None
    print(server.sockets[0].getsockname()[1], flush=True)  # type: ignore[attr-defined]
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(serve())
