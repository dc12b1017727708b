"""Every provider's happy path against a fake speaking its exact wire format: text, tool
calls assembled from fragments, reasoning, normalized finish reasons, usage from wherever the
provider reports it (never double-counted), and the request each provider expects."""

from __future__ import annotations

from typing import Any

from agentmesh_gateway_fakes import wire
from agentmesh_gateway_fakes.calls import WEATHER_TOOL, ask, compact, config, finished, text_of
from agentmesh_gateway_fakes.server import FakeProvider, Reply, Stream

from agentmesh_gateway.domain import FinishReason, ThinkingDelta, ToolCallDelta


def route(provider: str, model: str, url: str, extra: str = "") -> str:
    return f"""
routes:
  main:
    - name: d1
      provider: {provider}
      model: {model}
      base_url: {url}
      api_key_env: KEY
      input_price_per_million: 2.0
      output_price_per_million: 8.0
{extra}
"""


ENV = {"KEY": "sk-test-0123456789abcdef"}


async def test_openai_text_streams_deltas_and_takes_usage_from_the_usage_chunk(
    fake: FakeProvider, harness: Any
) -> None:
    fake.push(Stream(wire.sse(*wire.openai_text(), done=True)))
    h = harness(route("openai", "gpt-4.1-mini", fake.url + "/v1"), ENV)
    events = await h.run(
        ask(config=config(temperature=0.7, max_tokens=256, top_p=0.9, stop=("\n\nUser:",)))
    )
    assert compact(events) == ["started", "delta", "finished"]
    assert text_of(events) == "Expect mild weather in Paris tomorrow."
    done = finished(events)
    assert done.finish_reason is FinishReason.STOP
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (112, 8)
    assert not done.usage.estimated
    # 112 * 2.0 + 8 * 8.0 micro-USD per token... per million: (224 + 64) micro-USD
    assert done.usage.cost_micros_usd == 288
    seen = fake.requests[0]
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["Authorization"] == "Bearer sk-test-0123456789abcdef"
    body = seen.body
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["max_completion_tokens"] == 256
    assert body["stop"] == ["\n\nUser:"]
    assert body["messages"][0] == {
        "role": "system",
        "content": "You are a concise travel assistant.",
    }


async def test_openai_tool_call_fragments_are_assembled_and_parsed(
    fake: FakeProvider, harness: Any
) -> None:
    fake.push(Stream(wire.sse(*wire.openai_tool(), done=True)))
    h = harness(route("openai", "gpt-4.1-mini", fake.url + "/v1"), ENV)
    events = await h.run(ask(tools=(WEATHER_TOOL,)))
    fragments = [e for e in events if isinstance(e, ToolCallDelta)]
    assert len(fragments) == 6
    assert fragments[0].name == "get_weather"
    done = finished(events)
    assert done.finish_reason is FinishReason.TOOL_CALLS
    (call,) = done.tool_calls
    assert call.id == "call_2Uzw0AEZQeOex2CP2TKjcLKc"
    assert call.arguments == {"location": "Paris, France", "unit": "celsius"}
    assert fake.requests[0].body["tools"][0]["function"]["name"] == "get_weather"


async def test_anthropic_named_events_text_and_usage(fake: FakeProvider, harness: Any) -> None:
    fake.push(Stream(wire.named_sse(*wire.anthropic_text())))
    h = harness(route("anthropic", "claude-sonnet-4-5", fake.url), ENV)
    events = await h.run(ask(config=config(temperature=0.5, top_p=0.9, stop=("\n\nUser:",))))
    assert text_of(events) == "Expect mild weather in Paris tomorrow."
    done = finished(events)
    assert done.finish_reason is FinishReason.STOP
    # Output is the cumulative message_delta value, not 1 + 11.
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (412, 11)
    seen = fake.requests[0]
    assert seen.path == "/v1/messages"
    assert seen.headers["x-api-key"] == ENV["KEY"]
    assert seen.headers["anthropic-version"] == "2023-06-01"
    body = seen.body
    assert body["system"] == "You are a concise travel assistant."
    assert all(m["role"] != "system" for m in body["messages"])
    assert body["stop_sequences"] == ["\n\nUser:"]
    assert "top_p" not in body  # newer models refuse temperature and top_p together
    assert body["max_tokens"] == 4096  # required by Anthropic


