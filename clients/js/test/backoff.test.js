import { test } from "node:test";
import assert from "node:assert/strict";
import { Backoff, waitAfter, GOAWAY_FLOOR_MS } from "../dist/index.js";

test("ceilings double from min up to max; waits are drawn below them", () => {
  const b = new Backoff(100, 1000, () => 0.999999);
  assert.deepEqual(Array.from({ length: 7 }, () => b.next()), [100, 200, 400, 800, 1000, 1000, 1000]);
  b.reset();
  assert.equal(b.next(), 100);
  const z = new Backoff(100, 1000, () => 0);
  assert.deepEqual([z.next(), z.next()], [0, 0]);
});

test("full jitter covers [0, ceiling]", () => {
  const b = new Backoff(1000, 1000);
  const seen = Array.from({ length: 2000 }, () => b.next());
  assert.ok(Math.min(...seen) < 100 && Math.max(...seen) > 900);
  assert.ok(seen.every((w) => w >= 0 && w <= 1000 && Number.isInteger(w)));
});

test("many attempts do not overflow", () => {
  const b = new Backoff(100, 10000, () => 0.5);
  for (let i = 0; i < 5000; i++) assert.ok(b.next() <= 10000);
});

test("GOAWAY waits its hint, floored, without counting an attempt", () => {
  const b = new Backoff(100, 10000, () => 1 - 1e-9);
  assert.equal(waitAfter({ reason: "goaway", hintMs: 750 }, b), 750);
  assert.equal(waitAfter({ reason: "goaway", hintMs: 0 }, b), GOAWAY_FLOOR_MS);
  assert.equal(b.attempts, 0);
});

test("retry_after_ms is a floor; backoff otherwise", () => {
  const b = new Backoff(100, 10000, () => 1 - 1e-9);
  assert.equal(waitAfter({ reason: "error", hintMs: 1000 }, b), 1000);
  assert.equal(waitAfter({ reason: "closed", hintMs: 0 }, b), 200);
  for (let i = 0; i < 10; i++) waitAfter({ reason: "closed", hintMs: 0 }, b);
  assert.equal(waitAfter({ reason: "error", hintMs: 1000 }, b), 10000);
  assert.throws(() => new Backoff(0, 10), RangeError);
});
