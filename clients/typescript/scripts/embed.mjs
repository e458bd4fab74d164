// Copies the built client (dist/*.js) to gateway-ws/assets/sdk/, where the gateway
// compiles it into its binary for the dashboard. test/embedded.test.ts fails when the
// copy there differs from a fresh build, so the two cannot drift apart.
import { copyFileSync, mkdirSync, readdirSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, "..", "dist");
const target = join(here, "..", "..", "..", "gateway-ws", "assets", "sdk");
rmSync(target, { recursive: true, force: true });
mkdirSync(target, { recursive: true });
for (const f of readdirSync(dist).filter((f) => f.endsWith(".js"))) {
  copyFileSync(join(dist, f), join(target, f));
  console.log(`gateway-ws/assets/sdk/${f}`);
}