async def test_anthropic_tool_use_blocks_become_one_tool_call(
    fake: FakeProvider, harness: Any
) -> None:
    fake.push(Stream(wire.named_sse(*wire.anthropic_tool())))
    h = harness(route("anthropic", "claude-sonnet-4-5", fake.url), ENV)
    events = await h.run(ask(tools=(WEATHER_TOOL,)))
    done = finished(events)
    assert done.finish_reason is FinishReason.TOOL_CALLS
    assert done.text == "I'll check the forecast for Paris."
    (call,) = done.tool_calls
    assert call.id == "toolu_01NRLabsLyVHZPKxbKvkfSMn"
    assert call.arguments == {"location": "Paris, France", "unit": "celsius"}
    assert done.usage.completion_tokens == 74
    assert fake.requests[0].body["tools"][0]["input_schema"]["required"] == ["location"]


async def test_gemini_crlf_stream_keeps_last_usage_snapshot(
    fake: FakeProvider, harness: Any
) -> None:
    fake.push(Stream(wire.sse(*wire.GEMINI_TEXT, crlf=True)))
    h = harness(route("gemini", "gemini-2.5-flash", fake.url), ENV)
    events = await h.run(ask(config=config(max_tokens=256, stop=("\n\nUser:",))))
    assert text_of(events).startswith("Expect mild weather in Paris tomorrow")
    done = finished(events)
    assert done.finish_reason is FinishReason.STOP
    # last snapshot: 48 prompt, 16 candidates + 62 thoughts; not the sum over chunks
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (48, 78)
    assert done.usage.reasoning_tokens == 62
    seen = fake.requests[0]
    assert seen.path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    assert seen.query == "alt=sse"
    assert seen.headers["x-goog-api-key"] == ENV["KEY"]
    assert seen.body["systemInstruction"] == {
        "parts": [{"text": "You are a concise travel assistant."}]
    }
    assert seen.body["generationConfig"] == {"maxOutputTokens": 256, "stopSequences": ["\n\nUser:"]}


async def test_gemini_function_call_gets_an_id_and_tool_calls_finish(
    fake: FakeProvider, harness: Any
) -> None:
    fake.push(Stream(wire.sse(*wire.GEMINI3_TOOL, crlf=True)))
    h = harness(route("gemini", "gemini-3-pro-preview", fake.url), ENV)
    events = await h.run(ask(tools=(WEATHER_TOOL,)))
    done = finished(events)
    assert done.finish_reason is FinishReason.TOOL_CALLS  # Gemini says STOP
    (call,) = done.tool_calls
    assert call.id == "call_0"
    assert call.name == "weather"
    assert call.arguments == {"location": "San Francisco"}
    assert text_of(events) == ""  # the empty thoughtSignature text part is not a delta


async def test_ollama_ndjson_text_and_usage_from_done_line(
    fake: FakeProvider, harness: Any
) -> None:
    fake.push(Stream(wire.ndjson(*wire.OLLAMA_TEXT), content_type="application/x-ndjson"))
    h = harness(route("ollama", "llama3.2", fake.url), ENV)
    events = await h.run(ask(config=config(temperature=0.7, max_tokens=256)))
    assert text_of(events) == "Expect mild weather in Paris tomorrow."
    done = finished(events)
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (168, 9)
    seen = fake.requests[0]
    assert seen.path == "/api/chat"
    assert seen.body["options"] == {"temperature": 0.7, "num_predict": 256}


async def test_ollama_tool_call_with_object_arguments_and_missing_prompt_count(
    fake: FakeProvider, harness: Any
) -> None:
    fake.push(Stream(wire.ndjson(*wire.OLLAMA_TOOL), content_type="application/x-ndjson"))
    h = harness(route("ollama", "llama3.2", fake.url), ENV)
    events = await h.run(ask(tools=(WEATHER_TOOL,)))
    done = finished(events)
    assert done.finish_reason is FinishReason.TOOL_CALLS  # Ollama says "stop"
    assert done.tool_calls[0].arguments == {"location": "Paris, France", "unit": "celsius"}
    assert done.tool_calls[0].id == "call_k3x9qz1a"
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (0, 15)


