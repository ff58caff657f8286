/**
 * Sandstorm event-log follower: runs inside the sandbox as
 * `node follow.mjs LOG [UNTIL]`, for a detached run.
 *
 * Prints the run's event log (see runner.mjs, record mode) from its first
 * byte, then whatever is appended, and exits once it has printed the exit
 * record the run's wrapper appends when the runner ends (RS and `x` or
 * `t`). Every reader of a run, the first and each one that reattaches, reads
 * the log this way, from the start, so they all see the same records in the
 * same order and the server numbers the events alike.
 *
 * UNTIL (Unix time in milliseconds) is when its reader's stream ends at the
 * latest: it then exits too, so readers that come and go (a client on a
 * platform that cuts every response) do not leave followers behind; on E2B
 * a process outlives the stream that started it.
 *
 * It only reads. It polls rather than watching: inotify does not see writes
 * made through some of the mounts sandboxes use, and a tenth of a second is
 * nothing next to a model's turn.
 */
import { open } from "node:fs/promises";
import { once } from "node:events";

const POLL_MS = 100;
/** How long the log may take to appear: the wrapper creates it at once. */
const APPEAR_MS = 30_000;
const CHUNK = 64 * 1024;
const EXIT_RECORD = /^\x1e[xt]/;

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function openWhenThere(path) {
  const until = Date.now() + APPEAR_MS;
  for (;;) {
    try {
      return await open(path, "r");
    } catch (err) {
      if (err.code !== "ENOENT" || Date.now() > until) throw err;
      await sleep(POLL_MS);
    }
  }
}

async function write(text) {
  if (!process.stdout.write(text)) await once(process.stdout, "drain");
}

async function main() {
  const path = process.argv[2];
  if (!path) throw new Error("usage: node follow.mjs LOG [UNTIL]");
  const until = Number(process.argv[3] ?? Infinity);
  if (Number.isNaN(until)) throw new Error(`UNTIL must be a Unix time in milliseconds`);
  // Its reader is gone by then; nothing it printed would be read.
  setTimeout(() => process.exit(0), Math.min(Math.max(until - Date.now(), 0), 2 ** 31 - 1)).unref();
  const file = await openWhenThere(path);
  const buffer = Buffer.alloc(CHUNK);
  let pending = "";
  let position = 0;
  for (;;) {
    const { bytesRead } = await file.read(buffer, 0, CHUNK, position);
    if (bytesRead === 0) {
      await sleep(POLL_MS);
      continue;
    }
    position += bytesRead;
    const lines = (pending + buffer.toString("latin1", 0, bytesRead)).split("\n");
    pending = lines.pop();
    for (const line of lines) {
      // latin1 both ways: the bytes go out exactly as they came in.
      await write(Buffer.from(line + "\n", "latin1"));
      if (EXIT_RECORD.test(line)) {
        await new Promise((resolve) => process.stdout.write("", resolve));
        process.exit(0);
      }
    }
  }
}

process.stdout.on("error", () => process.exit(1));
main().catch((err) => {
  process.stderr.write(`follow.mjs: ${err instanceof Error ? err.message : err}\n`);
  process.exit(2);
});
