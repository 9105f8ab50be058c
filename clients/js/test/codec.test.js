import { test } from "node:test";
import assert from "node:assert/strict";
import { codec } from "../dist/index.js";

const {
  FrameType, encodeFrame, decodeFrame, encodeAck, encodePublish, encodeHello, helloJSON, parseDeliver, parseWelcome,
  parseGoAway, parseError, readU64, putU64, topLevelNumbers, toBase64, fromBase64, typeName,
} = codec;

test("uint64 fields are exact above 2^53", () => {
  const big = (1n << 63n) + 12345n;
  assert.equal(readU64(putU64(big)), big);
  const max = (1n << 64n) - 1n;
  assert.equal(readU64(putU64(max)), max);
  assert.throws(() => putU64(1n << 64n), RangeError);
  assert.throws(() => putU64(-1n), RangeError);
});

test("ACK and PUBLISH frames are the type byte then big-endian numbers", () => {
  assert.deepEqual([...encodeAck(0x0102030405060708n)], [6, 1, 2, 3, 4, 5, 6, 7, 8]);
  const p = encodePublish(1796220000000001n, new TextEncoder().encode("hi"));
  assert.equal(p[0], FrameType.PUBLISH);
  assert.equal(readU64(p.subarray(1)), 1796220000000001n);
  assert.equal(new TextDecoder().decode(p.subarray(9)), "hi");
});

test("DELIVER parses seq and payload from one WebSocket message", () => {
  const seq = 9007199254740993n; // 2^53 + 1: not a safe JS number
  const msg = encodeFrame(FrameType.DELIVER, new Uint8Array([...putU64(seq), 0xff, 0x00]));
  const f = decodeFrame(msg.slice().buffer);
  assert.equal(typeName(f.type), "DELIVER");
  const d = parseDeliver(f.body);
  assert.equal(d.seq, seq);
  assert.deepEqual([...d.payload], [0xff, 0x00]);
  assert.throws(() => parseDeliver(new Uint8Array(7)), /8/);
  assert.throws(() => decodeFrame(new ArrayBuffer(0)), /empty/);
});

test("HELLO writes last_seq as an exact integer", () => {
  const h = helloJSON({ device: 'kiosk-"1"', token: "t", lastSeq: 18446744073709551615n });
  assert.equal(h, '{"protocol":1,"device":"kiosk-\\"1\\"","token":"t","last_seq":18446744073709551615}');
  assert.deepEqual(JSON.parse(h).device, 'kiosk-"1"');
  assert.equal(encodeHello({ device: "d", token: "", lastSeq: 0n })[0], FrameType.HELLO);
});

test("WELCOME keeps session_epoch and last_publish_id exact, and ignores nested keys of the same name", () => {
  const text =
    '{"server":"pod-a","session_epoch":9007199254740993,"resumed":true,"heartbeat_ms":2000,' +
    '"last_publish_id":18446744073709551615,"state":{"session_epoch":5,"last_publish_id":[1,2],"s":"x\\"}"}}';
  const w = parseWelcome(text);
  assert.equal(w.server, "pod-a");
  assert.equal(w.sessionEpoch, 9007199254740993n);
  assert.equal(w.lastPublishId, 18446744073709551615n);
  assert.equal(w.resumed, true);
  assert.equal(w.heartbeatMs, 2000);
  assert.deepEqual(w.state, { session_epoch: 5, last_publish_id: [1, 2], s: 'x"}' });
  const d = parseWelcome('{"server":"b","state":{}}');
  assert.equal(d.lastPublishId, 0n);
  assert.equal(d.heartbeatMs, 15000);
  assert.throws(() => parseWelcome("[1]"), /object/);
  assert.throws(() => parseWelcome("{"), /JSON/);
});

test("topLevelNumbers reads only the top level", () => {
  assert.deepEqual(topLevelNumbers('{"a":{"b":1},"b":2,"c":[3],"d":-4,"e":1.5}', ["b", "c", "d", "e"]), { b: 2n });
  assert.deepEqual(topLevelNumbers(' { "k\\"" : "v", "n" : 12 } ', ["n"]), { n: 12n });
});

test("GOAWAY and ERROR bodies", () => {
  assert.deepEqual(parseGoAway('{"reason":"draining","reconnect_after_ms":250}'), { reason: "draining", reconnectAfterMs: 250 });
  assert.deepEqual(parseError('{"code":"server_full","message":"m","retry_after_ms":1000}'), {
    code: "server_full", message: "m", retryAfterMs: 1000,
  });
  assert.deepEqual(parseError("not json"), { code: "unknown", message: "", retryAfterMs: 0 });
});

test("base64 matches Node's for every length", () => {
  for (let n = 0; n < 70; n++) {
    const b = new Uint8Array(n).map((_, i) => (i * 151 + n * 7) & 0xff);
    const want = Buffer.from(b).toString("base64");
    assert.equal(toBase64(b), want);
    assert.deepEqual([...fromBase64(want)], [...b]);
  }
  assert.throws(() => fromBase64("a*=="), /base64/);
  assert.deepEqual([...fromBase64("\n")], [], "an empty deliver64 payload is a line feed");
  assert.deepEqual([...fromBase64("AP8=\r\n")], [0, 255]);
});
