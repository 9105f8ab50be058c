// Frames of socket protocol v1 (docs/protocol.md). Over WebSocket each binary
// message is one frame: the type byte, then the body. Seqs and ids are
// uint64 big-endian on the wire and bigint here, so that no value loses
// precision, whatever its size.

export const FrameType = {
  HELLO: 0x01,
  WELCOME: 0x02,
  PING: 0x03,
  PONG: 0x04,
  DELIVER: 0x05,
  ACK: 0x06,
  PUBLISH: 0x07,
  PUBACK: 0x08,
  GOAWAY: 0x09,
  ERROR: 0x0a,
} as const;

export type FrameTypeName = keyof typeof FrameType;

export const SUBPROTOCOL = "scp.v1";
export const PROTOCOL_VERSION = 1;
export const MAX_UINT64 = (1n << 64n) - 1n;

const names: Record<number, FrameTypeName> = {};
for (const [k, v] of Object.entries(FrameType)) names[v] = k as FrameTypeName;

/** typeName names a frame type for messages ("DELIVER", or "0x0b"). */
export function typeName(t: number): string {
  return names[t] ?? "0x" + t.toString(16).padStart(2, "0");
}

export interface Frame {
  type: number;
  body: Uint8Array;
}

export class ProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ProtocolError";
  }
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export function utf8(s: string): Uint8Array {
  return encoder.encode(s);
}

export function fromUtf8(b: Uint8Array): string {
  return decoder.decode(b);
}

/** frame builds one WebSocket message: type byte + body. */
export function encodeFrame(type: number, body: Uint8Array = new Uint8Array(0)): Uint8Array {
  const out = new Uint8Array(1 + body.length);
  out[0] = type;
  out.set(body, 1);
  return out;
}

/** decodeFrame splits one WebSocket message into type and body (a view, not a copy). */
export function decodeFrame(msg: ArrayBuffer | Uint8Array): Frame {
  const b = msg instanceof Uint8Array ? msg : new Uint8Array(msg);
  if (b.length === 0) throw new ProtocolError("empty frame");
  return { type: b[0], body: b.subarray(1) };
}

function checkU64(n: bigint, what: string): void {
  if (n < 0n || n > MAX_UINT64) throw new RangeError(`${what} ${n} is not a uint64`);
}

export function putU64(n: bigint): Uint8Array {
  checkU64(n, "value");
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, n);
  return b;
}

/** readU64 reads the big-endian uint64 at the start of body. */
export function readU64(body: Uint8Array, what = "number"): bigint {
  if (body.length < 8) throw new ProtocolError(`${what}: ${body.length} bytes, want 8`);
  return new DataView(body.buffer, body.byteOffset, 8).getBigUint64(0);
}

export function encodeAck(seq: bigint): Uint8Array {
  return encodeFrame(FrameType.ACK, putU64(seq));
}

export function encodePublish(id: bigint, payload: Uint8Array): Uint8Array {
  const out = new Uint8Array(9 + payload.length);
  out[0] = FrameType.PUBLISH;
  new DataView(out.buffer).setBigUint64(1, id);
  out.set(payload, 9);
  return out;
}

export function encodePing(data: Uint8Array = new Uint8Array(0)): Uint8Array {
  if (data.length > 64) throw new RangeError("PING body above 64 bytes");
  return encodeFrame(FrameType.PING, data);
}

export interface Hello {
  device: string;
  token: string;
  lastSeq: bigint;
}

/** helloJSON is the HELLO body; last_seq is written as an exact integer. */
export function helloJSON(h: Hello): string {
  checkU64(h.lastSeq, "last_seq");
  return `{"protocol":${PROTOCOL_VERSION},"device":${JSON.stringify(h.device)},"token":${JSON.stringify(h.token)},"last_seq":${h.lastSeq}}`;
}

export function encodeHello(h: Hello): Uint8Array {
  return encodeFrame(FrameType.HELLO, utf8(helloJSON(h)));
}

/** parseDeliver returns a DELIVER's seq and payload (a view into body). */
export function parseDeliver(body: Uint8Array): { seq: bigint; payload: Uint8Array } {
  return { seq: readU64(body, "DELIVER seq"), payload: body.subarray(8) };
}

export interface Welcome {
  server: string;
  sessionEpoch: bigint;
  resumed: boolean;
  heartbeatMs: number;
  lastPublishId: bigint;
  state: Record<string, unknown>;
}

/**
 * parseWelcome reads a WELCOME body. session_epoch and last_publish_id are
 * read from the JSON text itself, so they stay exact above 2^53.
 */
export function parseWelcome(text: string): Welcome {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new ProtocolError("WELCOME is not JSON: " + (e as Error).message);
  }
  if (typeof v !== "object" || v === null || Array.isArray(v)) throw new ProtocolError("WELCOME is not a JSON object");
  const o = v as Record<string, unknown>;
  const raw = topLevelNumbers(text, ["session_epoch", "last_publish_id"]);
  const state = o.state;
  return {
    server: typeof o.server === "string" ? o.server : "",
    sessionEpoch: raw.session_epoch ?? 0n,
    resumed: o.resumed === true,
    heartbeatMs: typeof o.heartbeat_ms === "number" && o.heartbeat_ms > 0 ? o.heartbeat_ms : 15000,
    lastPublishId: raw.last_publish_id ?? 0n,
    state: typeof state === "object" && state !== null && !Array.isArray(state) ? (state as Record<string, unknown>) : {},
  };
}

