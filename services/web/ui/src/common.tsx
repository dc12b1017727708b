// Pieces every page uses: polling, badges.

import { useEffect, useState } from "preact/hooks";

import { ApiError } from "./api";
import { enumLabel, statusLabel } from "./format";

/** Poll `load` every `interval` ms while mounted; returns its latest result and error. */
export function usePoll<T>(load: () => Promise<T>, interval: number, key: unknown[] = []) {
  const [value, setValue] = useState<T | undefined>(undefined);
  const [error, setError] = useState("");
  const [updated, setUpdated] = useState<number | undefined>(undefined);
  const [tick, setTick] = useState(0);
  useEffect(() => {
    let stopped = false;
    let timer: number | undefined;
    const run = async () => {
      try {
        const result = await load();
        if (stopped) return;
        setValue(result);
        setError("");
        setUpdated(Date.now());
      } catch (failure) {
        if (stopped) return;
        setError(failure instanceof ApiError ? failure.message : String(failure));
      }
      if (!stopped) timer = window.setTimeout(run, interval);
    };
    void run();
    return () => {
      stopped = true;
      clearTimeout(timer);
    };
  }, [...key, tick]);
  return { value, error, updated, reload: () => setTick((t) => t + 1) };
}

const TONES: [RegExp, string][] = [
  [/^(completed|healthy|closed)$/, "ok"],
  [/^(running|retrying|streaming|live)$/, "active"],
  [/^(pending|half open|degraded|reconnecting|connecting)$/, "warn"],
  [/^(failed|unhealthy|open)$/, "bad"],
];

/** The colour class of a label: ok, active, warn, bad or quiet. */
export function tone(label: string): string {
  return TONES.find(([pattern]) => pattern.test(label))?.[1] ?? "quiet";
}

export function StatusBadge({ status, testId }: { status?: string; testId?: string }) {
  const label = statusLabel(status);
  return (
    <span class={`badge tone-${tone(label)}`} data-testid={testId} data-value={status}>
      {label}
    </span>
  );
}

/** A small coloured label for an enum value, e.g. a health or a task status. */
export function Badge(props: { value?: string; prefix: string; testId?: string }) {
  const label = enumLabel(props.value, props.prefix);
  return (
    <span class={`badge tone-${tone(label)}`} data-testid={props.testId} data-value={props.value}>
      {label}
    </span>
  );
}
