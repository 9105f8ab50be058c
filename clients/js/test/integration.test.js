// The client against a real socketserver (embedded store), over WebSocket
// and SSE. It runs when SOCKETSERVER_BIN names the server binary (make
// test-js builds it); WebSocket needs a global WebSocket (Node 22, or Node 20
// with --experimental-websocket, which npm test passes).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { DeviceClient, MemoryStore } from "../dist/index.js";

const bin = process.env.SOCKETSERVER_BIN;
const skip = bin ? false : "SOCKETSERVER_BIN is not set (make test-js sets it)";
let server;
let ws;
let admin;

before(async () => {
  if (skip) return;
  server = spawn(bin, ["--tcp-addr", "", "--ws-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0",
    "--insecure-no-auth", "--insecure-no-api-auth", "--pod-name", "node-it", "--heartbeat-interval", "2s"],
    { stdio: ["ignore", "ignore", "pipe"] });
  const addrs = {};
  let out = "";
  await new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error("socketserver did not log its listeners:\n" + out)), 20000);
    server.on("exit", (code) => reject(new Error(`socketserver exited (${code}):\n${out}`)));
    server.stderr.on("data", (b) => {
      out += b;
      for (const m of out.matchAll(/listening (ws|admin)=([0-9.:]+)/g)) addrs[m[1]] = m[2];
      if (addrs.ws && addrs.admin) {
        clearTimeout(t);
        resolve();
      }
    });
  });
  server.removeAllListeners("exit");
  ws = addrs.ws;
  admin = `http://${addrs.admin}`;
});

after(() => server?.kill());

async function send(device, payload) {
  const r = await fetch(`${admin}/v1/devices/${device}/messages`, { method: "POST", body: payload });
  const text = await r.text();
  assert.equal(r.status, 202, text);
  return BigInt(JSON.parse(text).seq);
}

async function upstream(device) {
  const r = await fetch(`${admin}/v1/upstream?after=0&limit=1000`);
  assert.equal(r.status, 200);
  const { entries } = await r.json();
  return entries.filter((e) => e.device === device).map((e) => [e.id, Buffer.from(e.payload, "base64").toString()]);
}

function until(cond, what, ms = 10000) {
  return new Promise((resolve, reject) => {
    const end = Date.now() + ms;
    const check = () => {
      if (cond()) return resolve();
      if (Date.now() > end) return reject(new Error("timeout waiting for " + what));
      setTimeout(check, 10);
    };
    check();
  });
}

function device(name, transport, store) {
  const c = new DeviceClient({ servers: ws, device: name, token: "any", transport, store, backoffMinMs: 20, backoffMaxMs: 200 });
  c.got = [];
  c.errors = [];
  c.on("message", (m) => c.got.push([m.seq, [...m.payload]]));
  c.on("error", (e) => c.errors.push(e));
  return c;
}

for (const transport of ["ws", "sse"]) {
  const noWS = transport === "ws" && typeof globalThis.WebSocket !== "function" && "no global WebSocket (Node 20: --experimental-websocket)";
  test(`${transport}: deliveries in order with exact bytes, publishes stored once, resume after a restart`, { skip: skip || noWS }, async (t) => {
    const name = `node-${transport}`;
    const store = new MemoryStore();
    const c1 = device(name, transport, store).start();
    t.after(() => c1.stop());
    await until(() => c1.status === "connected", "connected");
    assert.equal(c1.transport, transport);
    assert.equal(c1.server, "node-it");

    const payloads = [new TextEncoder().encode("order-1"), new Uint8Array([0, 255, 13, 10]), new Uint8Array(0), new TextEncoder().encode("two\nlines")];
    const seqs = [];
    for (const p of payloads) seqs.push(await send(name, p));
    await until(() => c1.got.length === payloads.length, `${payloads.length} messages`);
    assert.deepEqual(c1.got, payloads.map((p, i) => [seqs[i], [...p]]));

    const id1 = await c1.publish("p1");
    const id2 = await c1.publish(new Uint8Array([0xff]));
    assert.ok(id2 > id1);
    assert.deepEqual((await upstream(name)).map(([, p]) => p), ["p1", "\ufffd"]);

    // A "reload": the next client's HELLO carries the stored last_seq.
    assert.equal(c1.lastSeq, seqs.at(-1));
    c1.stop();
    const seq5 = await send(name, "after-restart");
    const c2 = device(name, transport, store).start();
    t.after(() => c2.stop());
    await until(() => c2.got.length === 1, "the message sent while away");
    assert.deepEqual(c2.got, [[seq5, [...new TextEncoder().encode("after-restart")]]]);
    const id3 = await c2.publish("p3");
    assert.ok(id3 > id2, `id ${id3} after ${id2}`);
    const up = await upstream(name);
    assert.deepEqual(up.map(([, p]) => p), ["p1", "\ufffd", "p3"]);
    assert.deepEqual(up.map(([id]) => BigInt(id)), [id1, id2, id3]);
    assert.deepEqual(c1.errors.concat(c2.errors), []);
  });
}
