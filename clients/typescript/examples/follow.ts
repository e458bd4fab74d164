// Follows the premium channel and prints each signal; resumes across reconnects.
//
//   npm run build && npx tsc -p tsconfig.test.json
//   SIGNALCAST_URL=ws://127.0.0.1:8080/ws SIGNALCAST_TOKEN=$(signalcast token --user u-premium-1) \
//     node build-test/examples/follow.js
import WebSocket from "ws";

import { SignalcastClient, type WebSocketConstructor } from "../src/index.js";

const client = new SignalcastClient({
  url: process.env.SIGNALCAST_URL ?? "ws://127.0.0.1:8080/ws",
  // A function, so that reconnects and refreshes get a current token. A real front end
  // would call its own login service here.
  token: async () => process.env.SIGNALCAST_TOKEN ?? "",
  WebSocket: WebSocket as unknown as WebSocketConstructor,
});

client.on("state", (s) => console.log(`[${s}]`));
client.on("resume", (e) => {
  if (!e.recovered) console.warn(`${e.channel}: missed messages after seq ${e.since.seq}; live from ${e.head}`);
});
client.on("error", (e) => console.error(`refused: ${e.code}: ${e.message}`));

client.subscribe("signals_premium", (m) => {
  if (m.type !== "SIGNAL_UPDATE") return;
  const s = m.data;
  const last = s.market?.last ?? "no tick";
  console.log(`#${m.seq} ${s.signal_type.toUpperCase()} ${s.symbol} @ ${s.entry_price} → ${s.target_price} (stop ${s.stop_loss}), ${s.confidence}%, last ${last}`);
});
client.connect();
process.on("SIGINT", () => {
  client.close();
  process.exit(0);
});
