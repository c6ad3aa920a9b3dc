// The reference OpenID Provider of the token benchmark: panva's certified oidc-provider,
// configured like the ENRS portal's token endpoint (RS256 ID tokens carrying the scope's
// claims, opaque access tokens, refresh tokens always issued and rotated at every use,
// client_secret_basic, PKCE S256 required, tokens bound to the login session).
//
//   node op.mjs <port> <admin-port>
//
// <port> serves the provider on 127.0.0.1. <admin-port> (127.0.0.1 only) mints what a user's
// browser would otherwise obtain interactively, through the provider's own models:
//   POST /codes?n=N  ->  [{"code": ..., "code_verifier": ...}, ...]
// Each code comes from its own login (a Session and a Grant), as every code of the portal's
// bench does. Prints one JSON line {"ready": true, ...} on stdout once listening.
import { createHash, generateKeyPairSync, randomBytes, randomUUID } from 'node:crypto';
import http from 'node:http';

import Provider from 'oidc-provider';

const port = Number(process.argv[2] || 3900);
const adminPort = Number(process.argv[3] || port + 1);
const issuer = `http://127.0.0.1:${port}`;

const CLIENT_ID = 'bench';
const CLIENT_SECRET = process.env.BENCH_CLIENT_SECRET || `bench-secret-${'s'.repeat(32)}`;
const REDIRECT_URI = 'https://ror.esante-bench.fr/callback';
const SCOPE = 'openid profile email establishments roles national_id';
const ACR = 'urn:enrs:acr:pwd-otp-email';
const AMR = ['pwd', 'otp', 'mca'];

// An unbounded in-memory adapter: oidc-provider's own MemoryAdapter is an LRU of 1,000
// entries, too small for the thousands of codes minted ahead of a run. Map lookups, as a
// Redis adapter would do with one round trip each.
const stores = new Map();
const grantMembers = new Map(); // grantId -> Set of "Model:id"
const sessionUids = new Map(); // uid -> session id
const grantable = new Set(['AccessToken', 'AuthorizationCode', 'RefreshToken']);

class MapAdapter {
  constructor(model) {
    this.model = model;
    if (!stores.has(model)) stores.set(model, new Map());
    this.store = stores.get(model);
  }

  async upsert(id, payload, expiresIn) {
    this.store.set(id, { ...payload, expiresAt: expiresIn ? Date.now() + expiresIn * 1000 : undefined });
    if (this.model === 'Session') sessionUids.set(payload.uid, id);
    if (grantable.has(this.model) && payload.grantId) {
      if (!grantMembers.has(payload.grantId)) grantMembers.set(payload.grantId, new Set());
      grantMembers.get(payload.grantId).add(`${this.model}:${id}`);
    }
  }

  async find(id) {
    const stored = this.store.get(id);
    if (!stored) return undefined;
    if (stored.expiresAt && stored.expiresAt < Date.now()) {
      this.store.delete(id);
      return undefined;
    }
    const { expiresAt, ...payload } = stored;
    return payload;
  }

  async findByUid(uid) {
    const id = sessionUids.get(uid);
    return id === undefined ? undefined : this.find(id);
  }

  async findByUserCode() {
    return undefined;
  }

  async consume(id) {
    const stored = this.store.get(id);
    if (stored) stored.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    const stored = this.store.get(id);
    this.store.delete(id);
    if (stored?.uid) sessionUids.delete(stored.uid);
  }

  async revokeByGrantId(grantId) {
    for (const member of grantMembers.get(grantId) || []) {
      const [model, id] = member.split(':');
      stores.get(model)?.delete(id);
    }
    grantMembers.delete(grantId);
  }
}

// The same person as the portal bench's user, with the same claims per scope.
const ACCOUNT_ID = 'f3c1b2a4d5e6f708192a3b4c5d6e7f80';
const USER_CLAIMS = {
  sub: ACCOUNT_ID,
  given_name: 'Nathalie',
  family_name: 'DUPONT',
  name: 'Nathalie DUPONT',
  preferred_username: 'nathalie.dupont',
  profession: { code: '10', label: 'Médecin' },
  email: 'nathalie.dupont@esante-bench.fr',
  email_verified: true,
  national_id: '10108825463',
  national_id_type: 'rpps',
  establishments: [{
    finess: '280503848', name: 'AIRBP IRC DREUX', service: 'Non précisé', function: 'Médecin',
  }],
  roles: [{ role: 'ror_referent_offre', finess: '280503848' }],
};

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: `rs256-bench-${randomBytes(4).toString('hex')}`, alg: 'RS256', use: 'sig' };

