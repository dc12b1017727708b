"""Provider transcripts, byte for byte as in /work/shared/provider-wire/ (recorded shapes)."""

from __future__ import annotations

import json
from typing import Any

# --- framing -------------------------------------------------------------------------------


def sse(*payloads: str, done: bool = False, crlf: bool = False) -> list[bytes]:
    end = "\r\n\r\n" if crlf else "\n\n"
    chunks = [f"data: {p}{end}".encode() for p in payloads]
    if done:
        chunks.append(b"data: [DONE]\n\n")
    return chunks


def named_sse(*events: tuple[str, str]) -> list[bytes]:
    return [f"event: {name}\ndata: {data}\n\n".encode() for name, data in events]


def ndjson(*lines: str) -> list[bytes]:
    return [(line + "\n").encode() for line in lines]


# --- OpenAI (openai.md §3, examples A and B) ------------------------------------------------

_OAI = (
    '{{"id":"chatcmpl-CfA1b2C3d4E5f6G7h8I9j0KlMnOp","object":"chat.completion.chunk",'
    '"created":1767225600,"model":"gpt-4.1-mini-2025-04-14","service_tier":"default",'
    '"system_fingerprint":"fp_6f2eabb9a5","choices":[{{"index":0,"delta":{delta},'
    '"logprobs":null,"finish_reason":{finish}}}],"usage":null,"obfuscation":"Yq3F"}}'
)
_OAI_USAGE = (
    '{"id":"chatcmpl-CfA1b2C3d4E5f6G7h8I9j0KlMnOp","object":"chat.completion.chunk",'
    '"created":1767225600,"model":"gpt-4.1-mini-2025-04-14","service_tier":"default",'
    '"system_fingerprint":"fp_6f2eabb9a5","choices":[],"usage":{"prompt_tokens":%d,'
    '"completion_tokens":%d,"total_tokens":%d,"prompt_tokens_details":{"cached_tokens":0,'
    '"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,'
    '"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"obfuscation":"bD93Kq"}'
)


def oai_chunk(delta: dict[str, Any], finish: str | None = None) -> str:
    return _OAI.format(
        delta=json.dumps(delta, separators=(",", ":")),
        finish="null" if finish is None else json.dumps(finish),
    )


def openai_text(
    pieces: tuple[str, ...] = ("Expect", " mild", " weather", " in Paris tomorrow."),
    *,
    usage: tuple[int, int] | None = (112, 8),
    finish: str = "stop",
) -> list[str]:
    payloads = [oai_chunk({"role": "assistant", "content": "", "refusal": None})]
    payloads += [oai_chunk({"content": p}) for p in pieces]
    payloads.append(oai_chunk({}, finish))
    if usage is not None:
        payloads.append(_OAI_USAGE % (usage[0], usage[1], usage[0] + usage[1]))
    return payloads


def openai_tool() -> list[str]:
    first = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "index": 0,
                "id": "call_2Uzw0AEZQeOex2CP2TKjcLKc",
                "type": "function",
                "function": {"name": "get_weather", "arguments": ""},
            }
        ],
        "refusal": None,
    }
    frags = ['{"', "location", '":"', "Paris, France", '","unit":"celsius"}']
    payloads = [oai_chunk(first)]
    payloads += [
        oai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": f}}]}) for f in frags
    ]
    payloads.append(oai_chunk({}, "tool_calls"))
    payloads.append(_OAI_USAGE % (131, 19, 150))
    return payloads


