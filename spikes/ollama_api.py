r"""Spike: Ollama's native HTTP API as a node backend sees it, and its mapping to OpenAI shapes.

What it explores, with httpx: ``GET /api/tags`` (the model list), ``POST /api/chat`` streamed
(NDJSON: one JSON object per line, the last one with ``"done": true``, the token counts and
nanosecond durations), the same request with ``"stream": false``, a tool call (arguments arrive
as a JSON *object*), ``options.num_predict`` (the ``max_tokens`` equivalent, ``done_reason:
"length"``), and ``POST /api/embed``. Then it turns the stream into OpenAI chat-completion
chunks the way tooti's Ollama adapter does.

Run it against a real Ollama, or (default) against the repository's stand-in written from
Ollama's API docs, which the spike starts as ``python -m tests.standins.ollama --port 0``::

    python spikes/ollama_api.py                                  # starts the stand-in
    python spikes/ollama_api.py --url http://127.0.0.1:11434 --model llama3.2 --embed-model nomic-embed-text

Printed here, against the stand-in (no Ollama was available where this was run)::

    models: ['llama3.2:latest', 'nomic-embed-text:latest']
    stream: content-type application/x-ndjson, 9 lines in 9 body reads, first after 1.6 ms
      line 0: {"model": "llama3.2:latest", "message": {"role": "assistant", "content": "Tell"}, ...
      last:   done=True done_reason=stop prompt_eval_count=8 eval_count=8 eval_duration=994083 ns
              total_duration=1.0 ms, keys: created_at, done, done_reason, eval_count, eval_duration,
              load_duration, message, model, prompt_eval_count, prompt_eval_duration, total_duration
    non-stream: one object, done=True, content 'Tell me about the blue sky please, briefly.'
    tool call: [{"function": {"name": "get_weather", "arguments": {"location": "Paris", "unit": "celsius"}}}]
      arguments is a dict: True
    num_predict=3: eval_count=3 done_reason=length
    embed: 2 vectors x 8 dims, |v| = 1.000, prompt_eval_count=4
    as OpenAI: 10 chunks; first {"role": "assistant", "content": "Tell"}; last finish_reason=stop;
      usage {'prompt_tokens': 8, 'completion_tokens': 8, 'total_tokens': 16}
    as OpenAI tool call: {"index": 0, "id": "call_0", "type": "function", "function": {"name":
      "get_weather", "arguments": "{\"location\": \"Paris\", \"unit\": \"celsius\"}"}}

So: one token per line and one line per body read here (a real server may put several lines
in one read, or split one); the final ``done`` line carries no text, only the counts and
nanosecond durations; a tool call arrives whole in one line, with object arguments and no id.

What tooti took from it (``tooti/node/backends/ollama.py`` with ``_ollama_request.py`` and
``_ollama_reply.py``): requests map ``max_tokens`` -> ``options.num_predict``, ``stop`` ->
``options.stop``, sampling fields -> ``options.*``, and tool-call arguments from a JSON string
to an object; answers map ``prompt_eval_count`` / ``eval_count`` -> ``usage.prompt_tokens`` /
``completion_tokens``, ``done_reason: "length"`` -> ``finish_reason: "length"`` (else
``"stop"``, or ``"tool_calls"`` when the model called one), tool calls get an ``id``, an
``index`` and string arguments; a mid-stream ``{"error": ...}`` line is a backend error; the
stream is parsed line by line as bytes arrive (lines, not HTTP chunks, are the unit), and the
``done`` line is the only end marker - a stream that closes without it is truncated.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"location": {"type": "string"}, "unit": {"type": "string"}},
                "required": ["location"],
            },
        },
    }
]


def start_standin() -> tuple[subprocess.Popen[str], str]:
    """The stand-in on a free port; its first stdout line names the URL once it accepts."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.standins.ollama", "--port", "0"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    found = re.search(r"http://\S+", line)
    if found is None:
        proc.kill()
        raise SystemExit(f"stand-in did not start: {line!r}")
    return proc, found.group(0)


def ndjson(response: httpx.Response, reads: list[int] | None = None) -> Iterator[dict[str, Any]]:
    """Objects as their lines complete: a body read may hold several lines or half of one, so
    lines (not HTTP chunks) are the unit. ``reads`` collects the size of every body read."""
    buf = b""
    for data in response.iter_bytes():
        if reads is not None:
            reads.append(len(data))
        buf += data
        *lines, buf = buf.split(b"\n")
        for line in lines:
            if line.strip():
                yield json.loads(line)
    if buf.strip():
        yield json.loads(buf)  # a last line without its newline


def short(obj: object, width: int = 96) -> str:
    text = json.dumps(obj)
    return text if len(text) <= width else text[: width - 5] + ", ..."