export interface GoAway {
  reason: string;
  reconnectAfterMs: number;
}

export function parseGoAway(text: string): GoAway {
  const o = parseObject(text);
  return {
    reason: typeof o.reason === "string" ? o.reason : "",
    reconnectAfterMs: nonNegative(o.reconnect_after_ms),
  };
}

export interface ServerErrorBody {
  code: string;
  message: string;
  retryAfterMs: number;
}

export function parseError(text: string): ServerErrorBody {
  const o = parseObject(text);
  return {
    code: typeof o.code === "string" ? o.code : "unknown",
    message: typeof o.message === "string" ? o.message : "",
    retryAfterMs: nonNegative(o.retry_after_ms),
  };
}

function nonNegative(v: unknown): number {
  return typeof v === "number" && Number.isFinite(v) && v > 0 ? v : 0;
}

function parseObject(text: string): Record<string, unknown> {
  try {
    const v = JSON.parse(text);
    if (typeof v === "object" && v !== null && !Array.isArray(v)) return v as Record<string, unknown>;
  } catch {
    // fall through
  }
  return {};
}

/**
 * topLevelNumbers returns, for each key of keys that the top-level object of
 * the JSON text holds as a non-negative integer, its exact value. Nested
 * objects (such as WELCOME's state) are skipped, so a key of the same name
 * there is never taken. The text must be valid JSON (parse it first).
 */
export function topLevelNumbers(text: string, keys: string[]): Record<string, bigint> {
  const out: Record<string, bigint> = {};
  let depth = 0;
  let i = 0;
  let expectKey = false;
  let key: string | null = null;
  const n = text.length;
  while (i < n) {
    const c = text[i];
    if (c === '"') {
      // A string: find its end, honouring escapes.
      let j = i + 1;
      while (j < n && text[j] !== '"') j += text[j] === "\\" ? 2 : 1;
      const s = text.slice(i, j + 1);
      if (depth === 1 && expectKey) {
        key = JSON.parse(s) as string;
        expectKey = false;
      }
      i = j + 1;
      continue;
    }
    if (c === "{" || c === "[") {
      depth++;
      if (depth === 1 && c === "{") expectKey = true;
      key = null;
    } else if (c === "}" || c === "]") {
      depth--;
    } else if (c === ",") {
      if (depth === 1) expectKey = true;
      key = null;
    } else if (c === ":") {
      // the value follows; key stays set until the next comma
    } else if (depth === 1 && key !== null && (c === "-" || (c >= "0" && c <= "9"))) {
      let j = i;
      while (j < n && /[-+0-9.eE]/.test(text[j])) j++;
      const num = text.slice(i, j);
      if (keys.includes(key) && /^[0-9]+$/.test(num)) out[key] = BigInt(num);
      key = null;
      i = j;
      continue;
    }
    i++;
  }
  return out;
}

const b64chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const b64index = new Int16Array(128).fill(-1);
for (let i = 0; i < b64chars.length; i++) b64index[b64chars.charCodeAt(i)] = i;

/** base64 encodes bytes as standard base64 with padding. */
export function toBase64(b: Uint8Array): string {
  let out = "";
  let i = 0;
  for (; i + 2 < b.length; i += 3) {
    const v = (b[i] << 16) | (b[i + 1] << 8) | b[i + 2];
    out += b64chars[v >> 18] + b64chars[(v >> 12) & 63] + b64chars[(v >> 6) & 63] + b64chars[v & 63];
  }
  if (i < b.length) {
    const v = (b[i] << 16) | ((i + 1 < b.length ? b[i + 1] : 0) << 8);
    out += b64chars[v >> 18] + b64chars[(v >> 12) & 63];
    out += i + 1 < b.length ? b64chars[(v >> 6) & 63] + "=" : "==";
  }
  return out;
}

/**
 * fromBase64 decodes standard base64 (padding optional, ASCII whitespace
 * skipped: an empty SSE payload arrives as a line feed); it throws on
 * anything else.
 */
export function fromBase64(s: string): Uint8Array {
  const clean = s.replace(/[\t\n\f\r ]+/g, "").replace(/=+$/, "");
  if (clean.length % 4 === 1) throw new ProtocolError("bad base64 length");
  const out = new Uint8Array(Math.floor((clean.length * 3) / 4));
  let acc = 0;
  let bits = 0;
  let o = 0;
  for (let i = 0; i < clean.length; i++) {
    const c = clean.charCodeAt(i);
    const v = c < 128 ? b64index[c] : -1;
    if (v < 0) throw new ProtocolError("bad base64 character");
    acc = (acc << 6) | v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[o++] = (acc >> bits) & 0xff;
    }
  }
  return out;
}
