// The peer `tether bench --peer` measures beside tether: node `oidc-provider` (panva), the
// certified OpenID provider, issuing DPoP-bound (RFC 9449) client-credentials access tokens as
// ES256-signed JWTs (RFC 9068) for one resource (RFC 8707).
//
// Usage: node peer_op.mjs '{"port": N, "resource": "https://...", "secret": "...", "jwks": {keys: [public JWK]}}'
//
// Two clients, both `client_credentials` only, both requiring DPoP (`dpop_bound_access_tokens`):
//   plain  — client_secret_basic (the cheapest client authentication oidc-provider has);
//   pkjwt  — private_key_jwt (RFC 7523 §2.2) with the given ES256 public key.
// Access tokens: format `jwt`, ES256, 300 s, scope `read`, audience = `resource`. DPoP proofs are
// checked in full (signature, htm, htu, iat window, jti replay in the provider's store); no
// server nonce is demanded (oidc-provider's default), so each request is one round trip. The
// provider runs with NODE_ENV=production, without its dev interactions or logging.
// Prints "ready <issuer>" when listening.
import Provider from 'oidc-provider';

const config = JSON.parse(process.argv[2]);
const issuer = `http://127.0.0.1:${config.port}`;

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: 'plain',
      client_secret: config.secret,
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      dpop_bound_access_tokens: true,
    },
    {
      client_id: 'pkjwt',
      token_endpoint_auth_method: 'private_key_jwt',
      token_endpoint_auth_signing_alg: 'ES256',
      jwks: config.jwks,
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      dpop_bound_access_tokens: true,
    },
  ],
  jwks: { keys: [config.signing_key] },
  clientDefaults: { id_token_signed_response_alg: 'ES256' },
  scopes: ['read'],
  enabledJWA: { dPoPSigningAlgValues: ['ES256'], clientAuthSigningAlgValues: ['ES256'] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    dPoP: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: async () => config.resource,
      useGrantedResource: async () => true,
      getResourceServerInfo: async () => ({
        scope: 'read',
        audience: config.resource,
        accessTokenTTL: 300,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: 'ES256' } },
      }),
    },
  },
});
provider.on('server_error', (ctx, err) => process.stderr.write(`server_error: ${err.stack}\n`));

const server = provider.listen(config.port, '127.0.0.1', () => {
  process.stdout.write(`ready ${issuer}\n`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
