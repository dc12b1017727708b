// Small formatting helpers: enum names, times, durations, tokens and cost.

import type { Int64, Usage } from "./types";

/** "SESSION_STATUS_RUNNING" -> "running" (the enum's prefix is given). */
export function enumLabel(value: string | undefined, prefix: string): string {
  if (!value || value.endsWith("_UNSPECIFIED")) return "—";
  return value.replace(prefix, "").toLowerCase().replace(/_/g, " ");
}

export const statusLabel = (value?: string) => enumLabel(value, "SESSION_STATUS_");
export const strategyLabel = (value?: string) => enumLabel(value, "STRATEGY_");
export const taskStatusLabel = (value?: string) => enumLabel(value, "TASK_STATUS_");
export const agentTypeLabel = (value?: string) => enumLabel(value, "AGENT_TYPE_");
export const memoryTypeLabel = (value?: string) => enumLabel(value, "MEMORY_TYPE_");

export function num(value: Int64 | undefined): number {
  return value === undefined ? 0 : Number(value);
}

/** Milliseconds since the epoch of an RFC 3339 time (nanoseconds cut to milliseconds). */
export function millis(time: string | undefined): number | undefined {
  if (!time) return undefined;
  const trimmed = time.replace(/(\.\d{3})\d+/, "$1");
  const value = Date.parse(trimmed);
  return Number.isNaN(value) ? undefined : value;
}

/** A duration in ms as "850 ms", "3.2 s", "4 min 5 s". */
export function duration(ms: number | undefined): string {
  if (ms === undefined || !Number.isFinite(ms)) return "—";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  const minutes = Math.floor(ms / 60_000);
  if (minutes < 60) return `${minutes} min ${Math.round((ms % 60_000) / 1000)} s`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

/** How long ago, e.g. "12 s ago". */
export function age(time: string | undefined, now: number = Date.now()): string {
  const then = millis(time);
  if (then === undefined) return "—";
  const seconds = Math.max(0, Math.round((now - then) / 1000));
  if (seconds < 60) return `${seconds} s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86_400) return `${Math.floor(seconds / 3600)} h ago`;
  return `${Math.floor(seconds / 86_400)} d ago`;
}

export function clock(time: string | undefined): string {
  const then = millis(time);
  if (then === undefined) return "—";
  const date = new Date(then);
  const pad = (n: number, width = 2) => String(n).padStart(width, "0");
  return `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}.${pad(
    date.getMilliseconds(),
    3,
  )}`;
}

export function tokens(usage: Usage | undefined): string {
  return num(usage?.totalTokens).toLocaleString("en-US");
}

/** Cost in micro-USD as dollars: "$0.000123". */
export function cost(micros: Int64 | undefined): string {
  const value = num(micros) / 1_000_000;
  if (value === 0) return "$0";
  return value < 0.01 ? `$${value.toFixed(6)}` : `$${value.toFixed(4)}`;
}

/** The last segment of a resource name: "sessions/abc" -> "abc". */
export function shortName(name: string | undefined): string {
  if (!name) return "";
  return name.slice(name.lastIndexOf("/") + 1);
}

export function json(value: unknown): string {
  return typeof value === "string" ? value : JSON.stringify(value);
}