def to_openai(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ollama chat stream objects -> OpenAI chat.completion.chunk deltas (+ usage), in brief."""
    chunks: list[dict[str, Any]] = []
    calls = 0
    for i, obj in enumerate(objs):
        if "error" in obj:  # Ollama's mid-stream failure line
            raise RuntimeError(obj["error"])
        message = obj.get("message") or {}
        delta: dict[str, Any] = {"role": "assistant"} if i == 0 else {}
        if message.get("content"):
            delta["content"] = message["content"]
        if message.get("tool_calls"):
            delta["tool_calls"] = [
                {
                    "index": calls + j,
                    "id": f"call_{calls + j}",  # Ollama sends none; OpenAI clients need one
                    "type": "function",
                    # OpenAI carries arguments as a JSON string, Ollama as an object.
                    "function": {
                        "name": c["function"]["name"],
                        "arguments": json.dumps(c["function"]["arguments"]),
                    },
                }
                for j, c in enumerate(message["tool_calls"])
            ]
            calls += len(message["tool_calls"])
        if delta:
            chunks.append({"delta": delta, "finish_reason": None})
        if obj.get("done"):
            reason = "tool_calls" if calls else ("length" if obj.get("done_reason") == "length" else "stop")
            p, c = obj.get("prompt_eval_count", 0), obj.get("eval_count", 0)
            chunks.append({"delta": {}, "finish_reason": reason})
            chunks.append({"usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}})
    return chunks


def explore(client: httpx.Client, model: str | None, embed_model: str | None) -> None:
    tags = client.get("/api/tags").json()["models"]
    names = [m["name"] for m in tags]
    print(f"models: {names}")
    model = model or next(n for n in names if "embed" not in n)
    embed_model = embed_model or next((n for n in names if "embed" in n), model)
    messages = [{"role": "user", "content": "Tell me about the blue sky please, briefly."}]

    t0 = time.perf_counter()
    with client.stream("POST", "/api/chat", json={"model": model, "messages": messages}) as r:
        r.raise_for_status()
        objs, first, reads = [], 0.0, []
        for obj in ndjson(r, reads):  # "stream": true is Ollama's default
            first = first or (time.perf_counter() - t0) * 1000
            objs.append(obj)
        ctype = r.headers.get("content-type")
    last = objs[-1]
    print(
        f"stream: content-type {ctype}, {len(objs)} lines in {len(reads)} body reads, first after {first:.1f} ms"
    )
    print(f"  line 0: {short(objs[0])}")
    print(
        f"  last:   done={last['done']} done_reason={last.get('done_reason')}"
        f" prompt_eval_count={last.get('prompt_eval_count')} eval_count={last.get('eval_count')}"
        f" eval_duration={last.get('eval_duration')} ns"
    )
    print(
        f"          total_duration={last.get('total_duration', 0) / 1e6:.1f} ms, keys: {', '.join(sorted(last))}"
    )
    assert all(not o.get("done") for o in objs[:-1]), "only the last line is done"

    one = client.post("/api/chat", json={"model": model, "messages": messages, "stream": False}).json()
    print(f"non-stream: one object, done={one['done']}, content {one['message']['content']!r}")

    weather = [{"role": "user", "content": "What is the weather in Paris?"}]
    with client.stream("POST", "/api/chat", json={"model": model, "messages": weather, "tools": TOOLS}) as r:
        tool_objs = list(ndjson(r))
    calls = [c for o in tool_objs for c in (o.get("message") or {}).get("tool_calls") or []]
    print(f"tool call: {short(calls)}")
    print(f"  arguments is a dict: {bool(calls) and isinstance(calls[0]['function']['arguments'], dict)}")

    capped = client.post(
        "/api/chat",
        json={"model": model, "messages": messages, "stream": False, "options": {"num_predict": 3}},
    ).json()
    print(f"num_predict=3: eval_count={capped.get('eval_count')} done_reason={capped.get('done_reason')}")

    emb = client.post("/api/embed", json={"model": embed_model, "input": ["hello world", "blue sky"]}).json()
    vectors = emb["embeddings"]
    norm = math.sqrt(sum(x * x for x in vectors[0]))
    print(
        f"embed: {len(vectors)} vectors x {len(vectors[0])} dims, |v| = {norm:.3f},"
        f" prompt_eval_count={emb.get('prompt_eval_count')}"
    )

    chunks = to_openai(objs)
    print(
        f"as OpenAI: {len(chunks)} chunks; first {json.dumps(chunks[0]['delta'])};"
        f" last finish_reason={chunks[-2]['finish_reason']};\n  usage {chunks[-1]['usage']}"
    )
    print(f"as OpenAI tool call: {short(to_openai(tool_objs)[0]['delta']['tool_calls'][0], 180)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", help="a running Ollama (default: start the stand-in)")
    ap.add_argument("--model", help="chat model (default: the first listed that is not an embedder)")
    ap.add_argument("--embed-model", help="embedding model (default: the first listed with 'embed')")
    args = ap.parse_args()
    proc, url = (None, args.url) if args.url else start_standin()
    try:
        # Timeouts set on purpose: httpx's default is 5 s for every phase, which a model
        # loading into memory (seconds to minutes on first use) easily exceeds.
        with httpx.Client(base_url=url, timeout=httpx.Timeout(120.0, connect=5.0)) as client:
            explore(client, args.model, args.embed_model)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)


if __name__ == "__main__":
    main()
