// Runs one query through Python Sandstorm 0.9.2's own TypeScript client.
//
// Used by tests/python_peer.rs as a real peer: the client's sources come
// from the 0.9.2 sdist (scripts/setup unpacks it in .venv/peers) and are
// compiled into a temporary folder at test time; its path is argv[2].
//
//     node query_092.mjs CLIENT_DIST_INDEX_JS URL [TOKEN] < body.json
//
// Each event is printed as one JSON line: the event's JSON as the client
// parsed it.
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

const [clientPath, baseUrl, apiKey] = process.argv.slice(2);
const { SandstormClient } = await import(pathToFileURL(clientPath).href);
const body = JSON.parse(readFileSync(0, "utf-8"));
const client = new SandstormClient({ baseUrl, apiKey: apiKey || undefined });
for await (const event of client.query(body)) {
  if (event.json === null) throw new Error(`an event that is not JSON: ${event.data}`);
  console.log(JSON.stringify(event.json));
}
