"""``RESULTS.md``: the tables, and the few sentences that say what they show."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .demo import NO_PROMPT_CACHE, DemoArm, DemoResults
from .smollm2 import Arm, SmolResults
from .workload import Summary

__all__ = ["markdown"]

SERVER = "mlx_lm.server"


def _f(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None or b == 0 else f"{a / b:.2f}"


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        "# Local runner benchmark",
        "",
        f"Machine: {m['platform']}, {m['cpus']} CPUs ({m['processor']}), MLX {m['mlx']} on "
        f"{m['device']}, mlx-lm {m['mlx_lm']}, Python {m['python']}; fp32 matmul "
        f"{m['fp32_matmul_gflops']} GFLOP/s. Shared with other jobs while it ran (load average "
        f"{m['load_average_at_start'][0]:.1f} at the start, "
        f"{m.get('load_average_at_end', [0.0])[0]:.1f} at the end). "
        f"Command: `{results['command']}` ({results.get('seconds', 0)} s).",
        "",
    ]
    sections = results["sections"]
    if isinstance(smol := sections.get("smollm2"), SmolResults):
        lines += _smollm2(smol)
    demos = [r for r in sections.values() if isinstance(r, DemoResults)]
    if demos:
        lines += _demo(demos)
    for section, error in results["errors"].items():
        lines += [f"**{section} failed:** {error}", ""]
    return "\n".join(lines).rstrip() + "\n"


# -- SmolLM2 -----------------------------------------------------------------------------


def _smollm2(r: SmolResults) -> list[str]:
    arms = {a.label: a for a in r.arms}
    server = arms.get(SERVER)
    runners = [a for a in r.arms if a.label != SERVER]
    imp = r.gguf_import
    lines = [
        "## SmolLM2-135M-Instruct: runner versus mlx_lm.server",
        "",
        f"Import of `SmolLM2-135M-Instruct.Q4_1.gguf` ({imp.importer}): **{imp.seconds:.2f} s** "
        f"({imp.wall_seconds:.2f} s with loading the importer; target <= 5 s). Every arm serves "
        f"that directory; greedy, `max_tokens` {r.max_tokens}; 1-stream figures are medians of "
        f"{r.repeats} (cold) and 2 (shared system prompt) runs, alternating between the arms.",
        "",
        "Cold prompts begin with a request number used once, so no server reuses more than the "
        "chat template's first tokens; shared-system-prompt requests differ only in the "
        "question after one priming request, which mlx_lm.server and both runner backends "
        "reuse across requests (the longest cached prefix of any earlier request). "
        "Rates are on the tokens each server reports (an answer may end before `max_tokens`); "
        "decode tok/s = (tokens - 1) / (end of stream - first text).",
        "",
        "| measure | "
        + " | ".join(a.label for a in r.arms)
        + " | "
        + " | ".join(f"{a.label} / server" for a in runners)
        + " | target |",
        "|---|" + "---|" * (len(r.arms) + len(runners) + 1),
    ]

    def row(name: str, get: Callable[[Arm], float | None], target: str, digits: int = 1) -> None:
        values = [get(a) if a.available else None for a in r.arms]
        base = get(server) if server is not None and server.available else None
        ratios = [_ratio(get(a) if a.available else None, base) for a in runners]
        cells = [_f(v, digits) for v in values] + ratios + [target]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")

    def single(kind: str, field: str) -> Callable[[Arm], float | None]:
        def get(arm: Arm) -> float | None:
            summary: Summary | None = getattr(arm, f"single_{kind}")
            return None if summary is None else float(getattr(summary, field))

        return get

    row("1 stream, cold prompt: decode tok/s", single("cold", "decode_tps"), ">= 1.0")
    row("1 stream, cold prompt: time to first token (ms)", single("cold", "ttft_ms"), "<= 1.0", 0)
    row("1 stream, shared system prompt: decode tok/s", single("warm", "decode_tps"), "")
    row(
        "1 stream, shared system prompt: time to first token (ms)", single("warm", "ttft_ms"), "", 0
    )
    row(
        f"{r.streams} concurrent streams, cold prompts: tok/s",
        lambda a: a.concurrent_cold.aggregate_tps if a.concurrent_cold else None,
        ">= 1.2",
    )
    row(
        f"{r.streams} concurrent streams: median time to first token (ms)",
        lambda a: a.concurrent_cold.median_ttft_ms if a.concurrent_cold else None,
        "",
        0,
    )
    lines += ["", *_targets(r, server, runners)]
    lines += ["", "Tokens each arm reported (completion per run; prompt / cached prompt):", ""]
    for a in r.arms:
        if not a.available:
            lines.append(f"* {a.label}: **not available**: {a.reason}")
            continue
        parts = []
        for kind, s in (("cold", a.single_cold), ("shared system prompt", a.single_warm)):
            if s is not None:
                parts.append(
                    f"{kind} {s.completion_tokens} ({s.prompt_tokens} / {s.cached_prompt_tokens})"
                )
        if (together := a.concurrent_cold) is not None:
            parts.append(
                f"{together.streams} streams {together.completion_tokens} in all "
                f"({together.cached_prompt_tokens} cached prompt tokens)"
            )
        failed = f"; **{a.reason}**" if a.reason else ""
        lines.append(f"* {a.label}: " + "; ".join(parts) + failed)
    lines += ["", "Constrained decoding (`response_schema`, a JSON object with one string):", ""]
    for a in runners:
        constrained = a.constrained
        if constrained is None:
            lines.append(f"* {a.label}: not measured ({a.reason or 'arm not available'})")
        elif not constrained.measured:
            lines.append(f"* {a.label}: skipped: {constrained.reason}")
        else:
            c = constrained
            lines.append(
                f"* {a.label}: {_f(c.constrained_ms_per_token)} ms per decode token constrained "
                f"vs {_f(c.unconstrained_ms_per_token)} unconstrained, "
                f"**{_f(100 * (c.overhead or 0.0))}%** (target <= 10%); time to first token "
                f"{_f(c.constrained_ttft_ms, 0)} vs {_f(c.unconstrained_ttft_ms, 0)} ms; "
                f"{c.completion_tokens} tokens, e.g. `{c.example[:80]}`"
            )
    return [*lines, ""]


def _targets(r: SmolResults, server: Arm | None, runners: list[Arm]) -> list[str]:
    def verdict(value: float | None, ok: Callable[[float], bool], unit: str = "x") -> str:
        if value is None:
            return "n/a"
        return f"{value:.2f}{unit} {'met' if ok(value) else '**not met**'}"

    def versus(arm: Arm, get: Callable[[Arm], float | None]) -> float | None:
        if not arm.available or server is None or not server.available:
            return None
        a, b = get(arm), get(server)
        return None if a is None or b is None or b == 0 else a / b

    def cold(field: str) -> Callable[[Arm], float | None]:
        return lambda a: None if a.single_cold is None else getattr(a.single_cold, field)

    def eight(a: Arm) -> float | None:
        return None if a.concurrent_cold is None else a.concurrent_cold.aggregate_tps

    def overhead(a: Arm) -> float | None:
        c = a.constrained
        return c.overhead if c is not None and c.measured else None

    def percent(a: Arm) -> float | None:
        value = overhead(a)
        return None if value is None else 100 * value

    rows: list[tuple[str, Callable[[Arm], str]]] = [
        (
            "1 stream tok/s >= 1.0x server",
            lambda a: verdict(versus(a, cold("decode_tps")), lambda v: v >= 1.0),
        ),
        (
            "time to first token <= 1.0x server",
            lambda a: verdict(versus(a, cold("ttft_ms")), lambda v: v <= 1.0),
        ),
        (
            f"{r.streams} streams tok/s >= 1.2x server",
            lambda a: verdict(versus(a, eight), lambda v: v >= 1.2),
        ),
        (
            "constrained <= +10% per token",
            lambda a: verdict(percent(a), lambda v: v <= 10, "%"),
        ),
    ]
    lines = [
        "Targets (cold prompts; ratios to mlx_lm.server):",
        "",
        "| target | " + " | ".join(a.label for a in runners) + " |",
        "|---|" + "---|" * len(runners),
    ]
    lines += [f"| {name} | " + " | ".join(cell(a) for a in runners) + " |" for name, cell in rows]
    seconds = r.gguf_import.seconds
    lines.append(
        f"| GGUF import <= 5 s | {seconds:.2f} s {'met' if seconds <= 5 else '**not met**'} |"
        + " |" * (len(runners) - 1)
    )
    return lines


# -- demo models -------------------------------------------------------------------------


def _demo(demos: list[DemoResults]) -> list[str]:
    lines = [
        "## Demo models (random weights): runner (mlx) versus mlx-lm in-process and its server",
        "",
        "One prompt sent again and again, as the earlier comparison did; the first run is new "
        "to every server, the later ones are not. 8 concurrent streams: 8 different prompts.",
        "",
        "| model | arm | prompt tokens | first run: TTFT ms | first run: decode tok/s | "
        "again: TTFT ms | again: decode tok/s | again: end-to-end tok/s | "
        "again: cached prompt tokens | 8 concurrent: tok/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for d in demos:
        name = f"{d.size} ({d.parameters / 1e6:.2f}M, {', '.join(d.weight_dtypes)})"
        for a in d.arms:
            lines.append(
                f"| {name} | {a.label} | {a.first.prompt_tokens[0]} | {_f(a.first.ttft_ms)} | "
                f"{_f(a.first.decode_tps)} | "
                f"{_f(a.repeated.ttft_ms)} | {_f(a.repeated.decode_tps)} | "
                f"{_f(a.repeated.end_to_end_tps)} | {a.repeated.cached_prompt_tokens} | "
                f"{_f(a.concurrent.aggregate_tps) if a.concurrent else '-'} |"
            )
    lines += [
        "",
        "Runner (mlx) / mlx_lm.server, same prompt again (with its prompt cache, then without):",
        "",
        "| model | decode tok/s | time to first token | end-to-end tok/s | "
        "decode tok/s, no cache | time to first token, no cache | 8 concurrent tok/s, no cache |",
        "|---|---|---|---|---|---|---|",
    ]
    for d in demos:
        arms = {a.label: a for a in d.arms}
        runner, cached, uncached = arms["runner (mlx)"], arms[SERVER], arms[NO_PROMPT_CACHE]
        lines.append(
            f"| {d.size} | {_ratio(runner.repeated.decode_tps, cached.repeated.decode_tps)} | "
            f"{_ratio(runner.repeated.ttft_ms, cached.repeated.ttft_ms)} | "
            f"{_ratio(runner.repeated.end_to_end_tps, cached.repeated.end_to_end_tps)} | "
            f"{_ratio(runner.repeated.decode_tps, uncached.repeated.decode_tps)} | "
            f"{_ratio(runner.repeated.ttft_ms, uncached.repeated.ttft_ms)} | "
            f"{_ratio(_agg(runner), _agg(uncached))} |"
        )
    lines += ["", *_demo_findings(demos)]
    lines += [
        "",
        "Follow-up turn of one conversation through the runner (mlx), with and without "
        "`cache_key`:",
        "",
        "| model | prompt cache | prompt tokens | cached | time to first token (ms) |",
        "|---|---|---|---|---|",
    ]
    for d in demos:
        for f in d.follow_up:
            lines.append(
                f"| {d.size} | {'on' if f.prompt_cache else 'off'} | {f.prompt_tokens} | "
                f"{f.cached_prompt_tokens} | {f.ttft_ms:.1f} |"
            )
    return [*lines, ""]


def _agg(arm: DemoArm) -> float | None:
    return arm.concurrent.aggregate_tps if arm.concurrent else None


def _demo_findings(demos: list[DemoResults]) -> list[str]:
    """What the demo rows say about the earlier runner / mlx_lm.server gap, in numbers."""
    lines = ["What differs between the runner and mlx_lm.server:", ""]
    for d in demos:
        arms = {a.label: a for a in d.arms}
        runner, cached, uncached = arms["runner (mlx)"], arms[SERVER], arms[NO_PROMPT_CACHE]
        prompt = cached.first.prompt_tokens[0]
        reused = max(cached.repeated.cached_prompt_tokens, default=0)
        lines.append(
            f"* {d.size}: decode tok/s runner / server "
            f"{_ratio(runner.repeated.decode_tps, cached.repeated.decode_tps)} with the "
            f"server's prompt cache and "
            f"{_ratio(runner.repeated.decode_tps, uncached.repeated.decode_tps)} without. "
            f"On the repeated prompt the server found {reused} of its {prompt} prompt tokens "
            f"cached and answered first after {_f(cached.repeated.ttft_ms, 0)} ms "
            f"({_f(uncached.repeated.ttft_ms, 0)} ms with `--prompt-cache-size 0`, "
            f"{_f(runner.repeated.ttft_ms, 0)} ms for the runner): time to first token "
            f"{_ratio(runner.repeated.ttft_ms, cached.repeated.ttft_ms)}x with the cache, "
            f"{_ratio(runner.repeated.ttft_ms, uncached.repeated.ttft_ms)}x without; "
            f"the runner reused {max(runner.repeated.cached_prompt_tokens, default=0)} prompt "
            "tokens. End-to-end tokens/s (time to first token included) runner / server: "
            f"{_ratio(runner.repeated.end_to_end_tps, cached.repeated.end_to_end_tps)}x at "
            f"{d.completion_tokens_per_stream} tokens."
        )
        variants = [a for a in d.arms if a.label.startswith("in-process,")]
        if variants:
            local = arms["in-process mlx-lm"]
            tried = ", ".join(f"{a.label}: {_f(a.repeated.decode_tps)} tok/s" for a in variants)
            lines.append(
                f"* {d.size}, the other candidates: in-process with mlx-lm's defaults "
                f"{_f(local.repeated.decode_tps)} tok/s; {tried}. Same prompt length for "
                f"every arm ({', '.join(sorted({str(a.first.prompt_tokens[0]) for a in d.arms}))}"
                f" tokens: one chat template path), weights {', '.join(d.weight_dtypes)} "
                "everywhere (mlx_lm.server loads with the same `mlx_lm.load` and casts "
                "nothing), `prefill_step_size` 2048 by default in `generate_step`, "
                "`BatchGenerator` and the server alike, and no wired limit on a CPU device."
            )
    return lines