const provider = new Provider(issuer, {
  adapter: MapAdapter,
  clients: [{
    client_id: CLIENT_ID,
    client_secret: CLIENT_SECRET,
    redirect_uris: [REDIRECT_URI],
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
    id_token_signed_response_alg: 'RS256',
  }],
  jwks: { keys: [signingKey] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  scopes: ['openid', 'offline_access', 'profile', 'email', 'establishments', 'roles', 'national_id'],
  claims: {
    // As in the portal's ID tokens: how and when the user logged in, always.
    openid: ['sub', 'acr', 'amr', 'auth_time', 'sid'],
    profile: ['given_name', 'family_name', 'name', 'preferred_username', 'profession'],
    email: ['email', 'email_verified'],
    establishments: ['establishments'],
    roles: ['roles'],
    national_id: ['national_id', 'national_id_type'],
  },
  acrValues: [ACR],
  // The portal puts the scope's claims in the ID token as well as in userinfo.
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  // The portal issues a refresh token with every code and rotates it at every use.
  issueRefreshToken: async () => true,
  rotateRefreshToken: true,
  // Tokens live as long as the login session, as the portal's do.
  expiresWithSession: async () => true,
  ttl: {
    AccessToken: 300, AuthorizationCode: 60, IdToken: 300, RefreshToken: 43200, Grant: 43200, Session: 43200,
  },
  features: {
    devInteractions: { enabled: false },
    revocation: { enabled: true },
    introspection: { enabled: true },
  },
  async findAccount(ctx, sub) {
    if (sub !== ACCOUNT_ID) return undefined;
    return { accountId: sub, claims: async () => ({ ...USER_CLAIMS }) };
  },
});
provider.on('server_error', (ctx, error) => console.error('server_error', error));

const client = await provider.Client.find(CLIENT_ID);

async function mintCode() {
  const authTime = Math.floor(Date.now() / 1000);
  const session = new provider.Session({
    jti: randomUUID(), uid: randomBytes(16).toString('base64url'), accountId: ACCOUNT_ID, loginTs: authTime,
    amr: AMR, acr: ACR,
  });
  const grant = new provider.Grant({ accountId: ACCOUNT_ID, clientId: CLIENT_ID });
  grant.addOIDCScope(SCOPE);
  const grantId = await grant.save();
  const sid = session.sidFor(CLIENT_ID) || randomBytes(16).toString('base64url');
  session.sidFor(CLIENT_ID, sid);
  session.grantIdFor(CLIENT_ID, grantId);
  await session.save(43200);
  const verifier = randomBytes(48).toString('base64url');
  const code = new provider.AuthorizationCode({
    accountId: ACCOUNT_ID, acr: ACR, amr: AMR, authTime, client, grantId, redirectUri: REDIRECT_URI, scope: SCOPE,
    nonce: randomBytes(8).toString('hex'), sessionUid: session.uid, sid, expiresWithSession: true,
    codeChallenge: createHash('sha256').update(verifier).digest('base64url'), codeChallengeMethod: 'S256',
  });
  return { code: await code.save(), code_verifier: verifier };
}

const admin = http.createServer(async (req, res) => {
  const url = new URL(req.url, 'http://127.0.0.1');
  if (req.method !== 'POST' || url.pathname !== '/codes') {
    res.writeHead(404).end();
    return;
  }
  const n = Math.min(Number(url.searchParams.get('n') || 1), 100000);
  const codes = [];
  for (let i = 0; i < n; i += 1) codes.push(await mintCode());
  res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(codes));
});

http.createServer(provider.callback()).listen(port, '127.0.0.1', () => {
  admin.listen(adminPort, '127.0.0.1', () => {
    console.log(JSON.stringify({
      ready: true, issuer, token_endpoint: `${issuer}/token`, client_id: CLIENT_ID, redirect_uri: REDIRECT_URI,
      node: process.version,
    }));
  });
});