OPENAI_MIDSTREAM_ERROR = (
    '{"error":{"message":"The server had an error while processing your request. Sorry about '
    'that!","type":"server_error","param":null,"code":null}}'
)
OPENAI_429 = {
    "error": {
        "message": "Rate limit reached for gpt-4o in organization org-abc on tokens per min "
        "(TPM): Limit 30000, Used 29000, Requested 2000. Please try again in 2s.",
        "type": "tokens",
        "param": None,
        "code": "rate_limit_exceeded",
    }
}
OPENAI_QUOTA = {
    "error": {
        "message": "You exceeded your current quota, please check your plan and billing details.",
        "type": "insufficient_quota",
        "param": None,
        "code": "insufficient_quota",
    }
}
OPENAI_500 = {
    "error": {
        "message": "The server had an error while processing your request. Sorry about that!",
        "type": "server_error",
        "param": None,
        "code": None,
    }
}
OPENAI_503 = {
    "error": {
        "message": "The server is overloaded or not ready yet.",
        "type": "service_unavailable_error",
        "param": None,
        "code": "server_is_overloaded",
    }
}
OPENAI_CONTEXT = {
    "error": {
        "message": "This model's maximum context length is 128000 tokens. However, your messages "
        "resulted in 130512 tokens. Please reduce the length of the messages.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
}


def openai_401(key: str) -> dict[str, Any]:
    masked = key[:8] + "*" * 20 + key[-4:]
    return {
        "error": {
            "message": f"Incorrect API key provided: {masked}. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }


# --- Anthropic (anthropic.md §3) ------------------------------------------------------------

ANTHROPIC_START = (
    '{"type":"message_start","message":{"id":"msg_01Hq8WzM3xYkLqC7VbN2aTcE","type":"message",'
    '"role":"assistant","model":"claude-sonnet-4-5-20250929","content":[],"stop_reason":null,'
    '"stop_sequence":null,"usage":{"input_tokens":412,"cache_creation_input_tokens":0,'
    '"cache_read_input_tokens":0,"output_tokens":1,"service_tier":"standard"}}}'
)


def anthropic_text() -> list[tuple[str, str]]:
    return [
        ("message_start", ANTHROPIC_START),
        (
            "content_block_start",
            '{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}',
        ),
        ("ping", '{"type": "ping"}'),
        (
            "content_block_delta",
            '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Expect"}}',
        ),
        (
            "content_block_delta",
            '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta",'
            '"text":" mild weather in Paris"}}',
        ),
        (
            "content_block_delta",
            '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta",'
            '"text":" tomorrow."}}',
        ),
        ("content_block_stop", '{"type":"content_block_stop","index":0}'),
        (
            "message_delta",
            '{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},'
            '"usage":{"output_tokens":11}}',
        ),
        ("message_stop", '{"type":"message_stop"}'),
    ]


def anthropic_tool() -> list[tuple[str, str]]:
    start = ANTHROPIC_START.replace('"input_tokens":412', '"input_tokens":681')
    return [
        ("message_start", start),
        (
            "content_block_start",
            '{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}',
        ),
        ("ping", '{"type": "ping"}'),
        (
            "content_block_delta",
            '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta",'
            '"text":"I\'ll check the forecast for Paris."}}',
        ),
        ("content_block_stop", '{"type":"content_block_stop","index":0}'),
        (
            "content_block_start",
            '{"type":"content_block_start","index":1,"content_block":{"type":"tool_use",'
            '"id":"toolu_01NRLabsLyVHZPKxbKvkfSMn","name":"get_weather","input":{},'
            '"caller":{"type":"direct"}}}',
        ),
        (
            "content_block_delta",
            '{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta",'
            '"partial_json":""}}',
        ),
        (
            "content_block_delta",
            '{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta",'
            '"partial_json":"{\\"locati"}}',
        ),
        (
            "content_block_delta",
            '{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta",'
            '"partial_json":"on\\": \\"Paris, F"}}',
        ),
        (
            "content_block_delta",
            '{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta",'
            '"partial_json":"rance\\", \\"unit\\": \\"celsius\\"}"}}',
        ),
        ("content_block_stop", '{"type":"content_block_stop","index":1}'),
        (
            "message_delta",
            '{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},'
            '"usage":{"output_tokens":74}}',
        ),
        ("message_stop", '{"type":"message_stop"}'),
    ]


ANTHROPIC_OVERLOADED_EVENT = (
    "error",
    '{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}',
)
ANTHROPIC_529 = {
    "type": "error",
    "error": {"type": "overloaded_error", "message": "Overloaded"},
    "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy",
}
ANTHROPIC_CONTEXT = {
    "type": "error",
    "error": {
        "type": "invalid_request_error",
        "message": "prompt is too long: 208656 tokens > 200000 maximum",
    },
    "request_id": "req_011CVjxiYzEFcAQC4Fk87zw2",
}

# --- Gemini (gemini.md §3, CRLF framing, no terminator) ------------------------------------

GEMINI_TEXT = [
    '{"candidates": [{"content": {"parts": [{"text": "Expect mild"}],"role": "model"},"index": 0}],'
    '"usageMetadata": {"promptTokenCount": 48,"candidatesTokenCount": 2,"totalTokenCount": 112,'
    '"promptTokensDetails": [{"modality": "TEXT","tokenCount": 48}],"thoughtsTokenCount": 62},'
    '"modelVersion": "gemini-2.5-flash","responseId": "WQuqavG5KbfUjMcPuP_n6QI"}',
    '{"candidates": [{"content": {"parts": [{"text": " weather in Paris tomorrow: around 18°C '
    'with light clouds."}],"role": "model"},"finishReason": "STOP","index": 0}],"usageMetadata": '
    '{"promptTokenCount": 48,"candidatesTokenCount": 16,"totalTokenCount": 126,'
    '"promptTokensDetails": [{"modality": "TEXT","tokenCount": 48}],"thoughtsTokenCount": 62},'
    '"modelVersion": "gemini-2.5-flash","responseId": "WQuqavG5KbfUjMcPuP_n6QI"}',
]
GEMINI3_TOOL = [
    '{"candidates":[{"content":{"parts":[{"functionCall":{"name":"weather","args":{"location":'
    '"San Francisco"}},"thoughtSignature":"EqUCCqIC"}],"role":"model"},"index":0}],'
    '"usageMetadata":{"promptTokenCount":29,"candidatesTokenCount":15,"totalTokenCount":89,'
    '"promptTokensDetails":[{"modality":"TEXT","tokenCount":29}],"thoughtsTokenCount":45},'
    '"modelVersion":"gemini-3-pro-preview","responseId":"b36LacjwM668nsEP2tbsgQQ"}',
    '{"candidates":[{"content":{"parts":[{"text":""}],"role":"model"},"finishReason":"STOP",'
    '"index":0}],"usageMetadata":{"promptTokenCount":29,"candidatesTokenCount":15,'
    '"totalTokenCount":89,"promptTokensDetails":[{"modality":"TEXT","tokenCount":29}],'
    '"thoughtsTokenCount":45},"modelVersion":"gemini-3-pro-preview",'
    '"responseId":"b36LacjwM668nsEP2tbsgQQ"}',
]
GEMINI_MIDSTREAM_ERROR = (
    '{"error": {"code": 503,"message": "The model is overloaded. Please try again later.",'
    '"status": "UNAVAILABLE"}}'
)
GEMINI_429 = {
    "error": {
        "code": 429,
        "message": "You exceeded your current quota, please check your plan and billing details.",
        "status": "RESOURCE_EXHAUSTED",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": "generativelanguage.googleapis.com/"
                        "generate_content_free_tier_requests",
                        "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                    }
                ],
            },
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.05s"},
        ],
    }
}
GEMINI_BAD_KEY = {
    "error": {
        "code": 400,
        "message": "API key not valid. Please pass a valid API key.",
        "status": "INVALID_ARGUMENT",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
            }
        ],
    }
}

