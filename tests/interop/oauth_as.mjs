// A real OAuth 2 authorization server (node `oidc-provider`, panva) for the gateway's OAuth routes
// and `tether vault oauth-connect` tests.
//
// Usage: node oauth_as.mjs '<json>' with
//   {port,
//    scopes: ["contacts.read", ...]          the API scopes the AS knows (default contacts.read notes.write),
//    resources: {"<uri>": "scope ..."}       optional: the only RFC 8707 resource indicators accepted, each with
//                                            its scopes (default: any absolute URI, with every scope),
//    default_resource: "<uri>"               the resource a request without `resource` gets (default: the first of
//                                            `resources`, else "urn:tether:upstream"): every access token is an
//                                            opaque token for one resource and carries its API scopes,
//    ttl: {access_token, refresh_token, authorization_code, session}   seconds (defaults 600, 86400, 60, 3600),
//    accounts: {id: {claims...}}             optional: who may log in (default: any login name),
//    clients: [{client_id,
//               auth: "client_secret_basic" | "client_secret_post" | "private_key_jwt" | "none",
//               client_secret?,              for client_secret_* (and it also authenticates nothing else),
//               jwks?: {keys: [public JWK]}, for private_key_jwt and the token-exchange subject_token,
//               redirect_uris?: [...],       enables the authorization-code grant (PKCE S256 always required),
//               scope?: "a b",               the API scopes this client may get (default: all); beyond → invalid_scope,
//               refresh?: false}]}           no refresh tokens for this client (default: issued on every code grant)
//
// Features (endpoints at the issuer root, oidc-provider's defaults):
//   /auth           authorization code + PKCE S256 (RFC 6749 §4.1, RFC 7636); dev login/consent forms
//                   (`devInteractions`: any `login` in `accounts`, any password, then a consent form);
//   /token          authorization_code, refresh_token (rotated on every use: the old one dies, RFC 6749 §10.4),
//                   client_credentials (RFC 6749 §4.4), and RFC 8693 token exchange (below);
//   /token/revocation     RFC 7009;  /token/introspection  RFC 7662 (any confidential client may introspect);
//   /jwks, /.well-known/openid-configuration.
// A refresh token is issued on every authorization-code grant of a client allowed `refresh_token` (no
// `offline_access` dance: SaaS APIs differ there and the gateway does not care). Reuse detection: presenting
// a refresh token that was already rotated revokes the whole grant (the newest refresh token dies too),
// as OAuth 2.0 Security BCP §4.14.2 recommends: a client that refreshes twice concurrently loses its grant.
//
// Token exchange (RFC 8693 §2.1), kept minimal: grant_type urn:ietf:params:oauth:grant-type:token-exchange,
// subject_token_type urn:ietf:params:oauth:token-type:jwt, and a subject_token JWT that is
//   - signed by a key in the authenticated client's registered `jwks` (the key it uses for private_key_jwt),
//   - iss = the client_id, aud = this issuer or its token endpoint URL, sub = the subject (the agent),
//   - iat within the last 300 s, exp in the future and at most 300 s after iat, a jti never seen before
//     (replays → invalid_grant);
// optional `scope` (⊆ the client's scopes) and `resource`. The answer is an opaque access token
// (issued_token_type ...:access_token) whose introspection shows sub = the subject_token's sub,
// act = {sub: client_id} (RFC 8693 §4.1) and the subject_token's other private claims under `subject_claims`.
//
// Prints "ready <issuer>" when listening.
import { randomBytes, generateKeyPairSync } from 'node:crypto';
import { createLocalJWKSet, jwtVerify } from 'jose';
import Provider, { errors } from 'oidc-provider';

const config = JSON.parse(process.argv[2]);
const issuer = `http://127.0.0.1:${config.port}`;
const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const JWT_TYPE = 'urn:ietf:params:oauth:token-type:jwt';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';

const apiScopes = config.scopes ?? ['contacts.read', 'notes.write'];
const resources = config.resources ?? null;
const defaultResource = config.default_resource ?? (resources ? Object.keys(resources)[0] : 'urn:tether:upstream');
const ttl = { access_token: 600, refresh_token: 86400, authorization_code: 60, session: 3600, ...(config.ttl ?? {}) };

const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const signingKey = { ...privateKey.export({ format: 'jwk' }), alg: 'ES256', use: 'sig', kid: 'as-es256' };

// Claims the token-exchange grant puts on the token it issues (opaque tokens take `extra` from extraTokenClaims).
const exchangeClaims = new WeakMap();
const byId = new Map(config.clients.map((c) => [c.client_id, c]));

