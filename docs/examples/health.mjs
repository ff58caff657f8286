// GET /health: is the server up, and which version is it?
const url = process.env.SANDSTORM_URL ?? "http://localhost:8000";
const res = await fetch(`${url}/health`);
if (!res.ok) throw new Error(`${res.status}: ${await res.text()}`);
const health = await res.json();
console.log(health.status, health.version);
