// The kiosk: shows the connection and incoming orders, publishes "pressed".
// Configured by the URL query:
//   servers=host:port[,host:port]  the WebSocket listener(s) (also ws://, http(s)://)
//   device=kiosk-1  token=<JWT>  transport=auto|ws|sse
import { DeviceClient } from "../../clients/js/dist/index.js";

const q = new URLSearchParams(location.search);
const servers = (q.get("servers") || q.get("server") || location.host).split(",").filter(Boolean);
const device = q.get("device") || "kiosk-1";
const $ = (id) => document.getElementById(id);

const client = new DeviceClient({
  servers,
  device,
  token: q.get("token") || "",
  transport: q.get("transport") || "auto",
});

const kiosk = { client, orders: [], sent: 0, stored: 0 };
window.kiosk = kiosk;
$("device").textContent = device;

function log(text) {
  const li = document.createElement("li");
  li.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  $("log").prepend(li);
  while ($("log").children.length > 50) $("log").lastChild.remove();
}

client.on("status", (s) => {
  $("status").textContent = s;
  $("status").dataset.status = s;
});
client.on("connected", (e) => {
  $("transport").textContent = e.transport;
  $("server").textContent = e.server;
  log(`connected to ${e.server} over ${e.transport}${e.resumed ? " (resumed)" : ""}`);
});
client.on("disconnected", (e) =>
  log(`${e.transport} ${e.welcomed ? "disconnected" : "failed"}: ${e.reason}${e.code ? " " + e.code : ""}` +
    (e.willReconnect ? `, again in ${e.waitMs} ms` : "")),
);
client.on("error", (e) => log(`error ${e.code}: ${e.message}`));
client.on("stopped", (e) => log(`stopped: ${e.reason}`));
client.on("message", (m) => {
  kiosk.orders.push({ seq: m.seq.toString(), text: m.text });
  const li = document.createElement("li");
  li.dataset.seq = m.seq.toString();
  const seq = document.createElement("span");
  seq.className = "seq";
  seq.textContent = `#${m.seq}`;
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = m.text;
  li.append(seq, text);
  $("orders").append(li);
  $("lastseq").textContent = m.seq.toString();
});

$("press").addEventListener("click", async () => {
  $("sent").textContent = String(++kiosk.sent);
  try {
    const id = await client.publish("pressed");
    $("stored").textContent = String(++kiosk.stored);
    log(`press stored as id ${id}`);
  } catch (e) {
    log(`press not stored: ${e.message}`);
  }
});

client.start();
