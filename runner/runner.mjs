/**
 * Sandstorm agent runner: runs inside the sandbox as `node runner.mjs`.
 *
 * Reads the run's config (agent_config.json next to this file, or the path in
 * argv[2]), calls the Claude Agent SDK's query(), and prints every SDK message
 * as exactly one JSON line on stdout. The server relays those lines as SSE
 * events, so stdout carries nothing else: diagnostics go to stderr.
 *
 * A detached run (SANDSTORM_EVENT_RECORDS=1) writes stdout into its event log
 * instead of a pipe, and the CLI's stderr goes there too, in order: each line
 * is then a record, RS (0x1e) and `o` before an SDK message, RS and `e`
 * before a stderr line. The server reads the log back (follow.mjs) and turns
 * it into the same events, with the same ids, every time.
 *
 * Exit codes: 0 once a `result` message was printed (even an error result such
 * as error_max_turns: the line says so); 1 after printing a
 * {"type":"error","error":{"type":"runner_error","message":...}} line when the
 * config is bad, the SDK throws, or the agent ends without a result.
 */
import { query } from "@anthropic-ai/claude-agent-sdk";
import { readFile, readdir, lstat } from "node:fs/promises";
import { once } from "node:events";
import { dirname, extname, join } from "node:path";
import { fileURLToPath } from "node:url";

const DEFAULT_CONFIG = join(dirname(fileURLToPath(import.meta.url)), "agent_config.json");
const DEFAULT_CWD = "/home/user";

/** Config fields, each with a check of its JSON type; null means absent. */
const FIELDS = {
  prompt: (v) => typeof v === "string" && v.length > 0 || "a non-empty string",
  cwd: (v) => typeof v === "string" && v.startsWith("/") || "an absolute path",
  model: (v) => typeof v === "string" && v.length > 0 || "a non-empty string",
  max_turns: (v) => Number.isInteger(v) && v > 0 || "a positive integer",
  system_prompt: (v) => typeof v === "string"
    || isObject(v) && v.type === "preset" && v.preset === "claude_code"
      && (v.append === undefined || typeof v.append === "string")
    || 'a string or {"type":"preset","preset":"claude_code","append":"..."}',
  output_format: (v) => isObject(v) && v.type === "json_schema" && isObject(v.schema)
    || 'an object {"type":"json_schema","schema":{...}}',
  agents: (v) => isObject(v) || "an object of agent definitions",
  mcp_servers: (v) => isObject(v) || "an object of MCP server configs",
  allowed_tools: (v) => Array.isArray(v) && v.every((t) => typeof t === "string" && t.length > 0)
    || "an array of tool names",
  max_budget_usd: (v) => typeof v === "number" && Number.isFinite(v) && v > 0 || "a positive number",
  has_skills: (v) => typeof v === "boolean" || "a boolean",
  // A follow-up turn: the SDK session to carry on (its transcript is in
  // ~/.claude), and whether to branch from it instead.
  resume: (v) => typeof v === "string" && /^[0-9a-zA-Z-]{1,128}$/.test(v) || "an SDK session id",
  fork_session: (v) => typeof v === "boolean" || "a boolean",
  outputs: (v) => isObject(v) && Array.isArray(v.patterns) && v.patterns.every((p) => typeof p === "string")
    && [v.max_files, v.max_file_bytes, v.max_total_bytes].every((n) => Number.isInteger(n) && n >= 0)
    && (v.changed_only === undefined || typeof v.changed_only === "boolean")
    || 'an object {"patterns":[...],"max_files":N,"max_file_bytes":N,"max_total_bytes":N,"changed_only":B}',
};

