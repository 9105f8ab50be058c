// DeviceClient: one device's connection to a socket cluster, over WebSocket
// or Server-Sent Events, resumed after every disconnect on any server.

import {
  FrameType,
  SUBPROTOCOL,
  ProtocolError,
  decodeFrame,
  encodeAck,
  encodeFrame,
  encodeHello,
  encodePing,
  encodePublish,
  fromBase64,
  fromUtf8,
  parseDeliver,
  parseError,
  parseGoAway,
  parseWelcome,
  readU64,
  typeName,
  utf8,
  type Frame,
  type Welcome,
} from "./codec.js";
import { Backoff, waitAfter } from "./backoff.js";
import { SSEParser, type SSEEvent } from "./sse.js";
import { Dedup, DeviceState, MemoryStore, localStore, type OutboxEntry, type Store } from "./store.js";

export type Transport = "ws" | "sse";
export type TransportOption = "auto" | Transport;
export type Status = "idle" | "connecting" | "connected" | "waiting" | "stopped";

export interface DeviceClientOptions {
  /**
   * The cluster's WebSocket listener: "host:port", "http(s)://host:port" or
   * "ws(s)://host:port" (a path prefix is kept; "/ws" and "/sse" are appended).
   * Several addresses are tried in turn, from a random one, after each disconnect.
   */
  servers: string | string[];
  device: string;
  /** The device JWT, or a function asked before every connection (for short-lived tokens). */
  token?: string | (() => string | Promise<string>);
  /** "auto" (default): WebSocket, and SSE when a WebSocket cannot be opened. */
  transport?: TransportOption;
  /** Where last_seq, the next PUBLISH id and unsent publishes are kept; default localStorage, else memory. */
  store?: Store;
  /** Key prefix in the store (default "scp"): keys are `<prefix>:<device>:last_seq` etc. */
  storePrefix?: string;
  /** Bounds of the reconnect backoff (full jitter), default 100 ms and 10 s. */
  backoffMinMs?: number;
  backoffMaxMs?: number;
  /** How long a connection may take to get WELCOME (default 10 s). */
  handshakeTimeoutMs?: number;
  /** A PUBLISH unanswered for this long is sent again with its id (default 10 s). */
  pubAckTimeoutMs?: number;
  /** ACKs are coalesced over this delay (default 200 ms). */
  ackDelayMs?: number;
  /** Publishes sent on a WebSocket before their PUBACKs (default 64; SSE sends one at a time). */
  maxInFlight?: number;
  /** publish() refuses beyond this many unacknowledged messages (default 1000). */
  maxQueued?: number;
  /** In "auto", how long to stay on SSE after a WebSocket failed before trying it again (default 60 s). */
  wsRetryMs?: number;
  /** WebSocket constructor (default globalThis.WebSocket). */
  WebSocket?: typeof WebSocket;
  /** fetch function (default globalThis.fetch). */
  fetch?: typeof fetch;
  /** Random source in [0, 1) for the backoff (tests). */
  random?: () => number;
}

export interface ConnectedEvent {
  server: string;
  transport: Transport;
  resumed: boolean;
  sessionEpoch: bigint;
  heartbeatMs: number;
}

export interface DisconnectedEvent {
  transport: Transport;
  /** "goaway", "error", "refused", "closed", "failed", "server_silent", "handshake_timeout", "protocol_error", "stopped". */
  reason: string;
  /** The server's ERROR code, when it sent one. */
  code?: string;
  message?: string;
  /** Whether this connection had been welcomed. */
  welcomed: boolean;
  /** The wait before the next attempt (0 when none follows). */
  waitMs: number;
  willReconnect: boolean;
}

export interface DeviceMessage {
  seq: bigint;
  payload: Uint8Array;
  /** payload decoded as UTF-8 (invalid bytes become U+FFFD). */
  text: string;
}

export interface PubAckEvent {
  id: bigint;
  payload: Uint8Array;
}

export interface DeviceErrorEvent {
  /** The protocol's ERROR code, "http_<status>" for another HTTP refusal, or "client" for a local failure. */
  code: string;
  message: string;
  retryAfterMs?: number;
  status?: number;
  transport?: Transport;
}

export interface StoppedEvent {
  /** "stopped" (stop() was called) or "session_taken_over". */
  reason: string;
}