async def test_xai_reasoning_deltas_and_reasoning_tokens_added_to_completion(
    fake: FakeProvider, harness: Any
) -> None:
    fake.push(Stream(wire.sse(*wire.XAI_TEXT, done=True)))
    h = harness(route("xai", "grok-3-mini", fake.url + "/v1"), ENV)
    events = await h.run(ask(config=config(stop=("\n\nUser:",), presence_penalty=0.5)))
    thinking = "".join(e.text for e in events if isinstance(e, ThinkingDelta))
    assert thinking == "First,"
    assert text_of(events) == "Hello"
    done = finished(events)
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (12, 291)
    assert done.usage.reasoning_tokens == 290
    body = fake.requests[0].body
    # grok-3-mini is a reasoning model: stop and penalties would be a 400, so dropped
    assert "stop" not in body
    assert "presence_penalty" not in body


async def test_xai_whole_tool_call(fake: FakeProvider, harness: Any) -> None:
    fake.push(Stream(wire.sse(*wire.XAI_TOOL, done=True)))
    h = harness(route("xai", "grok-3-mini", fake.url + "/v1"), ENV)
    done = finished(await h.run(ask(tools=(WEATHER_TOOL,))))
    assert done.tool_calls[0].id == "call_55117580"
    assert done.tool_calls[0].arguments == {"location": "San Francisco"}


async def test_groq_usage_in_finish_chunk_without_opt_in(fake: FakeProvider, harness: Any) -> None:
    fake.push(Stream(wire.sse(*wire.GROQ_TEXT, done=True)))
    h = harness(route("groq", "llama-3.3-70b-versatile", fake.url + "/openai/v1"), ENV)
    events = await h.run(ask(config=config(frequency_penalty=0.3)))
    assert text_of(events) == "Introducing"
    done = finished(events)
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (45, 662)
    body = fake.requests[0].body
    assert fake.requests[0].path == "/openai/v1/chat/completions"
    assert "stream_options" not in body
    assert "frequency_penalty" not in body


async def test_groq_tool_call_with_usage_only_in_x_groq(fake: FakeProvider, harness: Any) -> None:
    fake.push(Stream(wire.sse(*wire.GROQ_TOOL, done=True)))
    h = harness(route("groq", "llama-3.3-70b-versatile", fake.url + "/openai/v1"), ENV)
    done = finished(await h.run(ask(tools=(WEATHER_TOOL,))))
    assert done.tool_calls[0].id == "tk85n1k4m"
    assert done.tool_calls[0].arguments == {}
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (210, 15)


async def test_openai_compatible_sends_custom_headers_and_estimates_missing_usage(
    fake: FakeProvider, harness: Any
) -> None:
    fake.push(Stream(wire.sse(*wire.openai_text(usage=None), done=True)))
    yaml = f"""
routes:
  main:
    - provider: openai_compatible
      model: my-model
      base_url: {fake.url}/v1
      headers: {{X-Team: agents}}
"""
    h = harness(yaml)
    done = finished(await h.run(ask()))
    assert done.usage.estimated
    assert done.usage.completion_tokens > 0
    assert done.usage.prompt_tokens > 0
    seen = fake.requests[0]
    assert seen.headers["X-Team"] == "agents"
    assert "Authorization" not in seen.headers
    assert (
        h.metric(
            "agentmesh_gateway_tokens_total",
            {
                "provider": "openai_compatible",
                "model": "my-model",
                "direction": "completion",
                "estimated": "true",
            },
        )
        == done.usage.completion_tokens
    )


async def test_length_and_content_filter_finish_reasons(fake: FakeProvider, harness: Any) -> None:
    fake.push(
        Stream(wire.sse(*wire.openai_text(finish="length"), done=True)),
        Stream(wire.sse(*wire.openai_text(finish="content_filter"), done=True)),
    )
    h = harness(route("openai", "gpt-4.1-mini", fake.url + "/v1"), ENV)
    assert finished(await h.run(ask())).finish_reason is FinishReason.LENGTH
    assert finished(await h.run(ask())).finish_reason is FinishReason.CONTENT_FILTER


