import { test } from "node:test";
import assert from "node:assert/strict";
import { SSEParser } from "../dist/index.js";

const stream =
  "\ufeff: hello\n\nevent: welcome\nretry: 2000\ndata: {\"server\":\"a\"}\n\n" +
  "event: deliver\r\nid: 1796220000000001\r\ndata: line one\r\ndata: line two\r\n\r\n" +
  ":\n\n" +
  "event: deliver64\rid: 1796220000000002\rdata:AAE=\r\r" +
  "event: goaway\nretry: 150\ndata: {\"reason\":\"draining\",\"reconnect_after_ms\":150}\n\n";

const want = [
  { event: "welcome", data: '{"server":"a"}', id: null, retry: 2000 },
  { event: "deliver", data: "line one\nline two", id: "1796220000000001", retry: null },
  { event: "deliver64", data: "AAE=", id: "1796220000000002", retry: null },
  { event: "goaway", data: '{"reason":"draining","reconnect_after_ms":150}', id: null, retry: 150 },
];

test("events in one chunk", () => {
  assert.deepEqual(new SSEParser().feed(stream), want);
});

test("events split at every byte, CRLF split included", () => {
  const bytes = new TextEncoder().encode(stream);
  const p = new SSEParser();
  const got = [];
  for (let i = 0; i < bytes.length; i++) got.push(...p.feedBytes(bytes.subarray(i, i + 1)));
  assert.deepEqual(got, want);
});

test("split into random chunks", () => {
  const bytes = new TextEncoder().encode(stream.repeat(5));
  for (let run = 0; run < 50; run++) {
    const p = new SSEParser();
    const got = [];
    for (let i = 0; i < bytes.length; ) {
      const n = 1 + Math.floor(Math.random() * 40);
      got.push(...p.feedBytes(bytes.subarray(i, i + n)));
      i += n;
    }
    assert.deepEqual(got, [...want, ...want, ...want, ...want, ...want].map((e) => ({ ...e })));
  }
});

test("a field without a colon, unknown fields, a bad retry", () => {
  assert.deepEqual(new SSEParser().feed("data\nfoo: bar\nretry: 1x\n\n"), [{ event: "message", data: "", id: null, retry: null }]);
  assert.deepEqual(new SSEParser().feed("data: unfinished"), []);
});