export interface DeviceEvents {
  connected: ConnectedEvent;
  disconnected: DisconnectedEvent;
  message: DeviceMessage;
  state: Record<string, unknown>;
  puback: PubAckEvent;
  error: DeviceErrorEvent;
  status: Status;
  stopped: StoppedEvent;
}

type Listener<T> = (ev: T) => void;

interface Server {
  http: string;
  ws: string;
}

interface End {
  reason: string;
  code?: string;
  message?: string;
  hintMs: number;
  welcomed: boolean;
  /** WebSocket: the socket opened (a failure before is a transport failure). */
  opened: boolean;
}

interface Pending extends OutboxEntry {
  resolve?: (id: bigint) => void;
  reject?: (e: Error) => void;
  sentOn?: Conn;
  sentAt?: number;
}

interface ConnBase {
  welcomed: boolean;
  done: boolean;
  epoch: bigint;
  hb: number;
  lastRecv: number;
  ackSent: bigint;
  unacked: number;
  ackTimer?: ReturnType<typeof setTimeout>;
  end?: Omit<End, "welcomed" | "opened">;
}

interface WSConn extends ConnBase {
  kind: "ws";
  ws: WebSocket;
  lastPing: number;
  pings: number;
  ticker?: ReturnType<typeof setInterval>;
  finish: (end: Omit<End, "welcomed" | "opened">) => void;
}

interface SSEConn extends ConnBase {
  kind: "sse";
  server: Server;
  token: string;
  ac: AbortController;
}

type Conn = WSConn | SSEConn;

/** The client was stopped, or the session was taken over, before the message was stored. */
export class StoppedError extends Error {
  constructor(reason: string) {
    super("client stopped (" + reason + "); the message stays queued in the store for the next client of this device");
    this.name = "StoppedError";
  }
}

const now = () => Date.now();
const SILENCE_FACTOR = 2.5;
const ACK_BURST = 256;

function parseServer(s: string): Server {
  let u = s.trim();
  if (!/^[a-z][a-z0-9+.-]*:\/\//i.test(u)) {
    const secure = (globalThis as { location?: Location }).location?.protocol === "https:";
    u = (secure ? "https://" : "http://") + u;
  }
  const url = new URL(u);
  const scheme = url.protocol === "wss:" || url.protocol === "https:" ? "https:" : "http:";
  let path = url.pathname.replace(/\/+$/, "");
  if (path.endsWith("/ws") || path.endsWith("/sse")) path = path.slice(0, path.lastIndexOf("/"));
  const http = `${scheme}//${url.host}${path}`;
  return { http, ws: http.replace(/^http/, "ws") + "/ws" };
}

/**
 * DeviceClient keeps one device connected: call start(), listen with on(),
 * publish with publish(), and stop() when done.
 */
export class DeviceClient {
  private readonly opt: Required<
    Pick<
      DeviceClientOptions,
      | "handshakeTimeoutMs"
      | "pubAckTimeoutMs"
      | "ackDelayMs"
      | "maxInFlight"
      | "maxQueued"
      | "wsRetryMs"
      | "transport"
      | "storePrefix"
    >
  > &
    DeviceClientOptions;
  private readonly servers: Server[];
  private serverIndex: number;
  private readonly listeners = new Map<keyof DeviceEvents, Set<Listener<never>>>();
  private readonly state: DeviceState;
  private readonly dedup: Dedup;
  private readonly backoff: Backoff;
  private readonly pubBackoff: Backoff;
  private readonly fetchFn: typeof fetch | undefined;
  private readonly outbox: Pending[];
  private nextId: bigint;
  private idsKnown = false;
  private conn: Conn | null = null;
  private started = false;
  private stopped = false;
  private readonly wakers = new Set<() => void>();
  private ssePumping = false;
  private sseUntil = 0;
  private wsFailures = 0;
  private _status: Status = "idle";
  private _server = "";
  private _transport: Transport | null = null;

