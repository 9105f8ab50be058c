// What a device keeps across page reloads: the last seq it processed, the
// next PUBLISH id, and the messages it published that the cluster has not
// stored yet.

import { fromBase64, toBase64 } from "./codec.js";

/** Store is where the client persists its state; localStorage fits. */
export interface Store {
  get(key: string): string | null | undefined;
  set(key: string, value: string): void;
}

/** MemoryStore keeps state for the life of the process only. */
export class MemoryStore implements Store {
  readonly data = new Map<string, string>();
  get(key: string): string | null {
    return this.data.get(key) ?? null;
  }
  set(key: string, value: string): void {
    this.data.set(key, value);
  }
}

/** localStore wraps window.localStorage, or returns null where there is none (or it is blocked). */
export function localStore(): Store | null {
  try {
    const ls = (globalThis as { localStorage?: Storage }).localStorage;
    if (!ls) return null;
    const probe = "__scp_probe__";
    ls.setItem(probe, "1");
    ls.removeItem(probe);
    return { get: (k) => ls.getItem(k), set: (k, v) => ls.setItem(k, v) };
  } catch {
    return null;
  }
}

/** An upstream message not yet stored by the cluster; id is null until one is assigned. */
export interface OutboxEntry {
  id: bigint | null;
  payload: Uint8Array;
}

function parseBig(s: string | null | undefined): bigint | null {
  if (typeof s !== "string" || !/^[0-9]{1,20}$/.test(s)) return null;
  return BigInt(s);
}

/**
 * DeviceState reads and writes one device's keys in a Store:
 * `<prefix>:<device>:last_seq`, `:next_id` (decimal strings) and `:outbox`
 * (JSON: [{"id":"<decimal>"|null,"p":"<base64>"}]). A store that throws
 * (quota, privacy mode) makes the state live in memory only; onError hears of it.
 */
export class DeviceState {
  private readonly key: (name: string) => string;

  constructor(
    private readonly store: Store,
    device: string,
    prefix = "scp",
    private readonly onError: (e: unknown) => void = () => {},
  ) {
    this.key = (name) => `${prefix}:${device}:${name}`;
  }

  private read(name: string): string | null | undefined {
    try {
      return this.store.get(this.key(name));
    } catch (e) {
      this.onError(e);
      return null;
    }
  }

  private write(name: string, value: string): void {
    try {
      this.store.set(this.key(name), value);
    } catch (e) {
      this.onError(e);
    }
  }

  lastSeq(): bigint {
    return parseBig(this.read("last_seq")) ?? 0n;
  }

  setLastSeq(seq: bigint): void {
    this.write("last_seq", seq.toString());
  }

  /** nextId is the least id the next PUBLISH may take (1 when nothing was stored). */
  nextId(): bigint {
    const n = parseBig(this.read("next_id"));
    return n !== null && n > 0n ? n : 1n;
  }

  setNextId(id: bigint): void {
    this.write("next_id", id.toString());
  }

  outbox(): OutboxEntry[] {
    const raw = this.read("outbox");
    if (!raw) return [];
    try {
      const v = JSON.parse(raw) as unknown;
      if (!Array.isArray(v)) return [];
      const out: OutboxEntry[] = [];
      for (const e of v) {
        if (typeof e !== "object" || e === null || typeof (e as { p?: unknown }).p !== "string") continue;
        const id = (e as { id?: unknown }).id;
        out.push({ id: typeof id === "string" ? parseBig(id) : null, payload: fromBase64((e as { p: string }).p) });
      }
      return out;
    } catch (e) {
      this.onError(e);
      return [];
    }
  }

  setOutbox(entries: readonly OutboxEntry[]): void {
    this.write("outbox", JSON.stringify(entries.map((e) => ({ id: e.id === null ? null : e.id.toString(), p: toBase64(e.payload) }))));
  }
}

/**
 * Dedup passes each seq once: deliveries are at-least-once and arrive in
 * increasing seq order, so a seq not above the last one processed is a
 * repeat. Seqs jump (never fall) when the store lost a device's outbox.
 */
export class Dedup {
  constructor(private last: bigint = 0n) {}

  /** accept reports whether seq is new, and if so records it as processed. */
  accept(seq: bigint): boolean {
    if (seq <= this.last) return false;
    this.last = seq;
    return true;
  }

  get lastSeq(): bigint {
    return this.last;
  }
}