# --- Ollama native (ollama.md Part A) --------------------------------------------------------

OLLAMA_TEXT = [
    '{"model":"llama3.2","created_at":"2026-08-22T10:15:02.101223Z","message":{"role":"assistant",'
    '"content":"Expect"},"done":false}',
    '{"model":"llama3.2","created_at":"2026-08-22T10:15:02.118904Z","message":{"role":"assistant",'
    '"content":" mild"},"done":false}',
    '{"model":"llama3.2","created_at":"2026-08-22T10:15:02.136512Z","message":{"role":"assistant",'
    '"content":" weather in Paris"},"done":false}',
    '{"model":"llama3.2","created_at":"2026-08-22T10:15:02.154087Z","message":{"role":"assistant",'
    '"content":" tomorrow."},"done":false}',
    '{"model":"llama3.2","created_at":"2026-08-22T10:15:02.171660Z","message":{"role":"assistant",'
    '"content":""},"done":true,"done_reason":"stop","total_duration":612345678,'
    '"load_duration":41295167,"prompt_eval_count":168,"prompt_eval_duration":24573166,'
    '"eval_count":9,"eval_duration":115959084}',
]
OLLAMA_TOOL = [
    '{"model":"llama3.2","created_at":"2026-08-22T10:16:40.184789Z","message":{"role":"assistant",'
    '"content":"","tool_calls":[{"id":"call_k3x9qz1a","function":{"index":0,"name":"get_weather",'
    '"arguments":{"location":"Paris, France","unit":"celsius"}}}]},"done":false}',
    '{"model":"llama3.2","created_at":"2026-08-22T10:16:40.193140Z","message":{"role":"assistant",'
    '"content":""},"done":true,"done_reason":"stop","total_duration":182242375,'
    '"load_duration":41295167,"eval_count":15,"eval_duration":115959084}',
]
OLLAMA_MIDSTREAM_ERROR = '{"error":"an error was encountered while running the model"}'