  constructor(options: DeviceClientOptions) {
    if (!options || typeof options.device !== "string" || options.device === "") throw new TypeError("device is required");
    const list = Array.isArray(options.servers) ? options.servers : [options.servers];
    if (list.length === 0 || list.some((s) => typeof s !== "string" || s.trim() === "")) throw new TypeError("servers is required");
    const transport = options.transport ?? "auto";
    if (!["auto", "ws", "sse"].includes(transport)) throw new TypeError(`transport ${String(transport)}: want auto, ws or sse`);
    this.opt = {
      handshakeTimeoutMs: 10_000,
      pubAckTimeoutMs: 10_000,
      ackDelayMs: 200,
      maxInFlight: 64,
      maxQueued: 1000,
      wsRetryMs: 60_000,
      storePrefix: "scp",
      ...options,
      transport,
    };
    this.servers = list.map(parseServer);
    const random = options.random ?? Math.random;
    this.serverIndex = Math.floor(random() * this.servers.length) % this.servers.length;
    this.backoff = new Backoff(options.backoffMinMs ?? 100, options.backoffMaxMs ?? 10_000, random);
    this.pubBackoff = new Backoff(options.backoffMinMs ?? 100, options.backoffMaxMs ?? 10_000, random);
    const f = options.fetch ?? (globalThis as { fetch?: typeof fetch }).fetch;
    this.fetchFn = f && !options.fetch ? f.bind(globalThis) : f;
    this.state = new DeviceState(options.store ?? localStore() ?? new MemoryStore(), options.device, this.opt.storePrefix, (e) =>
      this.emit("error", { code: "client", message: "store: " + errText(e) }),
    );
    this.dedup = new Dedup(this.state.lastSeq());
    this.nextId = this.state.nextId();
    this.outbox = this.state.outbox();
  }

  /** status: idle (before start), connecting, connected, waiting (to reconnect), stopped. */
  get status(): Status {
    return this._status;
  }

  /** The server of the current (or last) session, from its WELCOME. */
  get server(): string {
    return this._server;
  }

  /** The transport of the current (or last) session. */
  get transport(): Transport | null {
    return this._transport;
  }

  /** The highest seq processed (and persisted). */
  get lastSeq(): bigint {
    return this.dedup.lastSeq;
  }

  /** Messages published and not yet stored by the cluster. */
  get pendingPublishes(): number {
    return this.outbox.length;
  }

  on<K extends keyof DeviceEvents>(event: K, fn: Listener<DeviceEvents[K]>): () => void {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    set.add(fn as Listener<never>);
    return () => this.off(event, fn);
  }

  off<K extends keyof DeviceEvents>(event: K, fn: Listener<DeviceEvents[K]>): void {
    this.listeners.get(event)?.delete(fn as Listener<never>);
  }

