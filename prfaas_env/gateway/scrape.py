"""Reading model servers' Prometheus metrics: a tolerant text-format parser and the
scrape loop.

:func:`parse_metrics` reads the Prometheus text exposition format (what vLLM and SGLang
serve on ``/metrics``) and keeps only the metric names asked for; a sample line it cannot
read is skipped and counted, never fatal. :func:`select` sums the samples of one metric whose
labels include a selector's (``name`` or ``name{label="value",...}``). :class:`Scraper` polls
a set of URLs on an interval with a timeout and hands each result (or the reason it failed:
``timeout``, ``connect``, ``http <status>``, ``garbage``) to a callback.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

__all__ = ["MetricSample", "ScrapeResult", "Scraper", "parse_metrics", "parse_selector", "select"]

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(,|$)')
_SELECTOR = re.compile(rf"^\s*({_NAME})\s*(?:\{{(.*)\}})?\s*$")


@dataclass(frozen=True)
class MetricSample:
    name: str
    labels: tuple[tuple[str, str], ...]
    value: float


@dataclass
class ScrapeResult:
    """One scrape: ``samples`` by metric name (None when it failed), ``error`` the reason,
    ``bad_lines`` sample lines skipped, ``at`` the monotonic time it finished (s)."""

    url: str
    samples: dict[str, list[MetricSample]] | None
    error: str | None
    bad_lines: int
    at: float


def _labels(text: str) -> tuple[tuple[str, str], ...]:
    out = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _LABEL.match(text, pos)
        if m is None:
            raise ValueError(f"cannot read labels {text!r}")
        value = m.group(2).replace("\\\\", "\0").replace('\\"', '"').replace("\\n", "\n")
        out.append((m.group(1), value.replace("\0", "\\")))
        pos = m.end()
    return tuple(out)


def parse_selector(text: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """``name{label="value",...}`` -> (name, labels); ValueError when it is not one."""
    m = _SELECTOR.match(text)
    if m is None:
        raise ValueError(f'{text!r} is not a metric selector like name{{label="value"}}')
    return m.group(1), _labels(m.group(2) or "")


def parse_metrics(text: str, names: Iterable[str]) -> tuple[dict[str, list[MetricSample]], int]:
    """Samples of the metrics called ``names`` in Prometheus text ``text`` and the number of
    sample lines that could not be read (comment lines and other metrics are ignored)."""
    wanted = set(names)
    out: dict[str, list[MetricSample]] = {}
    bad = 0
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] == "#":
            continue
        brace = line.find("{")
        space = line.find(" ")
        if brace != -1 and (space == -1 or brace < space):
            name = line[:brace]
            close = line.rfind("}")
            if close < brace:
                bad += 1
                continue
            label_text, rest = line[brace + 1 : close], line[close + 1 :]
        else:
            if space == -1:
                bad += 1
                continue
            name, label_text, rest = line[:space], "", line[space:]
        if name not in wanted:
            continue
        fields = rest.split()
        try:
            value = float(fields[0])
            labels = _labels(label_text) if label_text else ()
        except (ValueError, IndexError):
            bad += 1
            continue
        out.setdefault(name, []).append(MetricSample(name, labels, value))
    return out, bad


def select(
    samples: dict[str, list[MetricSample]], name: str, labels: tuple[tuple[str, str], ...] = ()
) -> float | None:
    """Sum of the finite samples of ``name`` whose labels include ``labels``; None when
    there is none."""
    total, found = 0.0, False
    for s in samples.get(name, ()):
        if all(kv in s.labels for kv in labels) and math.isfinite(s.value):
            total += s.value
            found = True
    return total if found else None


class Scraper:
    """Polls ``urls`` every ``interval_s`` (each URL on its own schedule, started at spread
    offsets) and calls ``on_result`` with a :class:`ScrapeResult`; only the metric names in
    ``names`` are kept. Run it with :meth:`run` inside an event loop; :meth:`stop` ends it."""

    def __init__(
        self,
        urls: Iterable[str],
        names: Iterable[str],
        on_result: Callable[[ScrapeResult], None],
        interval_s: float,
        timeout_s: float,
        max_bytes: int = 4 << 20,
    ) -> None:
        self.urls = list(dict.fromkeys(urls))
        self.names = set(names)
        self.on_result = on_result
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            n = max(len(self.urls), 1)
            tasks = [
                asyncio.create_task(self._loop(session, url, i * self.interval_s / n))
                for i, url in enumerate(self.urls)
            ]
            await self._stop.wait()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def scrape_once(self, session, url: str) -> ScrapeResult:  # type: ignore[no-untyped-def]
        import aiohttp

        try:
            async with session.get(url) as resp:
                if resp.status != 200:
                    return ScrapeResult(url, None, f"http {resp.status}", 0, time.monotonic())
                # the whole page, in chunks as it arrives (read(n) returns what is buffered)
                parts, size = [], 0
                async for chunk in resp.content.iter_chunked(1 << 16):
                    size += len(chunk)
                    if size > self.max_bytes:
                        return ScrapeResult(
                            url, None, "garbage: body too large", 0, time.monotonic()
                        )
                    parts.append(chunk)
            text = b"".join(parts).decode("utf-8")
        except asyncio.TimeoutError:
            return ScrapeResult(url, None, "timeout", 0, time.monotonic())
        except UnicodeDecodeError:
            return ScrapeResult(url, None, "garbage: not UTF-8 text", 0, time.monotonic())
        except (aiohttp.ClientError, OSError) as exc:
            return ScrapeResult(url, None, f"connect: {type(exc).__name__}", 0, time.monotonic())
        samples, bad = parse_metrics(text, self.names)
        if not samples:
            why = "garbage: no metric of interest" if bad or text.strip() else "garbage: empty"
            return ScrapeResult(url, None, why, bad, time.monotonic())
        return ScrapeResult(url, samples, None, bad, time.monotonic())

    async def _loop(self, session, url: str, offset_s: float) -> None:  # type: ignore[no-untyped-def]
        await asyncio.sleep(offset_s)
        while not self._stop.is_set():
            t0 = time.monotonic()
            result = await self.scrape_once(session, url)
            try:
                self.on_result(result)
            except Exception as exc:  # a bug in the consumer must not end the scrape loop
                print(f"picker: scrape handler failed on {url}: {exc!r}", flush=True)
            await asyncio.sleep(max(0.0, self.interval_s - (time.monotonic() - t0)))
