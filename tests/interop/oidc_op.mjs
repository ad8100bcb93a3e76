// A real OpenID Provider (node `oidc-provider`, panva) for the console's OIDC login tests.
//
// Usage: node oidc_op.mjs '<json>' with {port, clients: [{client_id, client_secret?, redirect_uris}],
// accounts: {id: {email, email_verified, name, groups}}}. A client without a secret is public
// (token_endpoint_auth_method none, PKCE only); every client must use PKCE S256 (RFC 7636).
// Logging in uses the provider's own dev interactions (login form: any `login` = account id,
// then a consent form). ID tokens are ES256 and carry the scope's claims (conformIdTokenClaims
// off, as Google, Entra and Okta put email in the ID token). Prints "ready <issuer>" when listening.
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import Provider from 'oidc-provider';

const config = JSON.parse(process.argv[2]);
const issuer = `http://127.0.0.1:${config.port}`;

const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const jwk = { ...privateKey.export({ format: 'jwk' }), alg: 'ES256', use: 'sig', kid: 'op-es256' };

const clients = config.clients.map((c) => ({
  client_id: c.client_id,
  ...(c.client_secret ? { client_secret: c.client_secret, token_endpoint_auth_method: 'client_secret_basic' }
    : { token_endpoint_auth_method: 'none' }),
  redirect_uris: c.redirect_uris,
  grant_types: ['authorization_code'],
  response_types: ['code'],
  id_token_signed_response_alg: 'ES256',
}));

const provider = new Provider(issuer, {
  clients,
  jwks: { keys: [jwk] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  pkce: { required: () => true },
  conformIdTokenClaims: false,
  claims: {
    openid: ['sub', 'groups'],
    email: ['email', 'email_verified'],
    profile: ['name'],
  },
  features: { devInteractions: { enabled: true } },
  async findAccount(ctx, id) {
    const account = config.accounts[id];
    if (!account) return undefined;
    return { accountId: id, async claims() { return { sub: id, ...account }; } };
  },
});
provider.on('server_error', (ctx, err) => process.stderr.write(`server_error: ${err.stack}\n`));

const server = provider.listen(config.port, '127.0.0.1', () => {
  process.stdout.write(`ready ${issuer}\n`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