async def test_finished_streams_return_their_connection_to_the_keep_alive_pool(
    fake: FakeProvider, harness: Any
) -> None:
    fake.push(
        Stream(wire.sse(*wire.openai_text(), done=True)),
        Stream(wire.named_sse(*wire.anthropic_text())),
        Stream(wire.sse(*wire.openai_text(), done=True)),
        Stream(wire.named_sse(*wire.anthropic_text())),
    )
    yaml = f"""
routes:
  main:
    - {{provider: openai, model: m, base_url: '{fake.url}', api_key_env: KEY}}
  claude:
    - {{provider: anthropic, model: c, base_url: '{fake.url}', api_key_env: KEY}}
"""
    h = harness(yaml, ENV)
    for _ in range(2):
        finished(await h.run(ask()))
        finished(await h.run(ask(route="claude")))
    peers = [r.peer for r in fake.requests]
    assert peers[0] == peers[2]  # openai adapter reused its connection
    assert peers[1] == peers[3]  # anthropic adapter too


OPENAI_NONSTREAM = {
    "id": "chatcmpl-CfC0aZbYcXdWeVfUgThSiRjQkP",
    "object": "chat.completion",
    "created": 1767225700,
    "model": "gpt-4.1-mini-2025-04-14",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Expect mild weather in Paris tomorrow.",
                "refusal": None,
                "annotations": [],
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 112, "completion_tokens": 8, "total_tokens": 120},
    "service_tier": "default",
    "system_fingerprint": "fp_6f2eabb9a5",
}
GROQ_NONSTREAM_TOOL = {
    "id": "chatcmpl-1fd017fc-60b8-44eb-a736-375b8e1bc3e7",
    "object": "chat.completion",
    "created": 1770770815,
    "model": "llama-3.3-70b-versatile",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "ax9fskhev",
                        "type": "function",
                        "function": {"name": "weather", "arguments": "{}"},
                    }
                ],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        }
    ],
    "usage": {
        "queue_time": 0.179481775,
        "prompt_tokens": 218,
        "completion_tokens": 15,
        "total_tokens": 233,
    },
    "usage_breakdown": None,
    "x_groq": {"id": "req_01kh52madzem68scv0bcz3vm00", "seed": 1790130236},
    "service_tier": "on_demand",
}


async def test_non_streaming_deployments_are_replayed_as_events(
    fake: FakeProvider, harness: Any
) -> None:
    fake.push(Reply(200, OPENAI_NONSTREAM))
    h = harness(route("openai", "gpt-4.1-mini", fake.url + "/v1", "      stream: false"), ENV)
    events = await h.run(ask())
    assert compact(events) == ["started", "delta", "finished"]
    done = finished(events)
    assert done.text == "Expect mild weather in Paris tomorrow."
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (112, 8)
    assert fake.requests[0].body["stream"] is False
    assert "stream_options" not in fake.requests[0].body


async def test_groq_with_a_response_schema_is_asked_without_streaming(
    fake: FakeProvider, harness: Any
) -> None:
    fake.push(Reply(200, GROQ_NONSTREAM_TOOL))
    h = harness(route("groq", "llama-3.3-70b-versatile", fake.url + "/openai/v1"), ENV)
    schema = {"type": "object"}
    done = finished(await h.run(ask(tools=(WEATHER_TOOL,), config=config(response_schema=schema))))
    assert done.finish_reason is FinishReason.TOOL_CALLS
    assert done.tool_calls[0].id == "ax9fskhev"
    assert done.usage.prompt_tokens == 218
    assert fake.requests[0].body["stream"] is False