function isObject(v) {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

class ConfigError extends Error {}

/** Reads and checks the config; every problem is a ConfigError naming the field. */
async function loadConfig(path) {
  let text;
  try {
    text = await readFile(path, "utf-8");
  } catch (err) {
    throw new ConfigError(`cannot read agent config ${path}: ${err.code ?? err.message}`);
  }
  let config;
  try {
    config = JSON.parse(text);
  } catch (err) {
    throw new ConfigError(`agent config ${path} is not valid JSON: ${err.message}`);
  }
  if (!isObject(config)) throw new ConfigError(`agent config ${path} must be a JSON object`);
  for (const [key, value] of Object.entries(config)) {
    const check = FIELDS[key];
    if (!check) throw new ConfigError(`agent config has an unknown field "${key}"`);
    if (value === null) continue;
    const ok = check(value);
    if (ok !== true) throw new ConfigError(`agent config field "${key}" must be ${ok}`);
  }
  if (config.prompt == null) throw new ConfigError('agent config field "prompt" is missing');
  return config;
}

/** Maps the config onto SDK options. */
function toOptions(config, abortController) {
  const options = {
    cwd: config.cwd ?? DEFAULT_CWD,
    // The sandbox is the security boundary; nobody is there to approve tools.
    permissionMode: "bypassPermissions",
    allowDangerouslySkipPermissions: true,
    // ~/.claude/settings.json, written by the server (permissions, env);
    // with skills, the project's too, which is where the SDK finds them
    // (/home/user/.claude/skills, the cwd's).
    settingSources: config.has_skills ? ["user", "project"] : ["user"],
    abortController,
    // The CLI's own stderr is for diagnosis only; keep it off stdout (or,
    // in record mode, mark it as stderr in the log).
    stderr: writeStderr,
  };
  // A local sandbox's execute-only copy of Claude Code: a process started
  // from a file it cannot read is not dumpable, so the agent's commands
  // cannot write into the SDK's channel through /proc/<pid>/fd.
  if (process.env.SANDSTORM_CLAUDE_CODE) {
    options.pathToClaudeCodeExecutable = process.env.SANDSTORM_CLAUDE_CODE;
  }
  if (config.model != null) options.model = config.model;
  if (config.system_prompt != null) options.systemPrompt = config.system_prompt;
  if (config.max_turns != null) options.maxTurns = config.max_turns;
  if (config.output_format != null) options.outputFormat = config.output_format;
  if (config.agents != null) options.agents = config.agents;
  if (config.mcp_servers != null) {
    options.mcpServers = config.mcp_servers;
    // Over stdin rather than on Claude Code's command line, where any
    // process of the sandbox could read the servers' env and headers (the
    // tokens `${VAR}` filled in). The CLI is always the SDK's own bundled
    // one (or the local sandbox's copy of it), which reads them there.
    options.mcpServersDelivery = "initialize";
  }
  if (config.allowed_tools != null) {
    // `tools` is what the model sees; `allowedTools` alone would only
    // pre-approve these and leave every other built-in tool in view. MCP
    // tools are not built-ins: their servers come and go with
    // `mcp_servers`, and they stay approved here.
    options.tools = config.allowed_tools.filter((name) => !name.startsWith("mcp__"));
    options.allowedTools = config.allowed_tools;
  }
  if (config.max_budget_usd != null) options.maxBudgetUsd = config.max_budget_usd;
  if (config.resume != null) options.resume = config.resume;
  if (config.fork_session != null) options.forkSession = config.fork_session;
  return options;
}

/** Record mode: stdout is the run's event log, and every line is marked. */
const RECORDS = process.env.SANDSTORM_EVENT_RECORDS === "1";
const RECORD_MESSAGE = "\x1eo";
const RECORD_STDERR = "\x1ee";

/**
 * Writes one JSON line and waits for the pipe to take it when it is full, so
 * a reader slower than the agent slows the agent instead of losing lines.
 */
async function emit(message) {
  const json = JSON.stringify(message);
  const line = RECORDS ? RECORD_MESSAGE + scrub(json) + "\n" : json + "\n";
  if (!process.stdout.write(line)) {
    await once(process.stdout, "drain");
  }
}

/**
 * Record mode: the values of the variables SANDSTORM_REDACT_VARS names (the
 * run's keys) never reach the log, which outlives this process and is read
 * by servers that may not know them. Longest first and at least 8
 * characters, as the server's own redaction does, with the same marker.
 */
const REDACTED = "[REDACTED]";
const SECRETS = (process.env.SANDSTORM_REDACT_VARS ?? "")
  .split(",")
  .map((name) => process.env[name.trim()])
  .filter((value) => typeof value === "string" && value.length >= 8)
  .sort((a, b) => b.length - a.length);

function scrub(text) {
  for (const secret of SECRETS) text = text.split(secret).join(REDACTED);
  return text;
}

/** A stderr line not yet ended, in record mode. */
let stderrPending = "";

/** The CLI's stderr: passed through, or cut into stderr records. */
function writeStderr(data) {
  if (!RECORDS) {
    process.stderr.write(data);
    return;
  }
  const lines = (stderrPending + data).split("\n");
  stderrPending = lines.pop();
  for (const line of lines) process.stdout.write(RECORD_STDERR + scrub(line) + "\n");
}

/** Resolves once everything written to stdout so far has been handed to the OS. */
function flushStdout() {
  return new Promise((resolve) => process.stdout.write("", () => resolve()));
}

async function exit(code) {
  if (stderrPending !== "") writeStderr("\n");
  await flushStdout();
  // The SDK's CLI process and MCP servers may linger; the run is over.
  process.exit(code);
}

/**
 * Output files: after the result, every regular file under `root` whose path
 * (relative to root) matches a pattern is sent as a `file` line, base64 and
 * binary-safe; with `changed_only` ("auto"), only the files created or
 * changed since `since` (ms). A file over a size limit is never skipped
 * silently: it gets a `warning` line that names it and the limit. Files
 * past the count limit get one warning that counts them: with "auto" they
 * can be a whole `node_modules`.
 */
async function emitOutputs(root, outputs, since) {
  const matchers = outputs.patterns.map(globToRegExp);
  const paths = (await listFiles(root))
    .filter((p) => matchers.some((m) => m.test(p)))
    .sort();
  let sent = 0;
  let total = 0;
  let overCount = 0;
  for (const path of paths) {
    const full = join(root, path);
    const info = await lstat(full).catch(() => null);
    if (info == null || !info.isFile()) continue;
    // ctime too: a file moved into place or made executable is changed.
    if (outputs.changed_only && Math.max(info.mtimeMs, info.ctimeMs) < since) continue;
    if (sent >= outputs.max_files) {
      overCount += 1;
      continue;
    }
    if (info.size > outputs.max_file_bytes) {
      await emit({ type: "warning", path, message: `${path} not sent: it is ${info.size} bytes and the per-file limit is ${outputs.max_file_bytes} bytes` });
      continue;
    }
    if (total + info.size > outputs.max_total_bytes) {
      await emit({ type: "warning", path, message: `${path} not sent: it would take the output past the ${outputs.max_total_bytes}-byte total limit` });
      continue;
    }
    const content = await readFile(full).catch(() => null);
    if (content == null) {
      await emit({ type: "warning", path, message: `${path} could not be read` });
      continue;
    }
    sent += 1;
    total += content.length;
    await emit({ type: "file", path, size: content.length, mime: mimeOf(path), content_base64: content.toString("base64") });
  }
  if (overCount > 0) {
    await emit({ type: "warning", message: `${overCount} more output files not sent: the limit is ${outputs.max_files} output files` });
  }
}

/**
 * The regular files under `root`, as `/`-separated paths relative to it.
 *
 * Hidden files and folders are skipped, and hidden folders never entered:
 * they hold the SDK's state, transcripts and the Vertex credentials, and
 * the SDK's CLI, which is still running, changes them under us. It locks
 * `~/.claude.json` by creating and removing `/home/user/.claude.json.lock`,
 * a folder, while tools run; on a loaded machine that can overlap the
 * result. A recursive `readdir` that found the lock and then tried to enter
 * it after it was gone failed as a whole with ENOENT ("cannot list
 * /home/user"), and every output file was lost. Likewise a folder of the
 * agent's that vanishes between being listed and being read is skipped, and
 * one that cannot be read gets a warning while the rest are still sent.
 * Symlinks are not followed: a link the agent planted must not pull in
 * files from outside its home.
 */
async function listFiles(root) {
  const files = [];
  const folders = [""];
  while (folders.length > 0) {
    const folder = folders.pop();
    let entries;
    try {
      entries = await readdir(folder === "" ? root : join(root, folder), { withFileTypes: true });
    } catch (err) {
      if (folder !== "" && err.code === "ENOENT") continue;
      const where = folder === "" ? root : folder;
      await emit({ type: "warning", message: `cannot list ${where}: ${err.code ?? err.message}` });
      continue;
    }
    for (const entry of entries) {
      if (entry.name.startsWith(".")) continue;
      const path = folder === "" ? entry.name : `${folder}/${entry.name}`;
      if (entry.isDirectory()) folders.push(path);
      else if (entry.isFile()) files.push(path);
    }
  }
  return files;
}

/** `**` spans folders, `*` and `?` stay inside one name, `[...]` is a class. */
function globToRegExp(glob) {
  let re = "";
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i];
    if (c === "*" && glob[i + 1] === "*") {
      i += 1;
      if (glob[i + 1] === "/") {
        i += 1;
        re += "(?:.*/)?";
      } else {
        re += ".*";
      }
    } else if (c === "*") {
      re += "[^/]*";
    } else if (c === "?") {
      re += "[^/]";
    } else if (c === "[") {
      const end = glob.indexOf("]", i + 1);
      if (end === -1) {
        re += "\\[";
      } else {
        const body = glob.slice(i + 1, end).replace(/^!/, "^").replace(/\\/g, "\\\\");
        re += `[${body}]`;
        i = end;
      }
    } else {
      re += c.replace(/[.+^${}()|\\/]/g, "\\$&");
    }
  }
  return new RegExp(`^${re}$`);
}

