import { test, beforeEach } from "node:test";
import assert from "node:assert/strict";
import { DeviceClient, MemoryStore, StoppedError, codec } from "../dist/index.js";
import { FakeWS, FakeSSE, deliverFrame, jsonFrame, frame, welcome, socket, waitUntil } from "./fakes.js";

const { FrameType } = codec;

beforeEach(() => {
  FakeWS.sockets = [];
  FakeWS.refuse = false;
});

function client(opts = {}) {
  const c = new DeviceClient({
    servers: ["127.0.0.1:8080"],
    device: "kiosk-1",
    token: "tok",
    transport: "ws",
    WebSocket: FakeWS,
    random: () => 0,
    backoffMinMs: 1,
    backoffMaxMs: 5,
    ackDelayMs: 20,
    store: new MemoryStore(),
    ...opts,
  });
  const events = [];
  for (const e of ["connected", "disconnected", "message", "state", "puback", "error", "stopped"]) c.on(e, (ev) => events.push([e, ev]));
  c.events = events;
  c.of = (name) => events.filter(([e]) => e === name).map(([, ev]) => ev);
  return c;
}

test("resumes from the stored last_seq, drops repeats, coalesces ACKs and stores last_seq", async (t) => {
  const store = new MemoryStore();
  store.set("scp:kiosk-1:last_seq", "9007199254740993");
  const c = client({ store }).start();
  t.after(() => c.stop());
  const ws = await socket(1);
  assert.equal(ws.url, "ws://127.0.0.1:8080/ws");
  assert.deepEqual(ws.protocols, ["scp.v1"]);
  const hello = await ws.waitFor((f) => f.type === FrameType.HELLO, "HELLO");
  assert.match(new TextDecoder().decode(hello.body), /"last_seq":9007199254740993}$/);
  assert.equal(hello.json.device, "kiosk-1");
  assert.equal(hello.json.token, "tok");
  const storedDuring = [];
  c.on("message", () => storedDuring.push(store.get("scp:kiosk-1:last_seq")));
  welcome(ws, { state: { menu: "breakfast" } });
  await waitUntil(() => c.status === "connected", "connected");
  assert.deepEqual(c.of("state"), [{ menu: "breakfast" }]);
  assert.equal(c.of("connected")[0].server, "pod-a");
  for (const s of [9007199254740993n, 9007199254740994n, 9007199254740995n, 9007199254740995n, 9007199254740996n]) {
    ws.push(deliverFrame(s, "order " + s));
  }
  assert.deepEqual(c.of("message").map((m) => [m.seq, m.text]), [
    [9007199254740994n, "order 9007199254740994"],
    [9007199254740995n, "order 9007199254740995"],
    [9007199254740996n, "order 9007199254740996"],
  ]);
  assert.equal(store.get("scp:kiosk-1:last_seq"), "9007199254740996");
  assert.deepEqual(storedDuring, ["9007199254740993", "9007199254740994", "9007199254740995"], "stored once the listeners returned");
  const ack = await ws.waitFor((f) => f.type === FrameType.ACK, "ACK");
  assert.equal(ack.seq, 9007199254740996n);
  assert.equal(ws.sent.filter((f) => f.type === FrameType.ACK).length, 1, "one ACK for the burst");
});

