// A typical Node.js broadcast service on the npm `ws` package: a Map from channel to
// the set of its sockets; each published line is encoded once and sent to every open
// subscriber (the broadcast pattern of ws's README). No backpressure handling, as in
// most real services. Subscribe: ws://127.0.0.1:8084/<channel> (first frame:
// "subscribed <channel>"). Publish: TCP 127.0.0.1:9084, "<channel> <payload>\n".
'use strict';
const net = require('net');
const readline = require('readline');
const { WebSocketServer, WebSocket } = require('ws');

const channels = new Map();
// TLS_CERT and TLS_KEY (PEM files): the same over https (wss://), as a Node service
// terminating TLS itself would.
let wss;
if (process.env.TLS_CERT && process.env.TLS_KEY) {
  const fs = require('fs');
  const server = require('https').createServer({
    cert: fs.readFileSync(process.env.TLS_CERT),
    key: fs.readFileSync(process.env.TLS_KEY),
  });
  wss = new WebSocketServer({ server, perMessageDeflate: false });
  server.listen(8084, '127.0.0.1');
} else {
  wss = new WebSocketServer({ host: '127.0.0.1', port: 8084, perMessageDeflate: false });
}
wss.on('connection', (ws, req) => {
  const ch = req.url.slice(1);
  if (!channels.has(ch)) channels.set(ch, new Set());
  channels.get(ch).add(ws);
  ws.on('close', () => channels.get(ch).delete(ws));
  ws.on('error', () => {});
  ws.send('subscribed ' + ch);
});

net.createServer((sock) => {
  readline.createInterface({ input: sock }).on('line', (line) => {
    const i = line.indexOf(' ');
    if (i < 0) return;
    const subs = channels.get(line.slice(0, i));
    if (!subs) return;
    const data = Buffer.from(line.slice(i + 1));
    for (const ws of subs) if (ws.readyState === WebSocket.OPEN) ws.send(data, { binary: false });
  });
  sock.on('error', () => {});
}).listen(9084, '127.0.0.1');
