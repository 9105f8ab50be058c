export { DeviceClient, StoppedError } from "./client.js";
export type {
  DeviceClientOptions,
  DeviceEvents,
  DeviceMessage,
  ConnectedEvent,
  DisconnectedEvent,
  DeviceErrorEvent,
  PubAckEvent,
  StoppedEvent,
  Status,
  Transport,
  TransportOption,
} from "./client.js";
export { MemoryStore, localStore, DeviceState, Dedup } from "./store.js";
export type { Store, OutboxEntry } from "./store.js";
export { Backoff, waitAfter, GOAWAY_FLOOR_MS } from "./backoff.js";
export { SSEParser } from "./sse.js";
export type { SSEEvent } from "./sse.js";
export * as codec from "./codec.js";