test("PUBLISH ids: numbered after WELCOME, resent with the same id after a reconnect, strictly increasing across reloads", async (t) => {
  const store = new MemoryStore();
  store.set("scp:kiosk-1:next_id", "5");
  const c1 = client({ store }).start();
  const done = c1.publish("a");
  const ws1 = await socket(1);
  await ws1.waitFor((f) => f.type === FrameType.HELLO);
  assert.equal(ws1.sent.length, 1, "nothing published before WELCOME");
  welcome(ws1, { last_publish_id: 9 });
  const p1 = await ws1.waitFor((f) => f.type === FrameType.PUBLISH, "PUBLISH");
  assert.equal(p1.id, 10n);
  assert.equal(store.get("scp:kiosk-1:next_id"), "11");
  assert.match(store.get("scp:kiosk-1:outbox"), /"id":"10"/);

  ws1.drop(); // lost before its PUBACK
  const ws2 = await socket(2);
  await ws2.waitFor((f) => f.type === FrameType.HELLO);
  welcome(ws2, { last_publish_id: 9 });
  const p2 = await ws2.waitFor((f) => f.type === FrameType.PUBLISH, "PUBLISH again");
  assert.deepEqual([p2.id, p2.text], [10n, "a"]);
  ws2.push(frame(FrameType.PUBACK, codec.putU64(10n)));
  assert.equal(await done, 10n);
  assert.equal(store.get("scp:kiosk-1:outbox"), "[]");
  assert.deepEqual(c1.of("puback").map((e) => e.id), [10n]);

  const unacked = c1.publish("b");
  const p3 = await ws2.waitFor((f) => f.type === FrameType.PUBLISH && f.id === 11n, "PUBLISH 11");
  assert.equal(p3.text, "b");
  c1.stop(); // a reload before the PUBACK
  await assert.rejects(unacked, StoppedError);

  // The next page: the server's record is behind (PUBACK lost, or a store that lost data).
  const c2 = client({ store }).start();
  t.after(() => c2.stop());
  const ws3 = await socket(3);
  await ws3.waitFor((f) => f.type === FrameType.HELLO);
  welcome(ws3, { last_publish_id: 3 });
  const again = await ws3.waitFor((f) => f.type === FrameType.PUBLISH, "the stored message");
  assert.deepEqual([again.id, again.text], [11n, "b"]);
  const next = c2.publish("c");
  const p4 = await ws3.waitFor((f) => f.type === FrameType.PUBLISH && f.text === "c", "PUBLISH c");
  assert.equal(p4.id, 12n);
  ws3.push(frame(FrameType.PUBACK, codec.putU64(11n)));
  ws3.push(frame(FrameType.PUBACK, codec.putU64(12n)));
  assert.equal(await next, 12n);
});

test("a message the cluster recorded already (last_publish_id) is settled without a resend", async (t) => {
  const store = new MemoryStore();
  store.set("scp:kiosk-1:next_id", "8");
  store.set("scp:kiosk-1:outbox", JSON.stringify([{ id: "7", p: "eA==" }, { id: null, p: "eQ==" }]));
  const c = client({ store }).start();
  t.after(() => c.stop());
  const ws = await socket(1);
  await ws.waitFor((f) => f.type === FrameType.HELLO);
  welcome(ws, { last_publish_id: 7 });
  const p = await ws.waitFor((f) => f.type === FrameType.PUBLISH);
  assert.deepEqual([p.id, p.text], [8n, "y"]);
  assert.deepEqual(c.of("puback").map((e) => e.id), [7n]);
  assert.equal(ws.sent.filter((f) => f.type === FrameType.PUBLISH).length, 1);
});

test("an unanswered PUBLISH is sent again on the same connection", async (t) => {
  const c = client({ pubAckTimeoutMs: 40 }).start();
  t.after(() => c.stop());
  const ws = await socket(1);
  await ws.waitFor((f) => f.type === FrameType.HELLO);
  welcome(ws);
  c.publish("x").catch(() => {});
  c.publish("y").catch(() => {});
  await waitUntil(() => ws.sent.filter((f) => f.type === FrameType.PUBLISH).length >= 4, "resends");
  assert.deepEqual(ws.sent.filter((f) => f.type === FrameType.PUBLISH).slice(0, 4).map((f) => f.id), [1n, 2n, 1n, 2n]);
});

test("GOAWAY: waits reconnect_after_ms, then the next server", async (t) => {
  const c = client({ servers: ["a.example:1", "ws://b.example:2/ws"] }).start();
  t.after(() => c.stop());
  const ws1 = await socket(1);
  assert.equal(ws1.url, "ws://a.example:1/ws");
  await ws1.waitFor((f) => f.type === FrameType.HELLO);
  welcome(ws1);
  ws1.push(deliverFrame(1796220000000001n, "x"));
  ws1.push(jsonFrame(FrameType.GOAWAY, { reason: "draining", reconnect_after_ms: 120 }));
  assert.equal(ws1.sent.at(-1).type, FrameType.ACK, "the final ACK goes out before the close");
  await waitUntil(() => c.of("disconnected").length > 0, "disconnected");
  const d = c.of("disconnected")[0];
  assert.deepEqual([d.reason, d.waitMs, d.welcomed, d.willReconnect], ["goaway", 120, true, true]);
  const t0 = Date.now();
  const ws2 = await socket(2);
  assert.ok(Date.now() - t0 >= 100, "reconnected after the hint");
  assert.equal(ws2.url, "ws://b.example:2/ws");
  const hello = await ws2.waitFor((f) => f.type === FrameType.HELLO);
  assert.equal(hello.json.last_seq, 1796220000000001);
});