  private emit<K extends keyof DeviceEvents>(event: K, ev: DeviceEvents[K]): void {
    const set = this.listeners.get(event);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        (fn as Listener<DeviceEvents[K]>)(ev);
      } catch (e) {
        if (event !== "error") this.emit("error", { code: "client", message: `${event} listener threw: ${errText(e)}` });
      }
    }
  }

  /** start connects, and keeps reconnecting until stop() or a takeover. */
  start(): this {
    if (this.started) return this;
    this.started = true;
    void this.loop();
    return this;
  }

  /**
   * stop closes the connection for good. Unacknowledged publishes reject
   * with StoppedError but stay in the store: the next client of this
   * device (a reload) sends them with their ids.
   */
  stop(): void {
    this.halt("stopped");
  }

  /**
   * publish queues payload for the cluster and resolves with its PUBLISH id
   * once stored (PUBACK, or 200 on SSE). The message is kept in the store
   * until then and survives a reload; ids strictly increase per device.
   */
  publish(data: string | Uint8Array): Promise<bigint> {
    if (this.stopped) return Promise.reject(new StoppedError("stopped"));
    if (this.outbox.length >= this.opt.maxQueued) {
      return Promise.reject(new Error(`${this.outbox.length} messages wait for the cluster (maxQueued)`));
    }
    const payload = typeof data === "string" ? utf8(data) : data.slice();
    return new Promise<bigint>((resolve, reject) => {
      this.outbox.push({ id: null, payload, resolve, reject });
      if (this.idsKnown) this.assignIds();
      else this.persistOutbox();
      this.pump();
    });
  }

  private setStatus(s: Status): void {
    if (this._status === s) return;
    this._status = s;
    this.emit("status", s);
  }

  private halt(reason: string): void {
    if (this.stopped) return;
    this.stopped = true;
    const c = this.conn;
    if (c) this.endConn(c, { reason: "stopped", code: reason === "stopped" ? undefined : reason, hintMs: 0 });
    for (const w of [...this.wakers]) w();
    for (const p of this.outbox) {
      p.reject?.(new StoppedError(reason));
      p.resolve = p.reject = undefined;
    }
    this.setStatus("stopped");
    this.emit("stopped", { reason });
  }

  private endConn(c: Conn, end: Omit<End, "welcomed" | "opened">): void {
    if (c.kind === "ws") c.finish(end);
    else {
      c.end ??= end;
      c.ac.abort();
    }
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(t);
        this.wakers.delete(done);
        resolve();
      };
      const t = setTimeout(done, ms);
      this.wakers.add(done);
    });
  }

  private chooseTransport(): Transport {
    const t = this.opt.transport;
    if (t !== "auto") return t;
    if (!this.wsCtor()) return "sse";
    return now() < this.sseUntil ? "sse" : "ws";
  }

  private wsCtor(): typeof WebSocket | undefined {
    return this.opt.WebSocket ?? (globalThis as { WebSocket?: typeof WebSocket }).WebSocket;
  }

  private async token(): Promise<string> {
    const t = this.opt.token;
    if (typeof t === "function") return await t();
    return t ?? "";
  }

  private async loop(): Promise<void> {
    while (!this.stopped) {
      const transport = this.chooseTransport();
      const server = this.servers[this.serverIndex];
      this.setStatus("connecting");
      let end: End;
      try {
        end = transport === "ws" ? await this.runWS(server) : await this.runSSE(server);
      } catch (e) {
        end = { reason: "failed", message: errText(e), hintMs: 0, welcomed: false, opened: false };
      }
      if (this.stopped) {
        this.emit("disconnected", { transport, reason: end.reason, code: end.code, message: end.message, welcomed: end.welcomed, waitMs: 0, willReconnect: false });
        break;
      }
      if (end.code === "session_taken_over") {
        this.emit("disconnected", { transport, reason: end.reason, code: end.code, message: end.message, welcomed: end.welcomed, waitMs: 0, willReconnect: false });
        this.halt("session_taken_over");
        break;
      }
      let wait: number | undefined;
      const transportFailed = !end.welcomed && end.code === undefined && end.reason !== "goaway";
      if (transport === "ws") {
        if (end.welcomed) this.wsFailures = 0;
        else if (transportFailed) this.wsFailures++;
        if (this.opt.transport === "auto" && transportFailed && (!end.opened || this.wsFailures >= 2)) {
          // The WebSocket cannot get through (a proxy, a firewall): SSE, at once, to the same server.
          this.sseUntil = now() + this.opt.wsRetryMs;
          this.wsFailures = 0;
          wait = 0;
        }
      }
      if (end.welcomed) this.backoff.reset();
      if (wait === undefined) {
        wait = waitAfter(end, this.backoff);
        this.serverIndex = (this.serverIndex + 1) % this.servers.length;
      }
      this.setStatus("waiting");
      this.emit("disconnected", { transport, reason: end.reason, code: end.code, message: end.message, welcomed: end.welcomed, waitMs: wait, willReconnect: true });
      if (wait > 0) await this.sleep(wait);
    }
  }

  // ---- session, common to both transports ----

  private onWelcome(c: Conn, w: Welcome): void {
    c.welcomed = true;
    c.epoch = w.sessionEpoch;
    c.hb = w.heartbeatMs;
    c.lastRecv = now();
    this._server = w.server;
    this._transport = c.kind;
    if (w.lastPublishId + 1n > this.nextId) {
      this.nextId = w.lastPublishId + 1n;
      this.state.setNextId(this.nextId);
    }
    this.idsKnown = true;
    // Ids the cluster recorded already were stored: their PUBACK was lost.
    for (let i = 0; i < this.outbox.length; ) {
      const p = this.outbox[i];
      if (p.id !== null && p.id <= w.lastPublishId) this.settle(i);
      else i++;
    }
    this.assignIds();
    this.setStatus("connected");
    this.emit("connected", { server: w.server, transport: c.kind, resumed: w.resumed, sessionEpoch: w.sessionEpoch, heartbeatMs: w.heartbeatMs });
    this.emit("state", w.state);
    this.pump();
  }

  private deliver(c: Conn, seq: bigint, payload: Uint8Array): void {
    if (this.dedup.accept(seq)) {
      const p = payload.slice();
      this.emit("message", { seq, payload: p, text: fromUtf8(p) });
      // Processed once the listeners returned: a reload during one gets the message again.
      this.state.setLastSeq(seq);
    }
    c.unacked++;
    if (c.unacked >= ACK_BURST) this.flushAck(c);
    else c.ackTimer ??= setTimeout(() => this.flushAck(c), this.opt.ackDelayMs);
  }

  private flushAck(c: Conn): void {
    if (c.ackTimer !== undefined) clearTimeout(c.ackTimer);
    c.ackTimer = undefined;
    c.unacked = 0;
    const seq = this.dedup.lastSeq;
    if (!c.welcomed || seq <= c.ackSent) return;
    const prev = c.ackSent;
    c.ackSent = seq;
    if (c.kind === "ws") {
      if (c.ws.readyState === 1) c.ws.send(encodeAck(seq));
      return;
    }
    const url = `${c.server.http}/sse/ack?device=${encodeURIComponent(this.opt.device)}&epoch=${c.epoch}&seq=${seq}`;
    this.post(url, c.token, undefined)
      .then((r) => {
        if (r.status !== 204 && c.ackSent === seq) c.ackSent = prev;
        void r.body?.cancel();
      })
      .catch(() => {
        if (c.ackSent === seq) c.ackSent = prev; // a later ACK (or the next HELLO's last_seq) makes up for it
      });
  }

  private assignIds(): void {
    let changed = false;
    for (const p of this.outbox) {
      if (p.id === null) {
        p.id = this.nextId++;
        changed = true;
      }
    }
    if (changed) {
      // The counter is stored before any of these ids leaves, so a reload never reuses one.
      this.state.setNextId(this.nextId);
      this.persistOutbox();
    }
  }

  private persistOutbox(): void {
    this.state.setOutbox(this.outbox);
  }

  /** settle completes outbox[i]: the cluster stored it. */
  private settle(i: number): void {
    const [p] = this.outbox.splice(i, 1);
    this.persistOutbox();
    this.pubBackoff.reset();
    p.resolve?.(p.id!);
    this.emit("puback", { id: p.id!, payload: p.payload });
  }

  private pubAcked(id: bigint): void {
    const i = this.outbox.findIndex((p) => p.id === id);
    if (i >= 0) this.settle(i);
  }

  private pump(): void {
    const c = this.conn;
    if (!c || !c.welcomed || c.done || this.stopped) return;
    if (c.kind === "ws") this.pumpWS(c);
    else void this.pumpSSE();
  }

  // ---- WebSocket ----

  private async runWS(server: Server): Promise<End> {
    const WS = this.wsCtor();
    if (!WS) return { reason: "failed", message: "no WebSocket in this environment", hintMs: 0, welcomed: false, opened: false };
    const token = await this.token();
    if (this.stopped) return { reason: "stopped", hintMs: 0, welcomed: false, opened: false };
    return new Promise<End>((resolve) => {
      let ws: WebSocket;
      try {
        ws = new WS(server.ws, [SUBPROTOCOL]);
      } catch (e) {
        resolve({ reason: "failed", message: errText(e), hintMs: 0, welcomed: false, opened: false });
        return;
      }
      ws.binaryType = "arraybuffer";
      let opened = false;
      const timers: ReturnType<typeof setTimeout>[] = [];
      const c: WSConn = {
        kind: "ws",
        ws,
        welcomed: false,
        done: false,
        epoch: 0n,
        hb: 15_000,
        lastRecv: now(),
        lastPing: now(),
        pings: 0,
        ackSent: this.dedup.lastSeq,
        unacked: 0,
        finish: (end) => {
          if (c.done) return;
          if (c.welcomed && ws.readyState === 1) this.flushAck(c); // the final ACK, before the close
          c.done = true;
          for (const t of timers) clearTimeout(t);
          if (c.ticker !== undefined) clearInterval(c.ticker);
          if (c.ackTimer !== undefined) clearTimeout(c.ackTimer);
          for (const p of this.outbox) if (p.sentOn === c) p.sentOn = undefined;
          ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
          try {
            ws.close(1000);
          } catch {
            // already closing
          }
          if (this.conn === c) this.conn = null;
          resolve({ ...end, welcomed: c.welcomed, opened });
        },
      };
      this.conn = c;
      timers.push(setTimeout(() => c.finish({ reason: "handshake_timeout", hintMs: 0 }), this.opt.handshakeTimeoutMs));
      ws.onopen = () => {
        opened = true;
        c.ackSent = this.dedup.lastSeq;
        ws.send(encodeHello({ device: this.opt.device, token, lastSeq: this.dedup.lastSeq }));
      };
      ws.onmessage = (ev: MessageEvent) => {
        if (c.done) return;
        if (!(ev.data instanceof ArrayBuffer)) {
          c.finish({ reason: "protocol_error", message: "a text message from the server", hintMs: 0 });
          return;
        }
        try {
          this.onFrame(c, decodeFrame(ev.data), () => clearTimeout(timers[0]));
        } catch (e) {
          c.finish({ reason: "protocol_error", message: errText(e), hintMs: 0 });
        }
      };
      ws.onerror = () => {
        // onclose follows with the details a browser gives (none, for privacy).
      };
      ws.onclose = (ev: CloseEvent) =>
        c.finish(c.end ?? { reason: opened ? "closed" : "failed", message: `WebSocket closed (${ev.code}${ev.reason ? " " + ev.reason : ""})`, hintMs: 0 });
    });
  }

  private tickWS(c: WSConn): void {
    if (c.done || !c.welcomed) return;
    const t = now();
    if (t - c.lastRecv > SILENCE_FACTOR * c.hb) {
      c.finish({ reason: "server_silent", message: `nothing from the server for ${t - c.lastRecv} ms`, hintMs: 0 });
      return;
    }
    if (t - c.lastPing >= c.hb * 0.8) {
      c.lastPing = t;
      c.pings++;
      if (c.ws.readyState === 1) c.ws.send(encodePing());
    }
    // A PUBLISH without PUBACK for too long: send every unanswered one again, in id order.
    const oldest = this.outbox.find((p) => p.sentOn === c);
    if (oldest && t - (oldest.sentAt ?? t) > this.opt.pubAckTimeoutMs) {
      for (const p of this.outbox) if (p.sentOn === c) p.sentOn = undefined;
      this.pumpWS(c);
    }
  }

  private pumpWS(c: WSConn): void {
    if (c.done || !c.welcomed || c.ws.readyState !== 1) return;
    let inflight = 0;
    for (const p of this.outbox) {
      if (p.id === null) break; // not yet numbered (cannot happen once welcomed)
      if (p.sentOn === c) {
        inflight++;
        continue;
      }
      if (inflight >= this.opt.maxInFlight) break;
      c.ws.send(encodePublish(p.id, p.payload));
      p.sentOn = c;
      p.sentAt = now();
      inflight++;
    }
  }

  private onFrame(c: WSConn, f: Frame, welcomed: () => void): void {
    c.lastRecv = now();
    switch (f.type) {
      case FrameType.WELCOME:
        if (c.welcomed) throw new ProtocolError("a second WELCOME");
        welcomed();
        this.onWelcome(c, parseWelcome(fromUtf8(f.body)));
        c.lastPing = now();
        // Heartbeats, silence and PUBACK timeouts are checked a few times per interval.
        c.ticker = setInterval(() => this.tickWS(c), Math.max(10, Math.min(1000, c.hb / 4, this.opt.pubAckTimeoutMs / 4)));
        return;
      case FrameType.DELIVER: {
        if (!c.welcomed) throw new ProtocolError("DELIVER before WELCOME");
        const d = parseDeliver(f.body);
        this.deliver(c, d.seq, d.payload);
        return;
      }
      case FrameType.PUBACK:
        this.pubAcked(readU64(f.body, "PUBACK id"));
        this.pumpWS(c);
        return;
      case FrameType.PING:
        if (c.ws.readyState === 1) c.ws.send(encodeFrame(FrameType.PONG, f.body.slice()));
        return;
      case FrameType.PONG:
        return;
      case FrameType.GOAWAY: {
        const g = parseGoAway(fromUtf8(f.body));
        c.finish((c.end = { reason: "goaway", message: g.reason, hintMs: g.reconnectAfterMs }));
        return;
      }
      case FrameType.ERROR: {
        const e = parseError(fromUtf8(f.body));
        this.emit("error", { code: e.code, message: e.message, retryAfterMs: e.retryAfterMs || undefined, transport: "ws" });
        c.finish((c.end = { reason: "error", code: e.code, message: e.message, hintMs: e.retryAfterMs }));
        return;
      }
      default:
        throw new ProtocolError(typeName(f.type) + " is not sent by servers");
    }
  }

  // ---- Server-Sent Events ----

  private post(url: string, token: string, body: Uint8Array | undefined, timeoutMs = 10_000): Promise<Response> {
    if (!this.fetchFn) return Promise.reject(new Error("no fetch in this environment"));
    const headers: Record<string, string> = {};
    if (token) headers.Authorization = "Bearer " + token;
    if (body) headers["Content-Type"] = "application/octet-stream";
    return this.fetchFn(url, { method: "POST", headers, body: body as BodyInit | undefined, cache: "no-store", signal: AbortSignal.timeout(timeoutMs) });
  }

  private async runSSE(server: Server): Promise<End> {
    if (!this.fetchFn) return { reason: "failed", message: "no fetch in this environment", hintMs: 0, welcomed: false, opened: false };
    const token = await this.token();
    if (this.stopped) return { reason: "stopped", hintMs: 0, welcomed: false, opened: false };
    const c: SSEConn = {
      kind: "sse",
      server,
      token,
      ac: new AbortController(),
      welcomed: false,
      done: false,
      epoch: 0n,
      hb: 15_000,
      lastRecv: now(),
      ackSent: this.dedup.lastSeq,
      unacked: 0,
    };
    this.conn = c;
    const hs = setTimeout(() => this.endConn(c, { reason: "handshake_timeout", hintMs: 0 }), this.opt.handshakeTimeoutMs);
    const ticker = setInterval(() => {
      if (c.welcomed && now() - c.lastRecv > SILENCE_FACTOR * c.hb) {
        this.endConn(c, { reason: "server_silent", message: `nothing on the stream for ${now() - c.lastRecv} ms`, hintMs: 0 });
      }
    }, 1000);
    const result = (end: Omit<End, "welcomed" | "opened">): End => ({ ...(c.end ?? end), welcomed: c.welcomed, opened: true });
    try {
      const url = `${server.http}/sse?device=${encodeURIComponent(this.opt.device)}&last_seq=${this.dedup.lastSeq}`;
      const headers: Record<string, string> = { Accept: "text/event-stream" };
      if (token) headers.Authorization = "Bearer " + token;
      let resp: Response;
      try {
        resp = await this.fetchFn(url, { headers, cache: "no-store", signal: c.ac.signal });
      } catch (e) {
        return result({ reason: "failed", message: errText(e), hintMs: 0 });
      }
      const type = resp.headers.get("content-type") ?? "";
      if (resp.status !== 200 || !type.startsWith("text/event-stream") || !resp.body) {
        const refusal = await httpRefusal(resp);
        this.emit("error", { ...refusal, transport: "sse" });
        return result({ reason: "refused", code: refusal.code, message: refusal.message, hintMs: refusal.retryAfterMs ?? 0 });
      }
      const reader = resp.body.getReader();
      const parser = new SSEParser();
      try {
        while (!c.end) {
          const { value, done } = await reader.read();
          if (done) break;
          c.lastRecv = now();
          for (const ev of parser.feedBytes(value)) {
            this.onSSEEvent(c, ev, () => clearTimeout(hs));
            if (c.end) break;
          }
        }
      } catch (e) {
        if (!c.end) return result({ reason: e instanceof ProtocolError ? "protocol_error" : "closed", message: errText(e), hintMs: 0 });
      }
      return result({ reason: "closed", message: "the stream ended", hintMs: 0 });
    } finally {
      clearTimeout(hs);
      clearInterval(ticker);
      if (c.welcomed) this.flushAck(c);
      if (c.ackTimer !== undefined) clearTimeout(c.ackTimer);
      c.done = true;
      c.ac.abort();
      if (this.conn === c) this.conn = null;
    }
  }

  private onSSEEvent(c: SSEConn, ev: SSEEvent, welcomed: () => void): void {
    switch (ev.event) {
      case "welcome":
        if (c.welcomed) throw new ProtocolError("a second welcome");
        welcomed();
        this.onWelcome(c, parseWelcome(ev.data));
        return;
      case "deliver":
      case "deliver64": {
        if (!c.welcomed) throw new ProtocolError("deliver before welcome");
        if (ev.id === null || !/^[0-9]{1,20}$/.test(ev.id)) throw new ProtocolError(`deliver with id ${JSON.stringify(ev.id)}`);
        const payload = ev.event === "deliver" ? utf8(ev.data) : fromBase64(ev.data);
        this.deliver(c, BigInt(ev.id), payload);
        return;
      }
      case "goaway": {
        const g = parseGoAway(ev.data);
        this.endConn(c, { reason: "goaway", message: g.reason, hintMs: g.reconnectAfterMs || (ev.retry ?? 0) });
        return;
      }
      case "error": {
        const e = parseError(ev.data);
        this.emit("error", { code: e.code, message: e.message, retryAfterMs: e.retryAfterMs || undefined, transport: "sse" });
        this.endConn(c, { reason: "error", code: e.code, message: e.message, hintMs: e.retryAfterMs });
        return;
      }
      default:
        return; // events of later protocol versions
    }
  }

  /** pumpSSE publishes the outbox one message at a time, while an SSE session is welcomed. */
  private async pumpSSE(): Promise<void> {
    if (this.ssePumping) return;
    this.ssePumping = true;
    try {
      for (;;) {
        const c = this.conn;
        if (this.stopped || !c || c.kind !== "sse" || !c.welcomed || c.done) return;
        const p = this.outbox[0];
        if (!p) return;
        if (p.id === null) this.assignIds();
        const id = p.id!;
        const url = `${c.server.http}/sse/publish?device=${encodeURIComponent(this.opt.device)}&epoch=${c.epoch}&id=${id}`;
        let resp: Response;
        try {
          resp = await this.post(url, c.token, p.payload, this.opt.pubAckTimeoutMs);
        } catch {
          await this.sleep(this.pubBackoff.next()); // no answer: the same id again
          continue;
        }
        if (resp.status === 200) {
          void resp.body?.cancel();
          this.pubAcked(id);
          continue;
        }
        const refusal = await httpRefusal(resp);
        if (resp.status === 409) {
          // A newer HELLO won. If it was this client's own next stream, the POST was only late.
          if (this.conn === c && !c.done) {
            this.emit("error", { ...refusal, transport: "sse" });
            this.endConn(c, { reason: "error", code: "session_taken_over", message: refusal.message, hintMs: 0 });
            return;
          }
          continue;
        }
        this.emit("error", { ...refusal, transport: "sse" });
        if (resp.status === 400 || resp.status === 413) {
          // The cluster will never take this message: give it up rather than block the ones after it.
          const i = this.outbox.indexOf(p);
          if (i >= 0) {
            this.outbox.splice(i, 1);
            this.persistOutbox();
            p.reject?.(new Error(`publish refused: ${refusal.code}: ${refusal.message}`));
          }
          continue;
        }
        if (resp.status === 401 && typeof this.opt.token === "function") {
          try {
            c.token = await this.token();
          } catch {
            // keep the old one
          }
        }
        await this.sleep(Math.max(refusal.retryAfterMs ?? 0, this.pubBackoff.next()));
      }
    } finally {
      this.ssePumping = false;
    }
  }
}

async function httpRefusal(resp: Response): Promise<DeviceErrorEvent & { retryAfterMs?: number }> {
  let text = "";
  try {
    text = await resp.text();
  } catch {
    // no body
  }
  const e = parseError(text);
  let retry = e.retryAfterMs;
  const ra = resp.headers.get("retry-after");
  if (!retry && ra && /^[0-9]+$/.test(ra.trim())) retry = Number(ra.trim()) * 1000;
  return {
    code: e.code !== "unknown" ? e.code : `http_${resp.status}`,
    message: e.message || `HTTP ${resp.status}`,
    status: resp.status,
    retryAfterMs: retry || undefined,
  };
}

function errText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

export { parseServer as _parseServer };