const MIME = {
  ".txt": "text/plain", ".md": "text/markdown", ".csv": "text/csv", ".json": "application/json",
  ".html": "text/html", ".css": "text/css", ".js": "text/javascript", ".py": "text/x-python",
  ".xml": "application/xml", ".yaml": "application/yaml", ".yml": "application/yaml",
  ".pdf": "application/pdf", ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
  ".gif": "image/gif", ".svg": "image/svg+xml", ".webp": "image/webp", ".zip": "application/zip",
  ".gz": "application/gzip", ".tar": "application/x-tar", ".xlsx":
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
  ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
};

function mimeOf(path) {
  return MIME[extname(path).toLowerCase()] ?? "application/octet-stream";
}

let failed = false;

/** Prints the one error line and exits 1; later failures add nothing. */
async function fail(err) {
  if (failed) return;
  failed = true;
  const message = err instanceof Error ? err.message : String(err);
  await emit({ type: "error", error: { type: "runner_error", message } });
  await exit(1);
}

async function main() {
  // Before the config is read: everything the user uploaded is older.
  const started = Date.now();
  const config = await loadConfig(process.argv[2] ?? DEFAULT_CONFIG);
  const abortController = new AbortController();
  for (const signal of ["SIGTERM", "SIGINT"]) {
    process.once(signal, () => {
      // Stop the CLI child too, then go: the run is being cancelled.
      abortController.abort();
      process.exit(128 + (signal === "SIGTERM" ? 15 : 2));
    });
  }
  const options = toOptions(config, abortController);
  for await (const message of query({ prompt: config.prompt, options })) {
    await emit(message);
    // The first result ends the run. Background subagents can produce a
    // second one later; nobody is waiting for it.
    if (message.type === "result") {
      if (config.outputs != null) await emitOutputs(config.cwd ?? DEFAULT_CWD, config.outputs, started);
      return exit(0);
    }
  }
  return fail("the agent stopped without a result message");
}

// A reader that has gone away cannot be told anything more.
process.stdout.on("error", () => process.exit(1));
// Whatever escapes (a failing MCP transport, a bug here) still ends the run
// with an error line instead of a bare stack trace.
process.on("uncaughtException", fail);
process.on("unhandledRejection", fail);

main().catch(fail);
