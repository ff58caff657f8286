// Performs one named operation with the official JS E2B SDK against the
// emulator (E2B_API_URL / E2B_SANDBOX_URL on loopback), so tests/e2b_parity.rs
// can record what the SDK sends. Usage: node driver.mjs <operation>
// Every operation first creates a sandbox (the recording tells the calls
// apart by path), then does its one call, then kills the sandbox.
import { Sandbox } from 'e2b'

const OPERATIONS = [
  'create', 'upload_one', 'upload_many', 'run', 'read', 'set_timeout', 'kill',
  'pause', 'connect', 'list',
]
const op = process.argv[2]
if (!OPERATIONS.includes(op)) {
  console.error(`driver.mjs: operation must be one of ${OPERATIONS.join(', ')}, got ${op}`)
  process.exit(2)
}

// The same arguments as driver.py, so differences are the SDKs', not ours.
const sbx = await Sandbox.create('base', {
  timeoutMs: 120_000,
  metadata: { suite: 'parity' },
})
if (op === 'upload_one') {
  await sbx.files.write('/home/user/parity/one.txt', 'one\n')
} else if (op === 'upload_many') {
  await sbx.files.write([
    { path: '/home/user/parity/a.txt', data: 'A' },
    { path: '/home/user/parity/b.txt', data: 'B' },
  ])
} else if (op === 'run') {
  await sbx.commands.run('echo parity', {
    envs: { PARITY: '1' },
    cwd: '/home/user',
    timeoutMs: 30_000,
  })
} else if (op === 'read') {
  await sbx.files.write('/home/user/parity/read.txt', 'read me\n')
  const text = await sbx.files.read('/home/user/parity/read.txt')
  if (text !== 'read me\n') throw new Error(`read back ${JSON.stringify(text)}`)
} else if (op === 'set_timeout') {
  await sbx.setTimeout(300_000)
} else if (op === 'pause') {
  if (!(await sbx.pause())) throw new Error('pause answered false')
} else if (op === 'connect') {
  await Sandbox.connect(sbx.sandboxId, { timeoutMs: 120_000 })
} else if (op === 'list') {
  const listed = await Sandbox.list({ query: { metadata: { suite: 'parity' } } }).nextItems()
  if (!listed.some((s) => s.sandboxId === sbx.sandboxId)) throw new Error('not listed')
}
await sbx.kill()
console.log(JSON.stringify({ op, sandboxId: sbx.sandboxId }))