async def test_reasoning_text_from_anthropic_thinking_blocks_and_ollama_thinking(
    fake: FakeProvider, harness: Any
) -> None:
    thinking = [
        wire.anthropic_text()[0],
        (
            "content_block_start",
            '{"type":"content_block_start","index":0,"content_block":{"type":"thinking",'
            '"thinking":""}}',
        ),
        (
            "content_block_delta",
            '{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta",'
            '"thinking":"Paris in spring..."}}',
        ),
        (
            "content_block_delta",
            '{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta",'
            '"signature":"EqQBCgIYAhIM"}}',
        ),
        ("content_block_stop", '{"type":"content_block_stop","index":0}'),
        *[
            (name, data.replace('"index":0', '"index":1'))
            for name, data in wire.anthropic_text()[1:]
        ],
    ]
    fake.push(
        Stream(wire.named_sse(*thinking)),
        Stream(
            wire.ndjson(
                '{"model":"qwen3","created_at":"2026-08-22T10:15:02.1Z","message":{"role":'
                '"assistant","content":"","thinking":"Let me think."},"done":false}',
                *wire.OLLAMA_TEXT,
            )
        ),
    )
    yaml = f"""
routes:
  main:
    - {{provider: anthropic, model: c, base_url: '{fake.url}', api_key_env: KEY}}
  local:
    - {{provider: ollama, model: qwen3, base_url: '{fake.url}'}}
"""
    h = harness(yaml, ENV)
    events = await h.run(ask())
    assert "".join(e.text for e in events if isinstance(e, ThinkingDelta)) == "Paris in spring..."
    assert text_of(events) == "Expect mild weather in Paris tomorrow."
    events = await h.run(ask(route="local"))
    assert [e.text for e in events if isinstance(e, ThinkingDelta)] == ["Let me think."]
    assert finished(events).text == "Expect mild weather in Paris tomorrow."


ANTHROPIC_NONSTREAM_TOOL = {
    "id": "msg_01NrT5gYk2LwP9dQeXzV4bHa",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5-20250929",
    "content": [
        {"type": "text", "text": "I'll check the forecast for Paris."},
        {
            "type": "tool_use",
            "id": "toolu_01NRLabsLyVHZPKxbKvkfSMn",
            "name": "get_weather",
            "input": {"location": "Paris, France", "unit": "celsius"},
        },
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 681,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 74,
    },
}
GEMINI_NONSTREAM = {
    "candidates": [
        {
            "content": {
                "parts": [{"text": "Expect mild weather in Paris tomorrow."}],
                "role": "model",
            },
            "finishReason": "STOP",
            "index": 0,
        }
    ],
    "usageMetadata": {
        "promptTokenCount": 48,
        "candidatesTokenCount": 16,
        "totalTokenCount": 126,
        "thoughtsTokenCount": 62,
    },
    "modelVersion": "gemini-2.5-flash",
    "responseId": "m36LaZGyCLz1xs0PtNSB-QU",
}
OLLAMA_NONSTREAM = {
    "model": "llama3.2",
    "created_at": "2026-08-22T10:17:11.416799Z",
    "message": {"role": "assistant", "content": "Expect mild weather in Paris tomorrow."},
    "done": True,
    "done_reason": "stop",
    "total_duration": 5191566416,
    "prompt_eval_count": 168,
    "eval_count": 9,
}


async def test_non_streaming_anthropic_gemini_and_ollama(fake: FakeProvider, harness: Any) -> None:
    fake.push(
        Reply(200, ANTHROPIC_NONSTREAM_TOOL),
        Reply(200, GEMINI_NONSTREAM),
        Reply(200, OLLAMA_NONSTREAM),
    )
    yaml = f"""
routes:
  claude: [{{provider: anthropic, model: c, base_url: '{fake.url}', api_key_env: KEY,
            stream: false}}]
  gemini: [{{provider: gemini, model: g, base_url: '{fake.url}', api_key_env: KEY, stream: false}}]
  ollama: [{{provider: ollama, model: llama3.2, base_url: '{fake.url}', stream: false}}]
"""
    h = harness(yaml, ENV)
    done = finished(await h.run(ask(route="claude", tools=(WEATHER_TOOL,))))
    assert done.finish_reason is FinishReason.TOOL_CALLS
    assert done.text == "I'll check the forecast for Paris."
    assert done.tool_calls[0].arguments == {"location": "Paris, France", "unit": "celsius"}
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (681, 74)
    done = finished(await h.run(ask(route="gemini")))
    assert done.text == "Expect mild weather in Paris tomorrow."
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (48, 78)
    done = finished(await h.run(ask(route="ollama")))
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (168, 9)
    paths = [r.path for r in fake.requests]
    assert paths == ["/v1/messages", "/v1beta/models/g:generateContent", "/api/chat"]
    assert [r.body.get("stream") for r in fake.requests] == [False, None, False]
