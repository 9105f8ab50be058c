// A gRPC device on Node's own HTTP/2 client (node:http2, nghttp2), driven
// by the Go test: an HTTP/2 stack no one here wrote, against the server's.
// The messages of scp.v1.Device are encoded by hand (proto/scp/v1/device.proto).
//
// argv: host:port, device, token (sent as authorization metadata; HELLO
// carries none). It prints one JSON event per line: welcome, deliver (each
// DELIVER is ACKed at once), puback, end (the call's grpc-status). On
// stdin: "pub ID PAYLOAD" publishes, "end" ends the call.
import http2 from 'node:http2';
import readline from 'node:readline';

const [addr, device, token] = process.argv.slice(2);
const say = (event) => process.stdout.write(JSON.stringify(event) + '\n');

// Protobuf: varints (as BigInt), length-delimited fields.
function varint(n) {
  n = BigInt(n);
  const out = [];
  do {
    let b = Number(n & 0x7fn);
    n >>= 7n;
    if (n > 0n) b |= 0x80;
    out.push(b);
  } while (n > 0n);
  return Buffer.from(out);
}
const tag = (field, wire) => varint((field << 3) | wire);
const fieldVarint = (field, n) => Buffer.concat([tag(field, 0), varint(n)]);
const fieldBytes = (field, b) => Buffer.concat([tag(field, 2), varint(b.length), b]);

function parse(buf) {
  const fields = {};
  let i = 0;
  const readVarint = () => {
    let n = 0n, shift = 0n;
    for (;;) {
      const b = buf[i++];
      n |= BigInt(b & 0x7f) << shift;
      if (!(b & 0x80)) return n;
      shift += 7n;
    }
  };
  while (i < buf.length) {
    const key = Number(readVarint());
    const field = key >> 3, wire = key & 7;
    if (wire === 0) fields[field] = readVarint();
    else if (wire === 2) {
      const n = Number(readVarint());
      fields[field] = buf.subarray(i, i + n);
      i += n;
    } else throw new Error(`wire type ${wire}`);
  }
  return fields;
}

// ClientFrame oneof fields: hello 1, ping 3, ack 6, publish 7.
const hello = fieldBytes(1, Buffer.concat([fieldVarint(1, 1), fieldBytes(2, Buffer.from(device))]));
const ack = (seq) => fieldBytes(6, fieldVarint(1, seq));
const publish = (id, payload) => fieldBytes(7, Buffer.concat([fieldVarint(1, id), fieldBytes(2, Buffer.from(payload))]));

const session = http2.connect(`http://${addr}`);
session.on('error', (err) => say({ event: 'error', message: String(err) }));
const call = session.request({
  ':method': 'POST',
  ':path': '/scp.v1.Device/Connect',
  'content-type': 'application/grpc',
  te: 'trailers',
  authorization: `Bearer ${token}`,
});
const send = (msg) => {
  const head = Buffer.alloc(5);
  head.writeUInt32BE(msg.length, 1);
  call.write(Buffer.concat([head, msg]));
};

let pending = Buffer.alloc(0);
call.on('data', (chunk) => {
  pending = Buffer.concat([pending, chunk]);
  while (pending.length >= 5 && pending.length >= 5 + pending.readUInt32BE(1)) {
    const n = pending.readUInt32BE(1);
    const frame = parse(pending.subarray(5, 5 + n));
    pending = pending.subarray(5 + n);
    // ServerFrame oneof fields: welcome 2, deliver 5, puback 8, goaway 9, error 10.
    if (frame[2]) {
      const w = parse(frame[2]);
      say({ event: 'welcome', server: String(w[1]), epoch: String(w[2]) });
    } else if (frame[5]) {
      const d = parse(frame[5]);
      say({ event: 'deliver', seq: String(d[1]), payload: String(d[2] ?? '') });
      send(ack(d[1]));
    } else if (frame[8]) {
      say({ event: 'puback', id: String(parse(frame[8])[1]) });
    } else if (frame[10]) {
      const e = parse(frame[10]);
      say({ event: 'error', code: String(e[1]), message: String(e[2]) });
    }
  }
});
call.on('trailers', (trailers) => {
  say({ event: 'end', status: String(trailers['grpc-status']) });
  session.close();
});
call.on('error', (err) => say({ event: 'error', message: String(err) }));
send(hello);

const lines = readline.createInterface({ input: process.stdin });
lines.on('line', (line) => {
  const [cmd, id, payload] = line.split(' ');
  if (cmd === 'pub') send(publish(id, payload));
  if (cmd === 'end') call.end();
});
lines.on('close', () => session.destroy());
