// An independent MCP client for tether's interop tests: the TypeScript MCP SDK, with tether's
// exchanges and DPoP proofs (RFC 9449) done here by WebCrypto, not by any tether code.
//
// Input (JSON on stdin): {sts, task, svid, url, calls: [{name, arguments}]}
//   sts   the STS URL; svid a workload JWT for it; task the task id
//   url   the MCP endpoint (a gateway MCP route or a tether-protected MCP server)
// Output (JSON on stdout): {audience, tools: [names], results: [{ok, content?, error?}]}
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { webcrypto as crypto } from "node:crypto";

const TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange";
const b64url = (bytes) => Buffer.from(bytes).toString("base64url");
const text = (s) => new TextEncoder().encode(s);

const input = JSON.parse(await new Promise((resolve) => {
  let data = "";
  process.stdin.on("data", (chunk) => (data += chunk));
  process.stdin.on("end", () => resolve(data));
}));

const keys = await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, false, ["sign", "verify"]);
const { kty, crv, x, y } = await crypto.subtle.exportKey("jwk", keys.publicKey);
const nonces = new Map(); // origin -> last DPoP-Nonce

async function proof(method, url, accessToken) {
  const target = new URL(url);
  const htu = `${target.origin}${target.pathname}`;
  const header = { typ: "dpop+jwt", alg: "ES256", jwk: { kty, crv, x, y } };
  const claims = { jti: b64url(crypto.getRandomValues(new Uint8Array(16))), htm: method, htu, iat: Math.floor(Date.now() / 1000) };
  const nonce = nonces.get(target.origin);
  if (nonce) claims.nonce = nonce;
  if (accessToken) claims.ath = b64url(await crypto.subtle.digest("SHA-256", text(accessToken)));
  const signingInput = `${b64url(text(JSON.stringify(header)))}.${b64url(text(JSON.stringify(claims)))}`;
  // WebCrypto's ECDSA signature is r || s, which is exactly the JWS ES256 form (RFC 7518 §3.4)
  const signature = await crypto.subtle.sign({ name: "ECDSA", hash: "SHA-256" }, keys.privateKey, text(signingInput));
  return `${signingInput}.${b64url(signature)}`;
}

function remember(url, response) {
  const nonce = response.headers.get("dpop-nonce");
  if (nonce) nonces.set(new URL(url).origin, nonce);
}

async function exchange(form) {
  const url = `${input.sts}/token`;
  for (let attempt = 0; attempt < 2; attempt++) {
    const response = await fetch(url, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded", DPoP: await proof("POST", url) },
      body: new URLSearchParams(form),
    });
    remember(url, response);
    const body = await response.json();
    if (response.ok) return body.access_token;
    if (body.error !== "use_dpop_nonce") throw new Error(`exchange refused: ${body.error}: ${body.error_description}`);
  }
  throw new Error("exchange refused twice for a nonce");
}

// the audience is the MCP URL itself, as its RFC 9728 metadata says (path-suffixed form first)
const target = new URL(input.url);
const metadata = await (await fetch(`${target.origin}/.well-known/oauth-protected-resource${target.pathname}`)).json();
if (!metadata.authorization_servers?.includes(input.sts)) throw new Error("the MCP server does not trust this STS");

const session = await exchange({
  grant_type: TOKEN_EXCHANGE,
  subject_token: input.svid,
  subject_token_type: "urn:ietf:params:oauth:token-type:jwt",
  task: input.task,
});
const hop = await exchange({
  grant_type: TOKEN_EXCHANGE,
  subject_token: session,
  subject_token_type: "urn:ietf:params:oauth:token-type:access_token",
  resource: metadata.resource,
});

// every MCP request carries the hop token with a fresh proof for its method and URL
async function dpopFetch(url, init = {}) {
  const method = (init.method || "GET").toUpperCase();
  for (let attempt = 0; attempt < 2; attempt++) {
    const headers = new Headers(init.headers);
    headers.set("authorization", `DPoP ${hop}`);
    headers.set("dpop", await proof(method, String(url), hop));
    const response = await fetch(url, { ...init, headers });
    remember(String(url), response);
    if (response.status !== 401 || !(response.headers.get("www-authenticate") || "").includes("use_dpop_nonce")) return response;
  }
  throw new Error("resource refused twice for a nonce");
}

const client = new Client({ name: "tether-interop", version: "1.0.0" });
await client.connect(new StreamableHTTPClientTransport(target, { fetch: dpopFetch }));
const tools = (await client.listTools()).tools.map((t) => t.name).sort();
const results = [];
for (const call of input.calls || []) {
  try {
    const result = await client.callTool({ name: call.name, arguments: call.arguments || {} });
    results.push({ ok: !result.isError, content: result.content });
  } catch (error) {
    results.push({ ok: false, error: { code: error.code ?? null, message: String(error.message || error), data: error.data ?? null } });
  }
}
await client.close();
process.stdout.write(JSON.stringify({ audience: metadata.resource, tools, results }));
