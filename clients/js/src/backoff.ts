// Reconnect waits: exponential backoff with full jitter, and the server's hints.

/** Backoff draws waits uniformly from [0, min(max, min·2^attempt)] ("full jitter"). */
export class Backoff {
  private attempt = 0;

  constructor(
    readonly minMs = 100,
    readonly maxMs = 10_000,
    private readonly random: () => number = Math.random,
  ) {
    if (!(minMs > 0) || !(maxMs >= minMs)) throw new RangeError(`backoff bounds ${minMs}..${maxMs}`);
  }

  /** ceiling is the upper bound of the next wait. */
  ceiling(): number {
    return this.attempt >= 40 ? this.maxMs : Math.min(this.maxMs, this.minMs * 2 ** this.attempt);
  }

  /** next returns the next wait in milliseconds and counts the attempt. */
  next(): number {
    const c = this.ceiling();
    this.attempt++;
    return Math.min(c, Math.floor(this.random() * (c + 1)));
  }

  /** reset starts over after a connection that was welcomed. */
  reset(): void {
    this.attempt = 0;
  }

  get attempts(): number {
    return this.attempt;
  }
}

/** The least wait after GOAWAY, so that a hint of 0 from every server is no busy loop. */
export const GOAWAY_FLOOR_MS = 10;

export interface EndHint {
  /** "goaway" when the server sent GOAWAY (or the SSE goaway event). */
  reason: string;
  /** The server's reconnect_after_ms (GOAWAY) or retry_after_ms (ERROR, HTTP 503); 0 if none. */
  hintMs: number;
}

/**
 * waitAfter is the pause before the next connection. GOAWAY: the server's
 * reconnect_after_ms (it already spreads devices over the drain), and the
 * backoff is not counted. ERROR or an HTTP refusal with retry_after_ms: at
 * least the hint, and more when refusals repeat. Anything else: the backoff.
 */
export function waitAfter(end: EndHint, backoff: Backoff): number {
  if (end.reason === "goaway") return Math.max(end.hintMs, GOAWAY_FLOOR_MS);
  const b = backoff.next();
  return end.hintMs > 0 ? Math.max(end.hintMs, b) : b;
}