test("ERROR retry_after_ms is honoured", async (t) => {
  const c = client().start();
  t.after(() => c.stop());
  const ws = await socket(1);
  await ws.waitFor((f) => f.type === FrameType.HELLO);
  ws.push(jsonFrame(FrameType.ERROR, { code: "server_full", message: "full", retry_after_ms: 300 }));
  assert.deepEqual(c.of("error")[0], { code: "server_full", message: "full", retryAfterMs: 300, transport: "ws" });
  await waitUntil(() => c.of("disconnected").length > 0, "disconnected");
  assert.equal(c.of("disconnected")[0].waitMs, 300);
});

test("session_taken_over stops the client for good", async (t) => {
  const c = client().start();
  t.after(() => c.stop());
  const ws = await socket(1);
  await ws.waitFor((f) => f.type === FrameType.HELLO);
  welcome(ws);
  const pending = assert.rejects(c.publish("late"), StoppedError);
  ws.push(jsonFrame(FrameType.ERROR, { code: "session_taken_over", message: "newer HELLO" }));
  await waitUntil(() => c.status === "stopped", "stopped");
  assert.equal(c.status, "stopped");
  assert.deepEqual(c.of("stopped"), [{ reason: "session_taken_over" }]);
  assert.equal(c.of("disconnected")[0].willReconnect, false);
  await pending;
  await assert.rejects(c.publish("after"), StoppedError);
  await new Promise((r) => setTimeout(r, 30));
  assert.equal(FakeWS.sockets.length, 1, "no reconnect");
});

test("heartbeat: PINGs, PONGs to the server's PING, and a silent server is left", async (t) => {
  const c = client().start();
  t.after(() => c.stop());
  const ws = await socket(1);
  await ws.waitFor((f) => f.type === FrameType.HELLO);
  welcome(ws, { heartbeat_ms: 40 });
  ws.push(frame(FrameType.PING, new Uint8Array([1, 2, 3])));
  const pong = await ws.waitFor((f) => f.type === FrameType.PONG, "PONG");
  assert.deepEqual([...pong.body], [1, 2, 3]);
  await ws.waitFor((f) => f.type === FrameType.PING, "PING");
  await waitUntil(() => c.of("disconnected").length > 0, "server_silent", 3000);
  assert.equal(c.of("disconnected")[0].reason, "server_silent");
});

