// Fakes for the client tests: a WebSocket whose "server" side the test
// drives frame by frame, and a fetch that answers SSE requests.
import { codec } from "../dist/index.js";

const { FrameType, encodeFrame, decodeFrame, putU64, readU64 } = codec;

export function frame(type, body = new Uint8Array(0)) {
  return encodeFrame(type, body).slice().buffer;
}

export function deliverFrame(seq, text) {
  return frame(FrameType.DELIVER, new Uint8Array([...putU64(seq), ...new TextEncoder().encode(text)]));
}

export function jsonFrame(type, obj) {
  return frame(type, new TextEncoder().encode(typeof obj === "string" ? obj : JSON.stringify(obj)));
}

/** FakeWS records every socket; a test sets FakeWS.refuse to fail the opening. */
export class FakeWS {
  static sockets = [];
  static refuse = false;
  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    this.readyState = 0;
    this.sent = [];
    this.waiters = [];
    FakeWS.sockets.push(this);
    const refuse = FakeWS.refuse;
    setTimeout(() => {
      if (refuse) {
        this.readyState = 3;
        this.onerror?.({});
        this.onclose?.({ code: 1006, reason: "" });
      } else {
        this.readyState = 1;
        this.onopen?.({});
      }
    }, 1);
  }
  send(data) {
    const b = data instanceof Uint8Array ? data.slice() : new Uint8Array(data);
    const f = decodeFrame(b);
    const rec = { type: f.type, body: f.body };
    if (f.type === FrameType.HELLO) rec.json = JSON.parse(new TextDecoder().decode(f.body));
    if (f.type === FrameType.ACK) rec.seq = readU64(f.body);
    if (f.type === FrameType.PUBLISH) {
      rec.id = readU64(f.body);
      rec.text = new TextDecoder().decode(f.body.subarray(8));
    }
    this.sent.push(rec);
    for (const w of [...this.waiters]) w();
  }
  close() {
    this.readyState = 3;
  }
  /** server: send a binary message to the client. */
  push(buf) {
    this.onmessage?.({ data: buf });
  }
  /** server: close the connection. */
  drop(code = 1006) {
    this.readyState = 3;
    this.onclose?.({ code, reason: "" });
  }
  /** waitFor resolves with the first sent frame matching pred (checked again after every send). */
  waitFor(pred, what = "frame", ms = 2000) {
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`timeout waiting for ${what}; sent ${JSON.stringify(this.sent.map((f) => f.type))}`)), ms);
      const check = () => {
        const f = this.sent.find(pred);
        if (f) {
          clearTimeout(t);
          this.waiters = this.waiters.filter((w) => w !== check);
          resolve(f);
          return true;
        }
        return false;
      };
      if (!check()) this.waiters.push(check);
    });
  }
}

export function welcome(ws, extra = {}) {
  ws.push(jsonFrame(FrameType.WELCOME, { server: "pod-a", session_epoch: 7, resumed: false, heartbeat_ms: 15000, last_publish_id: 0, state: {}, ...extra }));
}

/** waitUntil polls cond every few ms, failing after ms. */
export async function waitUntil(cond, what, ms = 2000) {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error("timeout waiting for " + what);
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** nextSocket waits for the n-th socket (1-based) to be created. */
export async function socket(n) {
  await waitUntil(() => FakeWS.sockets.length >= n, `WebSocket #${n}`);
  return FakeWS.sockets[n - 1];
}

/**
 * FakeSSE is a fetch for the SSE endpoints: each GET /sse gets a stream
 * the test writes to; POSTs are answered by handlers.
 */
export class FakeSSE {
  constructor() {
    this.streams = [];
    this.posts = [];
    this.onPost = () => new Response(null, { status: 204 });
    this.fetch = async (url, init = {}) => {
      const u = new URL(url);
      if ((init.method ?? "GET") === "GET") {
        let ctl;
        const body = new ReadableStream({ start: (c) => (ctl = c) });
        const s = {
          url: u,
          headers: init.headers,
          write: (text) => ctl.enqueue(new TextEncoder().encode(text)),
          end: () => ctl.close(),
          aborted: false,
        };
        init.signal?.addEventListener("abort", () => {
          s.aborted = true;
          try {
            ctl.error(new DOMException("aborted", "AbortError"));
          } catch {}
        });
        this.streams.push(s);
        return new Response(body, { status: 200, headers: { "content-type": "text/event-stream" } });
      }
      const rec = { url: u, path: u.pathname, q: Object.fromEntries(u.searchParams), body: init.body ? new TextDecoder().decode(init.body) : "", headers: init.headers };
      this.posts.push(rec);
      return this.onPost(rec);
    };
  }
  async stream(n) {
    await waitUntil(() => this.streams.length >= n, `SSE stream #${n}`);
    return this.streams[n - 1];
  }
}
