/**
 * Sandstorm event-log follower: runs inside the sandbox as
 * `node follow.mjs LOG [UNTIL] [TURN]`, for a detached run.
 *
 * Prints the run's event log (see runner.mjs, record mode) from its first
 * byte, then whatever is appended, and exits at the end of the log once the
 * last line there is an exit record (RS and `x` or `t`, which a turn's
 * wrapper appends when its runner ends) and it has printed at least TURN of
 * them (default 1): a run's later turns append to the same log, and the
 * reader of a follow-up waits for that turn's end. Every reader of a run,
 * the first and each one that reattaches, reads the log this way, from the
 * start, so they all see the same records in the same order and the server
 * numbers the events alike.
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
const CHUNK = 256 * 1024;
const NEWLINE = 0x0a;
const RS = 0x1e;
/** The exit record's kinds: `x` (an exit code) and `t` (the timeout). */
const EXIT_KINDS = new Set([0x78, 0x74]);

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

async function write(bytes) {
  if (!process.stdout.write(bytes)) await once(process.stdout, "drain");
}

/** An exit record that starts a line other than the first. */
const EXIT_MARKERS = [Buffer.from("\n\x1ex", "latin1"), Buffer.from("\n\x1et", "latin1")];

function isExitRecord(lines, start) {
  return lines[start] === RS && EXIT_KINDS.has(lines[start + 1]);
}

/** How many exit records `lines` (whole lines, from a line's start) holds. */
function countExitRecords(lines) {
  let count = isExitRecord(lines, 0) ? 1 : 0;
  for (const marker of EXIT_MARKERS) {
    for (let at = lines.indexOf(marker); at >= 0; at = lines.indexOf(marker, at + 1)) count += 1;
  }
  return count;
}

/** Whether the last of `lines` (whole lines, ending in a newline) is an exit record. */
function endsWithExitRecord(lines) {
  return isExitRecord(lines, lines.lastIndexOf(NEWLINE, lines.length - 2) + 1);
}

async function main() {
  const path = process.argv[2];
  if (!path) throw new Error("usage: node follow.mjs LOG [UNTIL] [TURN]");
  const until = Number(process.argv[3] ?? Infinity);
  if (Number.isNaN(until)) throw new Error(`UNTIL must be a Unix time in milliseconds`);
  const turn = Number(process.argv[4] ?? 1);
  if (!Number.isInteger(turn) || turn < 1) throw new Error(`TURN must be a whole number from 1`);
  // Its reader is gone by then; nothing it printed would be read.
  setTimeout(() => process.exit(0), Math.min(Math.max(until - Date.now(), 0), 2 ** 31 - 1)).unref();
  const file = await openWhenThere(path);
  let pending = Buffer.alloc(0);
  let position = 0;
  let exits = 0;
  let atExit = false;
  for (;;) {
    const buffer = Buffer.allocUnsafe(CHUNK);
    const { bytesRead } = await file.read(buffer, 0, CHUNK, position);
    if (bytesRead === 0) {
      if (atExit && pending.length === 0 && exits >= turn) {
        await new Promise((resolve) => process.stdout.write("", resolve));
        process.exit(0);
      }
      await sleep(POLL_MS);
      continue;
    }
    position += bytesRead;
    const data = pending.length ? Buffer.concat([pending, buffer.subarray(0, bytesRead)]) : buffer.subarray(0, bytesRead);
    const cut = data.lastIndexOf(NEWLINE) + 1;
    // Whole lines go out as they are, many at a time; a line still being
    // written waits for its end. Only exit records are looked for.
    const lines = data.subarray(0, cut);
    pending = Buffer.from(data.subarray(cut));
    if (lines.length) {
      exits += countExitRecords(lines);
      atExit = endsWithExitRecord(lines);
      await write(lines);
    }
  }
}

process.stdout.on("error", () => process.exit(1));
main().catch((err) => {
  process.stderr.write(`follow.mjs: ${err instanceof Error ? err.message : err}\n`);
  process.exit(2);
});