# --- xAI (xai.md §3, recorded) --------------------------------------------------------------

_XAI_ID = '"id":"7327b9f5-1c2f-0a15-3fef-c14a71c460d3","object":"chat.completion.chunk"'
XAI_TEXT = [
    "{" + _XAI_ID + ',"created":1770774058,"model":"grok-3-mini","choices":[{"index":0,'
    '"delta":{"reasoning_content":"First","role":"assistant"}}],"system_fingerprint":"fp_2a885414fb"}',
    "{" + _XAI_ID + ',"created":1770774058,"model":"grok-3-mini","choices":[{"index":0,'
    '"delta":{"reasoning_content":","}}],"system_fingerprint":"fp_2a885414fb"}',
    "{" + _XAI_ID + ',"created":1770774061,"model":"grok-3-mini","choices":[{"index":0,'
    '"delta":{"content":"Hello"}}],"system_fingerprint":"fp_2a885414fb"}',
    "{" + _XAI_ID + ',"created":1770774061,"model":"grok-3-mini","choices":[{"index":0,'
    '"delta":{},"finish_reason":"stop"}],"system_fingerprint":"fp_2a885414fb"}',
    "{" + _XAI_ID + ',"created":1770774061,"model":"grok-3-mini","choices":[],"usage":'
    '{"prompt_tokens":12,"completion_tokens":1,"total_tokens":303,"prompt_tokens_details":'
    '{"text_tokens":12,"audio_tokens":0,"image_tokens":0,"cached_tokens":11},'
    '"completion_tokens_details":{"reasoning_tokens":290,"audio_tokens":0,'
    '"accepted_prediction_tokens":0,"rejected_prediction_tokens":0},"num_sources_used":0,'
    '"cost_in_usd_ticks":1466250},"system_fingerprint":"fp_2a885414fb"}',
]
_XAI_TOOL_ID = '"id":"de9d896d-e946-b3a7-bb14-75ab33326930","object":"chat.completion.chunk"'
XAI_TOOL = [
    "{" + _XAI_TOOL_ID + ',"created":1770774064,"model":"grok-3-mini","choices":[{"index":0,'
    '"delta":{"reasoning_content":"First","role":"assistant"}}],"system_fingerprint":"fp_2a885414fb"}',
    "{" + _XAI_TOOL_ID + ',"created":1770774066,"model":"grok-3-mini","choices":[{"index":0,'
    '"delta":{"tool_calls":[{"id":"call_55117580","function":{"name":"weather","arguments":'
    '"{\\"location\\":\\"San Francisco\\"}"},"index":0,"type":"function"}]}}],'
    '"system_fingerprint":"fp_2a885414fb"}',
    "{" + _XAI_TOOL_ID + ',"created":1770774066,"model":"grok-3-mini","choices":[{"index":0,'
    '"delta":{},"finish_reason":"tool_calls"}],"system_fingerprint":"fp_2a885414fb"}',
    "{" + _XAI_TOOL_ID + ',"created":1770774066,"model":"grok-3-mini","choices":[],"usage":'
    '{"prompt_tokens":291,"completion_tokens":26,"total_tokens":513,"prompt_tokens_details":'
    '{"text_tokens":291,"audio_tokens":0,"image_tokens":0,"cached_tokens":290},'
    '"completion_tokens_details":{"reasoning_tokens":196,"audio_tokens":0,'
    '"accepted_prediction_tokens":0,"rejected_prediction_tokens":0},"num_sources_used":0,'
    '"cost_in_usd_ticks":1330500},"system_fingerprint":"fp_2a885414fb"}',
]
XAI_BAD_KEY = {
    "code": "invalid-argument",
    "error": "Incorrect API key provided. You can obtain an API key from https://console.x.ai.",
}