function clientMetadata(c) {
  const auth = c.auth ?? (c.client_secret ? 'client_secret_basic' : 'none');
  const grants = [];
  if (c.redirect_uris?.length) grants.push('authorization_code');
  if (c.redirect_uris?.length && c.refresh !== false) grants.push('refresh_token');
  if (auth !== 'none') grants.push('client_credentials', TOKEN_EXCHANGE);
  return {
    client_id: c.client_id,
    token_endpoint_auth_method: auth,
    ...(c.client_secret ? { client_secret: c.client_secret } : {}),
    ...(c.jwks ? { jwks: c.jwks } : {}),
    redirect_uris: c.redirect_uris ?? [],
    response_types: c.redirect_uris?.length ? ['code'] : [],
    grant_types: grants,
    id_token_signed_response_alg: 'ES256',
    scope: ['openid', 'offline_access', ...(c.scope ? c.scope.split(' ') : apiScopes)].join(' '),
  };
}

// The API scopes a resource carries, narrowed to what the client may get.
function resourceInfo(indicator, client) {
  const known = resources ? resources[indicator] : apiScopes.join(' ');
  if (known === undefined) throw new errors.InvalidTarget('unknown resource');
  const allowed = new Set((byId.get(client.clientId)?.scope ?? apiScopes.join(' ')).split(' '));
  return {
    scope: known.split(' ').filter((s) => allowed.has(s)).join(' '),
    accessTokenFormat: 'opaque',
    accessTokenTTL: ttl.access_token,
  };
}

const provider = new Provider(issuer, {
  clients: config.clients.map(clientMetadata),
  jwks: { keys: [signingKey] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  scopes: ['openid', 'offline_access', ...apiScopes],
  pkce: { required: () => true },
  ttl: {
    AccessToken: ttl.access_token,
    ClientCredentials: ttl.access_token,
    RefreshToken: ttl.refresh_token,
    AuthorizationCode: ttl.authorization_code,
    Grant: ttl.refresh_token,
    Session: ttl.session,
    Interaction: 600,
  },
  rotateRefreshToken: true,
  extraTokenClaims: async (ctx, token) => exchangeClaims.get(token),
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  features: {
    devInteractions: { enabled: true },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: async (ctx, client, oneOf) => oneOf ?? defaultResource,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (ctx, indicator, client) => resourceInfo(indicator, client),
    },
  },
  async findAccount(ctx, id) {
    if (config.accounts && !config.accounts[id]) return undefined;
    return { accountId: id, async claims() { return { sub: id, ...(config.accounts?.[id] ?? {}) }; } };
  },
});
provider.on('server_error', (ctx, err) => process.stderr.write(`server_error: ${err.stack}\n`));

// RFC 8693 token exchange (see the header for what the subject_token must be).
const seenJti = new Map();
provider.registerGrantType(TOKEN_EXCHANGE, async (ctx) => {
  const { client, params } = ctx.oidc;
  if (params.subject_token_type !== JWT_TYPE) {
    throw new errors.InvalidRequest(`subject_token_type must be ${JWT_TYPE}`);
  }
  if (!params.subject_token) throw new errors.InvalidRequest('missing subject_token');
  const registered = byId.get(client.clientId)?.jwks;
  if (!registered) throw new errors.InvalidGrant('the client has no registered keys');
  let payload;
  try {
    ({ payload } = await jwtVerify(params.subject_token, createLocalJWKSet(registered), {
      issuer: client.clientId,
      audience: [issuer, `${issuer}/token`],
      requiredClaims: ['sub', 'exp', 'iat', 'jti'],
      maxTokenAge: 300,
      clockTolerance: 5,
    }));
  } catch (err) {
    throw new errors.InvalidGrant(`subject_token rejected: ${err.code ?? 'invalid'}`);
  }
  if (payload.exp - payload.iat > 300) throw new errors.InvalidGrant('subject_token lives longer than 300 s');
  const now = Math.floor(Date.now() / 1000);
  for (const [jti, exp] of seenJti) if (exp < now) seenJti.delete(jti);
  if (seenJti.has(payload.jti)) throw new errors.InvalidGrant('subject_token replayed');
  seenJti.set(payload.jti, payload.exp);

  const indicator = params.resource ?? defaultResource;
  const info = resourceInfo(indicator, client);
  const grantable = new Set(info.scope.split(' ').filter(Boolean));
  const requested = params.scope ? params.scope.split(' ') : [...grantable];
  const refused = requested.filter((s) => !grantable.has(s));
  if (refused.length) throw new errors.InvalidScope('requested scope is not allowed', refused.join(' '));

  const { iss, aud, exp, iat, nbf, jti, sub, ...claims } = payload;
  const token = new provider.ClientCredentials({ client, scope: requested.join(' ') || undefined });
  token.resourceServer = new provider.ResourceServer(indicator, info);
  exchangeClaims.set(token, { sub, act: { sub: client.clientId }, subject_claims: claims });
  const value = await token.save();
  ctx.body = {
    access_token: value,
    issued_token_type: ACCESS_TOKEN_TYPE,
    token_type: 'Bearer',
    expires_in: token.expiration,
    ...(token.scope ? { scope: token.scope } : {}),
  };
}, ['subject_token', 'subject_token_type', 'actor_token', 'actor_token_type', 'requested_token_type', 'scope',
  'resource', 'audience']);

const server = provider.listen(config.port, '127.0.0.1', () => {
  process.stdout.write(`ready ${issuer}\n`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
