"""Streamed chat completions through the official `openai` SDK, many at once, against a
running codex-proxy; driven by tests/sdk_streams.rs, which reads the JSON this prints.

The SDK never retries (max_retries=0), so every 429 shows. Its httpx client records each
response's raw body beside the SDK's parse, to tell that a stream ended with `[DONE]`.

Modes:
  burst URL N [HOLD_FILE]  N streamed requests at once. With HOLD_FILE (the demo worker's
      DEMO_HOLD_FILE), turns hold their slots until every request is admitted, refused or
      queued (by /healthz); then the file is made and the admitted ones run to the end.
  disconnect URL HOLDERS   HOLDERS streams take every slot (their turns held by a
      DEMO_HOLD_FILE that is never made), one more queues and then gives up; the holders
      give up last. Reports /healthz as the queued one left.
  models URL               The SDK's `models.list()`, as it parses the answer.
"""

import asyncio
import json
import sys
import time

import openai

try:  # the SDK's own HTTP client: httpx2 from openai 3.x on, httpx before
    import httpx2 as httpx
except ImportError:
    import httpx

DEADLINE_S = 60.0


class Tee(httpx.AsyncByteStream):
    def __init__(self, inner, sink):
        self.inner = inner
        self.sink = sink

    async def __aiter__(self):
        async for chunk in self.inner:
            self.sink.append(chunk)
            yield chunk

    async def aclose(self):
        await self.inner.aclose()


class Recording(httpx.AsyncBaseTransport):
    """Keeps each response body by the request's `x-test-id`."""

    def __init__(self):
        self.inner = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=500))
        self.bodies = {}

    async def handle_async_request(self, request):
        response = await self.inner.handle_async_request(request)
        sink = self.bodies.setdefault(request.headers.get("x-test-id", ""), [])
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=Tee(response.stream, sink),
            extensions=response.extensions,
        )

    async def aclose(self):
        await self.inner.aclose()


def sdk(base, transport):
    http = httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(120.0))
    return openai.AsyncOpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, http_client=http)


async def health(probe, base):
    return (await probe.get(base + "/healthz")).json()


async def wait_health(probe, base, what, ok):
    deadline = time.monotonic() + DEADLINE_S
    while True:
        h = await health(probe, base)
        if ok(h):
            return h
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}: {json.dumps(h)}")
        await asyncio.sleep(0.02)


async def sample_active(probe, base, stop, seen):
    """Samples codex_streams_active from /metrics while the run lasts (the deterministic
    bound is /healthz streams.peak; this is the operator's view of the same)."""
    while not stop.is_set():
        text = (await probe.get(base + "/metrics")).text
        for line in text.splitlines():
            if line.startswith("codex_streams_active "):
                seen.append(float(line.split()[1]))
        await asyncio.sleep(0.01)


async def one(client, transport, i, counts):
    result = {"i": i, "status": None, "content": "", "content_chunks": 0, "done": False}
    try:
        stream = await client.chat.completions.create(
            model="codex-demo",
            messages=[{"role": "user", "content": f"stream number {i}"}],
            stream=True,
            extra_headers={"x-test-id": str(i)},
        )
        counts["admitted"] += 1
        result["status"] = 200
        async for chunk in stream:
            for choice in chunk.choices:
                if choice.delta.content:
                    result["content"] += choice.delta.content
                    result["content_chunks"] += 1
        body = b"".join(transport.bodies.get(str(i), [])).decode()
        result["done"] = body.rstrip().endswith("data: [DONE]")
    except openai.APIStatusError as e:
        counts["refused"] += 1
        result["status"] = e.status_code
        result["retry_after"] = e.response.headers.get("retry-after")
        body = e.body if isinstance(e.body, dict) else {}
        result["code"] = (body.get("error") or body).get("code") if body else None
    return result


async def burst(base, n, hold_file):
    transport = Recording()
    client = sdk(base, transport)
    counts = {"admitted": 0, "refused": 0}
    async with httpx.AsyncClient(timeout=10.0) as probe:
        stop, seen = asyncio.Event(), []
        sampler = asyncio.create_task(sample_active(probe, base, stop, seen))
        tasks = [asyncio.create_task(one(client, transport, i, counts)) for i in range(n)]
        released = None
        if hold_file:
            # Every request is accounted for: admitted (headers back), refused, or queued.
            def settled(h):
                return counts["admitted"] + counts["refused"] + h["worker"]["queue_depth"] == n

            released = await wait_health(probe, base, "every request admitted, refused or queued", settled)
            released["counts"] = dict(counts)
            open(hold_file, "w").close()
        results = await asyncio.gather(*tasks)
        stop.set()
        await sampler
        after = await health(probe, base)
    await client.close()
    return {"results": results, "at_release": released, "after": after, "sampled_active_max": max(seen, default=0)}


async def disconnect(base, holders):
    transport = Recording()
    client = sdk(base, transport)
    counts = {"admitted": 0, "refused": 0}
    async with httpx.AsyncClient(timeout=10.0) as probe:
        held = [asyncio.create_task(one(client, transport, i, counts)) for i in range(holders)]
        await wait_health(probe, base, "every slot held", lambda h: counts["admitted"] == holders)
        queued = asyncio.create_task(one(client, transport, holders, counts))
        at_queued = await wait_health(probe, base, "one request queued", lambda h: h["worker"]["queue_depth"] == 1)
        queued.cancel()
        left = await wait_health(probe, base, "the queue empty", lambda h: h["worker"]["queue_depth"] == 0)
        for task in held:
            task.cancel()
        await asyncio.gather(queued, *held, return_exceptions=True)
    await client.close()
    return {"at_queued": at_queued, "after_leaving": left, "counts": counts}


async def models(base):
    client = openai.AsyncOpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
    page = await client.models.list()
    await client.close()
    return {"models": [
        {"id": m.id, "object": m.object, "created": m.created, "owned_by": m.owned_by}
        for m in page.data
    ]}


def main():
    mode, base = sys.argv[1], sys.argv[2]
    if mode == "models":
        out = asyncio.run(models(base))
    elif mode == "burst":
        out = asyncio.run(burst(base, int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else None))
    elif mode == "disconnect":
        out = asyncio.run(disconnect(base, int(sys.argv[3])))
    else:
        raise SystemExit(f"unknown mode {mode}")
    out["openai_version"] = openai.__version__
    print(json.dumps(out))


if __name__ == "__main__":
    main()