# --- Groq (groq.md §3, recorded) ------------------------------------------------------------

_GROQ = '"id":"chatcmpl-7eb08824-fb8d-47af-a1f0-3aa786f2d1f3","object":"chat.completion.chunk"'
_GROQ_USAGE = (
    '{"queue_time":0.041905864,"prompt_tokens":45,"prompt_time":0.003940145,'
    '"completion_tokens":662,"completion_time":2.652230333,"total_tokens":707,'
    '"total_time":2.656170478}'
)
GROQ_TEXT = [
    "{" + _GROQ + ',"created":1770770839,"model":"llama-3.3-70b-versatile","system_fingerprint":'
    '"fp_f8b414701e","choices":[{"index":0,"delta":{"role":"assistant","content":""},'
    '"logprobs":null,"finish_reason":null}],"x_groq":{"id":"req_01kh52ndshfr2azv0xe6tnv4fx",'
    '"seed":1535227698}}',
    "{" + _GROQ + ',"created":1770770839,"model":"llama-3.3-70b-versatile","system_fingerprint":'
    '"fp_f8b414701e","choices":[{"index":0,"delta":{"content":"Int"},"logprobs":null,'
    '"finish_reason":null}]}',
    "{" + _GROQ + ',"created":1770770839,"model":"llama-3.3-70b-versatile","system_fingerprint":'
    '"fp_f8b414701e","choices":[{"index":0,"delta":{"content":"roducing"},"logprobs":null,'
    '"finish_reason":null}]}',
    "{" + _GROQ + ',"created":1770770842,"model":"llama-3.3-70b-versatile","system_fingerprint":'
    '"fp_f8b414701e","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],'
    '"x_groq":{"id":"req_01kh52ndshfr2azv0xe6tnv4fx","usage":'
    + _GROQ_USAGE
    + '},"usage":'
    + _GROQ_USAGE
    + "}",
]
GROQ_TOOL = [
    '{"id":"chatcmpl-b610d559-f156-4aca-8827-24b4fe6af54f","object":"chat.completion.chunk",'
    '"created":1770770843,"model":"llama-3.3-70b-versatile","system_fingerprint":"fp_f8b414701e",'
    '"choices":[{"index":0,"delta":{"role":"assistant","content":null},"logprobs":null,'
    '"finish_reason":null}],"x_groq":{"id":"req_01kh52nj5yfcat8hrmvrk2j2hj","seed":689520654}}',
    '{"id":"chatcmpl-b610d559-f156-4aca-8827-24b4fe6af54f","object":"chat.completion.chunk",'
    '"created":1770770843,"model":"llama-3.3-70b-versatile","system_fingerprint":"fp_f8b414701e",'
    '"choices":[{"index":0,"delta":{"tool_calls":[{"id":"tk85n1k4m","type":"function",'
    '"function":{"name":"weather","arguments":"{}"},"index":0}]},"logprobs":null,'
    '"finish_reason":null}]}',
    '{"id":"chatcmpl-b610d559-f156-4aca-8827-24b4fe6af54f","object":"chat.completion.chunk",'
    '"created":1770770843,"model":"llama-3.3-70b-versatile","system_fingerprint":"fp_f8b414701e",'
    '"choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"tool_calls"}],'
    '"x_groq":{"id":"req_01kh52nj5yfcat8hrmvrk2j2hj","usage":{"queue_time":0.041520249,'
    '"prompt_tokens":210,"prompt_time":0.010407901,"completion_tokens":15,'
    '"completion_time":0.046601227,"total_tokens":225,"total_time":0.057009128}}}',
]