test("auto: a WebSocket that cannot open falls back to SSE, which receives, ACKs and publishes", async (t) => {
  FakeWS.refuse = true;
  const sse = new FakeSSE();
  const posted = [];
  sse.onPost = (r) => {
    posted.push(r);
    if (r.path === "/sse/publish") {
      if (posted.filter((p) => p.path === "/sse/publish").length === 1) {
        return new Response('{"code":"unavailable","message":"store","retry_after_ms":20}', { status: 503 });
      }
      return new Response(JSON.stringify({ id: Number(r.q.id), duplicate: false }), { status: 200 });
    }
    return new Response(null, { status: 204 });
  };
  const store = new MemoryStore();
  store.set("scp:kiosk 1:last_seq", "41");
  const c = client({ transport: "auto", device: "kiosk 1", store, fetch: sse.fetch }).start();
  t.after(() => c.stop());
  const s1 = await sse.stream(1);
  assert.equal(FakeWS.sockets.length, 1);
  assert.equal(s1.url.origin + s1.url.pathname, "http://127.0.0.1:8080/sse");
  assert.deepEqual(Object.fromEntries(s1.url.searchParams), { device: "kiosk 1", last_seq: "41" });
  assert.equal(s1.headers.Authorization, "Bearer tok");
  s1.write(': hi\n\nevent: welcome\nretry: 2000\ndata: {"server":"pod-b","session_epoch":9007199254740993,"heartbeat_ms":15000,"last_publish_id":0,"state":{}}\n\n');
  s1.write("event: deliver\nid: 42\ndata: two\ndata: lines\n\nevent: deliver64\nid: 43\ndata: AP8=\n\nevent: deliver\nid: 42\ndata: repeat\n\n");
  s1.write("event: deliver64\nid: 44\ndata:\ndata:\n\n");
  await waitUntil(() => c.of("message").length === 3, "3 messages");
  assert.equal(c.transport, "sse");
  assert.equal(c.server, "pod-b");
  assert.deepEqual(c.of("message").map((m) => [m.seq, m.text]), [[42n, "two\nlines"], [43n, "\0\ufffd"], [44n, ""]]);
  await waitUntil(() => posted.some((p) => p.path === "/sse/ack"), "ACK POST");
  assert.deepEqual(posted.find((p) => p.path === "/sse/ack").q, { device: "kiosk 1", epoch: "9007199254740993", seq: "44" });

  assert.equal(await c.publish("pressed"), 1n);
  const pubs = posted.filter((p) => p.path === "/sse/publish");
  assert.equal(pubs.length, 2, "a 503 is retried");
  for (const p of pubs) assert.deepEqual([p.q.id, p.q.epoch, p.body, p.headers.Authorization], ["1", "9007199254740993", "pressed", "Bearer tok"]);

  // GOAWAY ends the stream; the next one resumes (still SSE) after the hint.
  s1.write('event: goaway\nretry: 50\ndata: {"reason":"draining","reconnect_after_ms":50}\n\n');
  const s2 = await sse.stream(2);
  assert.equal(s1.aborted, true);
  assert.equal(s2.url.searchParams.get("last_seq"), "44");
  assert.equal(FakeWS.sockets.length, 1, "no WebSocket before wsRetryMs");
  assert.equal(c.of("disconnected").at(-1).reason, "goaway");
  assert.equal(c.of("disconnected").at(-1).waitMs, 50);
});

test("SSE: refused streams and a takeover answered to a publish", async (t) => {
  const sse = new FakeSSE();
  const real = sse.fetch;
  let refusals = 1;
  sse.fetch = async (url, init = {}) => {
    if ((init.method ?? "GET") === "GET" && refusals-- > 0) {
      return new Response('{"code":"unauthorized","message":"bad token"}', { status: 401 });
    }
    return real(url, init);
  };
  sse.onPost = (r) =>
    r.path === "/sse/publish"
      ? new Response('{"code":"session_taken_over","message":"newer HELLO"}', { status: 409 })
      : new Response(null, { status: 204 });
  const c = client({ transport: "sse", fetch: sse.fetch }).start();
  t.after(() => c.stop());
  const s1 = await sse.stream(1);
  assert.deepEqual(c.of("error")[0], { code: "unauthorized", message: "bad token", status: 401, retryAfterMs: undefined, transport: "sse" });
  assert.equal(c.of("disconnected")[0].reason, "refused");
  s1.write('event: welcome\ndata: {"server":"a","session_epoch":3,"last_publish_id":0,"state":{}}\n\n');
  await waitUntil(() => c.status === "connected", "connected");
  await assert.rejects(c.publish("x"), StoppedError);
  assert.equal(c.status, "stopped");
  assert.deepEqual(c.of("stopped"), [{ reason: "session_taken_over" }]);
  assert.equal(s1.aborted, true);
});

test("SSE error event session_taken_over stops; the stream's other errors retry", async (t) => {
  const sse = new FakeSSE();
  const c = client({ transport: "sse", fetch: sse.fetch }).start();
  t.after(() => c.stop());
  const s1 = await sse.stream(1);
  s1.write('event: error\ndata: {"code":"unavailable","message":"store","retry_after_ms":30}\n\n');
  const s2 = await sse.stream(2);
  assert.equal(c.of("disconnected")[0].waitMs, 30);
  s2.write('event: welcome\ndata: {"server":"a","session_epoch":3,"state":{}}\n\nevent: error\ndata: {"code":"session_taken_over","message":"m"}\n\n');
  await waitUntil(() => c.status === "stopped", "stopped");
  await new Promise((r) => setTimeout(r, 30));
  assert.equal(sse.streams.length, 2);
});

test("options are checked", () => {
  assert.throws(() => new DeviceClient({ servers: "a:1" }), /device/);
  assert.throws(() => new DeviceClient({ servers: [], device: "d" }), /servers/);
  assert.throws(() => new DeviceClient({ servers: "a:1", device: "d", transport: "tcp" }), /transport/);
});
