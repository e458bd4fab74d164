// The gateway compiles a copy of this client into its binary for the dashboard
// (gateway-ws/assets/sdk/, written by `npm run embed`). A stale copy fails here.
import assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";

import { repo } from "./harness.js";

test("the dashboard's embedded client is this client's current build", () => {
  const dist = join(repo, "clients", "typescript", "dist");
  const embedded = join(repo, "gateway-ws", "assets", "sdk");
  const built = readdirSync(dist).filter((f) => f.endsWith(".js")).sort();
  assert.deepEqual(readdirSync(embedded).sort(), built, "the same files");
  for (const f of built) {
    assert.equal(
      readFileSync(join(embedded, f), "utf8"),
      readFileSync(join(dist, f), "utf8"),
      `gateway-ws/assets/sdk/${f} is stale: run \`npm run embed\` in clients/typescript`,
    );
  }
});
