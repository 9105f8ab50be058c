import { test } from "node:test";
import assert from "node:assert/strict";
import { MemoryStore, DeviceState, Dedup, localStore } from "../dist/index.js";

test("DeviceState keeps last_seq, next_id and the outbox as text", () => {
  const s = new MemoryStore();
  const st = new DeviceState(s, "kiosk-1");
  assert.equal(st.lastSeq(), 0n);
  assert.equal(st.nextId(), 1n);
  assert.deepEqual(st.outbox(), []);
  st.setLastSeq(18446744073709551615n);
  st.setNextId(9007199254740993n);
  st.setOutbox([{ id: 9007199254740992n, payload: new Uint8Array([0, 255]) }, { id: null, payload: new TextEncoder().encode("x") }]);
  assert.equal(s.get("scp:kiosk-1:last_seq"), "18446744073709551615");
  const again = new DeviceState(s, "kiosk-1");
  assert.equal(again.lastSeq(), 18446744073709551615n);
  assert.equal(again.nextId(), 9007199254740993n);
  const ob = again.outbox();
  assert.equal(ob[0].id, 9007199254740992n);
  assert.deepEqual([...ob[0].payload], [0, 255]);
  assert.equal(ob[1].id, null);
  assert.equal(new DeviceState(s, "kiosk-2").lastSeq(), 0n, "keys are per device");
  assert.equal(new DeviceState(s, "kiosk-1", "other").lastSeq(), 0n, "and per prefix");
});

test("garbage in the store reads as nothing", () => {
  const s = new MemoryStore();
  for (const v of ["-1", "1e3", "abc", "", "123456789012345678901"]) {
    s.set("scp:d:last_seq", v);
    s.set("scp:d:next_id", v);
    const st = new DeviceState(s, "d");
    assert.equal(st.lastSeq(), 0n, v);
    assert.equal(st.nextId(), 1n, v);
  }
  s.set("scp:d:next_id", "0");
  assert.equal(new DeviceState(s, "d").nextId(), 1n);
  s.set("scp:d:outbox", "{not json");
  const errs = [];
  assert.deepEqual(new DeviceState(s, "d", "scp", (e) => errs.push(e)).outbox(), []);
  assert.equal(errs.length, 1);
});

test("a store that throws is reported, not fatal", () => {
  const errs = [];
  const st = new DeviceState({ get() { throw new Error("denied"); }, set() { throw new Error("quota"); } }, "d", "scp", (e) => errs.push(e.message));
  st.setLastSeq(5n);
  assert.equal(st.lastSeq(), 0n);
  assert.deepEqual(errs, ["quota", "denied"]);
});

test("Dedup passes each seq once, in increasing order, and follows jumps", () => {
  const d = new Dedup(1796220000000005n);
  const got = [1796220000000004n, 1796220000000005n, 1796220000000006n, 1796220000000006n, 1796220000000007n, 1796229999999999n, 1796220000000008n]
    .filter((s) => d.accept(s));
  assert.deepEqual(got, [1796220000000006n, 1796220000000007n, 1796229999999999n]);
  assert.equal(d.lastSeq, 1796229999999999n);
});

test("localStore is null without localStorage (Node)", () => {
  assert.equal(localStore(), null);
});
