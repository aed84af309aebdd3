"""Async OpenAI-compatible client: streamed requests with timing, bounded retries."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field

import openai

# Transient failures worth another attempt; anything else (e.g. 400 prompt too long) is final.
_RETRY = (openai.APIConnectionError, openai.APITimeoutError, openai.InternalServerError,
          openai.RateLimitError)


class ServerUnreachable(RuntimeError):
    """The server did not answer after all attempts; the run cannot go on."""


class RequestFailed(RuntimeError):
    """The server rejected one request (e.g. prompt too long); only that sample fails."""


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    output_tokens: int
    t_start: float  # wall-clock (time.time) at send
    ttft: float  # seconds to the first streamed token
    latency: float  # seconds to the last byte
    token_times: list[float] = field(default_factory=list, repr=False)  # offsets of content chunks

    @property
    def tpot(self) -> float | None:
        """Mean time per output token after the first."""
        return (self.latency - self.ttft) / (self.output_tokens - 1) if self.output_tokens > 1 else None


class Client:
    def __init__(self, base_url: str, model: str | None = None, *, api: str = "chat",
                 retries: int = 3, timeout: float = 600.0, backoff: float = 0.5,
                 extra_body: dict | None = None):
        if api not in ("chat", "completions"):
            raise ValueError(f"unknown --api {api!r}; accepted: chat, completions")
        if retries < 1:
            raise ValueError(f"--retries {retries} must be >= 1")
        self.base_url, self.model, self.api = base_url.rstrip("/"), model, api
        self.retries, self.backoff, self.extra_body = retries, backoff, extra_body or {}
        self.oai = openai.AsyncOpenAI(base_url=self.base_url, max_retries=0, timeout=timeout,
                                      api_key=os.environ.get("OPENAI_API_KEY", "EMPTY"))

    async def _retry(self, fn):
        for attempt in range(1, self.retries + 1):
            try:
                return await fn()
            except _RETRY as err:
                if attempt == self.retries:
                    raise ServerUnreachable(f"cannot reach {self.base_url} after {self.retries} "
                                            f"attempts: {type(err).__name__}: {err}") from None
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
            except openai.APIStatusError as err:
                raise RequestFailed(f"{self.base_url} rejected the request: {err}") from None

    async def resolve_model(self) -> str:
        """``--model`` if given, else the first model the server lists."""
        if self.model is None:
            models = await self._retry(self.oai.models.list)
            if not models.data:
                raise ServerUnreachable(f"{self.base_url}/models lists no model; pass --model")
            self.model = models.data[0].id
        return self.model

    async def complete(self, prompt: str, max_tokens: int, temperature: float = 0.0) -> Completion:
        return await self._retry(lambda: self._stream(prompt, max_tokens, temperature))

    async def _stream(self, prompt: str, max_tokens: int, temperature: float) -> Completion:
        kw = dict(model=self.model, max_tokens=max_tokens, temperature=temperature, stream=True,
                  stream_options={"include_usage": True}, extra_body=self.extra_body)
        t0, wall = time.perf_counter(), time.time()
        if self.api == "chat":
            stream = await self.oai.chat.completions.create(
                messages=[{"role": "user", "content": prompt}], **kw)
        else:
            stream = await self.oai.completions.create(prompt=prompt, **kw)
        parts, times, usage = [], [], None
        async for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                piece = choice.delta.content if self.api == "chat" else choice.text
                if piece:
                    parts.append(piece)
                    times.append(time.perf_counter() - t0)
        latency = time.perf_counter() - t0
        return Completion(
            text="".join(parts),
            prompt_tokens=usage.prompt_tokens if usage else -1,
            output_tokens=usage.completion_tokens if usage else len(times),
            t_start=wall, ttft=times[0] if times else latency, latency=latency, token_times=times)

    async def close(self) -> None:
        await self.oai.close()
