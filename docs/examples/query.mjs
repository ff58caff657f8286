// POST /query: upload data.csv, ask for report.md back, print the events
// and save the files that come back under output/.
//
//   node query.mjs        (Node.js 20 or later; it type-checks as TypeScript too)
import { mkdir, writeFile } from "node:fs/promises";
import { dirname, resolve, sep } from "node:path";

const url = process.env.SANDSTORM_URL ?? "http://localhost:8000";
const token = process.env.SANDSTORM_API_TOKEN;
const out = resolve("output");

const res = await fetch(`${url}/query`, {
  method: "POST",
  headers: {
    "Content-Type": "application/json",
    ...(token ? { Authorization: `Bearer ${token}` } : {}),
  },
  body: JSON.stringify({
    prompt: "Summarize data.csv in report.md",
    files: { "data.csv": "region,sales\nnorth,10\nsouth,7\n" },
    outputs: ["report.md"],
  }),
});
if (!res.ok || res.body === null) {
  console.error(res.status, await res.text());
  process.exit(1);
}

// Events are separated by a blank line; each has one `data:` line of JSON.
// Lines starting with `:` are keepalive comments.
const reader = res.body.getReader();
const decoder = new TextDecoder();
let buffer = "";
let failed = false;
while (true) {
  const { done, value } = await reader.read();
  if (done) break;
  buffer += decoder.decode(value, { stream: true });
  let end;
  while ((end = buffer.indexOf("\n\n")) !== -1) {
    const frame = buffer.slice(0, end);
    buffer = buffer.slice(end + 2);
    const data = frame
      .split("\n")
      .filter((line) => line.startsWith("data:"))
      .map((line) => line.slice(line.startsWith("data: ") ? 6 : 5))
      .join("\n");
    if (data === "") continue;
    const event = JSON.parse(data);
    if (event.type === "file") {
      const target = resolve(out, event.path);
      if (!target.startsWith(out + sep)) {
        throw new Error(`refusing to write outside ${out}: ${event.path}`);
      }
      await mkdir(dirname(target), { recursive: true });
      await writeFile(target, Buffer.from(event.data, "base64"));
      console.log(`saved ${target} (${event.size} bytes)`);
    } else {
      console.log(data);
    }
    if (event.type === "error") failed = true;
  }
}
process.exit(failed ? 1 : 0);
