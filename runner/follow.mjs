/**
 * Sandstorm event-log follower: runs inside the sandbox as
 * `node follow.mjs LOG [UNTIL] [TURN]`, for a detached run.
 *
 * Prints the run's event log (see runner.mjs, record mode) from its first
 * byte, then whatever is appended, as it reads it (lines may be cut between
 * writes), and exits at the end of the log once the last line there is an
 * exit record (RS and `x` or `t`, which a turn's
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
 *
 * Its I/O is synchronous, into one buffer: a follower has nothing else to
 * do, and this costs half the CPU of node's asynchronous reads and writes,
 * which matters when the log is replayed at full speed on a machine the
 * agent and the server share. A write to a reader that stopped reading
 * could then block for good; the server starts every follower with a
 * process timeout at UNTIL (a little after), which its sandbox enforces.
 */
import { openSync, readSync, writeSync } from "node:fs";

const POLL_MS = 100;
/** How long the log may take to appear: the wrapper creates it at once. */
const APPEAR_MS = 30_000;
const CHUNK = 256 * 1024;
const NEWLINE = 0x0a;
const RS = 0x1e;
/** The exit record's kinds: `x` (an exit code) and `t` (the timeout). */
const EXIT_KINDS = new Set([0x78, 0x74]);

const NAP = new Int32Array(new SharedArrayBuffer(4));

function sleep(ms) {
  Atomics.wait(NAP, 0, 0, ms);
}

function openWhenThere(path) {
  const until = Date.now() + APPEAR_MS;
  for (;;) {
    try {
      return openSync(path, "r");
    } catch (err) {
      if (err.code !== "ENOENT" || Date.now() > until) throw err;
      sleep(POLL_MS);
    }
  }
}

/** Writes `length` bytes of `buffer` to stdout, all of them. */
function writeAll(buffer, length) {
  let written = 0;
  while (written < length) {
    try {
      written += writeSync(1, buffer, written, length - written);
    } catch (err) {
      // A pipe its reader set non-blocking: wait for room.
      if (err.code !== "EAGAIN") throw err;
      sleep(1);
    }
  }
}

/** An exit record, with the newline that ends the line before it. */
const EXIT_MARKERS = [Buffer.from("\n\x1ex", "latin1"), Buffer.from("\n\x1et", "latin1")];

/**
 * What the log read so far says, chunk by chunk: how many exit records it
 * holds, and whether it ends right after one. The chunks go out as they
 * are read, lines cut anywhere (the server joins them again), so this
 * looks only at the chunk's own bytes and the few around its borders.
 */
class Scanner {
  exits = 0;
  /** The log so far ends with a whole line that is an exit record. */
  atExit = false;
  /** The last two bytes so far; the log starts as if after a newline. */
  #tail = Buffer.from("\n", "latin1");
  /** The first bytes (up to two) of the line not yet ended. */
  #head = Buffer.alloc(0);

  push(chunk) {
    // Exit records that start across the border, then within the chunk.
    const border = Buffer.concat([this.#tail, chunk.subarray(0, 2)]);
    for (const marker of EXIT_MARKERS) {
      for (let at = border.indexOf(marker); at >= 0 && at < this.#tail.length; at = border.indexOf(marker, at + 1)) {
        this.exits += 1;
      }
      for (let at = chunk.indexOf(marker); at >= 0; at = chunk.indexOf(marker, at + 1)) this.exits += 1;
    }
    this.#tail = Buffer.from(Buffer.concat([this.#tail, chunk.subarray(-2)]).subarray(-2));

    const lastNewline = chunk.lastIndexOf(NEWLINE);
    if (lastNewline < 0) {
      this.#head = headOf(this.#head, chunk);
      this.atExit = false;
      return;
    }
    // The last whole line, and where it began: in this chunk, or before.
    const before = lastNewline > 0 ? chunk.lastIndexOf(NEWLINE, lastNewline - 1) : -1;
    const lastLine = before >= 0
      ? chunk.subarray(before + 1, Math.min(before + 3, lastNewline))
      : headOf(this.#head, chunk.subarray(0, lastNewline));
    this.atExit = lastNewline === chunk.length - 1 && lastLine[0] === RS && EXIT_KINDS.has(lastLine[1]);
    this.#head = Buffer.from(chunk.subarray(lastNewline + 1, lastNewline + 3));
  }
}

/** The first two bytes of a line whose known start is `head`, then `more`. */
function headOf(head, more) {
  return head.length >= 2 ? head : Buffer.from(Buffer.concat([head, more.subarray(0, 2 - head.length)]));
}

function main() {
  const path = process.argv[2];
  if (!path) throw new Error("usage: node follow.mjs LOG [UNTIL] [TURN]");
  const until = Number(process.argv[3] ?? Infinity);
  if (Number.isNaN(until)) throw new Error(`UNTIL must be a Unix time in milliseconds`);
  const turn = Number(process.argv[4] ?? 1);
  if (!Number.isInteger(turn) || turn < 1) throw new Error(`TURN must be a whole number from 1`);
  const file = openWhenThere(path);
  const scanner = new Scanner();
  // One buffer for every read: a synchronous write is done with it.
  const buffer = Buffer.allocUnsafe(CHUNK);
  let position = 0;
  // Its reader is gone by UNTIL; nothing printed after would be read.
  while (Date.now() < until) {
    const bytesRead = readSync(file, buffer, 0, CHUNK, position);
    if (bytesRead === 0) {
      if (scanner.atExit && scanner.exits >= turn) return;
      sleep(POLL_MS);
      continue;
    }
    position += bytesRead;
    // Each read goes out as it is, the way `cat` would pass it on: lines
    // cut anywhere.
    scanner.push(buffer.subarray(0, bytesRead));
    writeAll(buffer, bytesRead);
  }
}

try {
  main();
} catch (err) {
  // A reader that went away (EPIPE) cannot be told anything more.
  if (err.code === "EPIPE") process.exit(1);
  process.stderr.write(`follow.mjs: ${err instanceof Error ? err.message : err}\n`);
  process.exit(2);
}
