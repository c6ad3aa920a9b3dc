// A Pro Santé Connect stand-in for tests and the demo: panva's oidc-provider configured
// the way PSC behaves (SPEC §5). Loopback only, identities from identities.json.
//
//   issuer          http://127.0.0.1:<port>/auth/realms/esante-wallet
//   discovery       {issuer}/.well-known/openid-configuration and, as PSC names it,
//                   {issuer}/.well-known/wallet-openid-configuration (same JSON)
//   login page      http://localhost:<wallet-port>/auth (another host name, like PSC's wallet)
//   endpoints       {issuer}/protocol/openid-connect/{token,userinfo,certs,logout} (Keycloak's paths)
//
// Options (or environment): --port (PSC_SANDBOX_PORT, 5300), --wallet-port
// (PSC_SANDBOX_WALLET_PORT, port + 1), --client-id, --client-secret, --redirect-uri and
// --post-logout-redirect-uri (repeatable; PSC_SANDBOX_REDIRECT_URIS and
// PSC_SANDBOX_POST_LOGOUT_REDIRECT_URIS, space-separated), --userinfo json|jwt (every
// identity), --id-token-alg RS256|HS256. See README.md.
import { generateKeyPairSync, randomBytes, randomUUID, sign } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { parseArgs } from 'node:util';

import Provider, { interactionPolicy } from 'oidc-provider';

const REALM = '/auth/realms/esante-wallet';
const OIDC = '/protocol/openid-connect';
const WALLET_AUTH = '/auth';
const ALIAS = '/.well-known/wallet-openid-configuration';

const { values: opts } = parseArgs({
  options: {
    port: { type: 'string', default: process.env.PSC_SANDBOX_PORT || '5300' },
    'wallet-port': { type: 'string', default: process.env.PSC_SANDBOX_WALLET_PORT },
    'client-id': { type: 'string', default: process.env.PSC_SANDBOX_CLIENT_ID || 'enrs-portal' },
    'client-secret': {
      type: 'string',
      default: process.env.PSC_SANDBOX_CLIENT_SECRET || 'psc-sandbox-secret-not-for-production',
    },
    'redirect-uri': { type: 'string', multiple: true },
    'post-logout-redirect-uri': { type: 'string', multiple: true },
    userinfo: { type: 'string', default: process.env.PSC_SANDBOX_USERINFO || 'json' },
    'id-token-alg': { type: 'string', default: process.env.PSC_SANDBOX_ID_TOKEN_ALG || 'RS256' },
  },
});
const words = (value) => (value || '').split(/\s+/).filter(Boolean);
const port = Number(opts.port);
const walletPort = Number(opts['wallet-port'] || port + 1);
const redirectUris = opts['redirect-uri']
  || words(process.env.PSC_SANDBOX_REDIRECT_URIS || 'http://127.0.0.1:5000/psc/callback');
const postLogoutUris = opts['post-logout-redirect-uri']
  || words(process.env.PSC_SANDBOX_POST_LOGOUT_REDIRECT_URIS || 'http://127.0.0.1:5000/psc/logged-out');
if (!['json', 'jwt'].includes(opts.userinfo)) throw new Error('--userinfo: json or jwt');
if (!['RS256', 'HS256'].includes(opts['id-token-alg'])) throw new Error('--id-token-alg: RS256 or HS256');

const issuer = `http://127.0.0.1:${port}${REALM}`;
const walletOrigin = `http://localhost:${walletPort}`;

// -- test identities -----------------------------------------------------------------------
// Each one: label, acr (null: the ID token carries none), optional userinfo ("jwt") and
// userinfo_sub (a userinfo "sub" other than the ID token's), and the claims PSC returns.
const identities = JSON.parse(readFileSync(new URL('./identities.json', import.meta.url), 'utf8'));
const bySub = new Map(Object.values(identities).map((identity) => [identity.claims.sub, identity]));
// scope_all releases every claim an identity has (PSC's single business scope).
const scopeAllClaims = [...new Set(Object.values(identities)
  .flatMap((identity) => Object.keys(identity.claims)).filter((name) => name !== 'sub'))];

// -- keys: a fresh RS256 key per run (the portal reads the JWKS) ------------------------------
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingJwk = { ...privateKey.export({ format: 'jwk' }), kid: randomUUID(), alg: 'RS256', use: 'sig' };

function signJwt(payload) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const input = `${part({ alg: 'RS256', typ: 'JWT', kid: signingJwk.kid })}.${part(payload)}`;
  return `${input}.${sign('sha256', Buffer.from(input), privateKey).toString('base64url')}`;
}

// -- pages ------------------------------------------------------------------------------------
const esc = (value) => String(value ?? '').replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function page(title, body) {
  return `<!DOCTYPE html>
<html lang="fr"><head><meta charset="utf-8"><title>${esc(title)} – Pro Santé Connect (bac à sable)</title>
<style>body{font-family:sans-serif;max-width:44rem;margin:2rem auto;padding:0 1rem}
label{display:block;margin:.4rem 0}button{margin:.8rem .5rem 0 0;padding:.4rem 1rem}</style></head>
<body><p><strong>Pro Santé Connect</strong> – bac à sable de test, aucune donnée réelle</p>
<h1>${esc(title)}</h1>
${body}
</body></html>`;
}

function loginPage(uid) {
  const choices = Object.entries(identities).map(([key, identity], index) => `<label>
  <input type="radio" name="login" value="${esc(key)}"${index === 0 ? ' checked' : ''}>
  <strong>${esc(key)}</strong> : ${esc(identity.label)}</label>`).join('\n');
  return page('Choisissez une identité de test', `
<form method="post" action="/interaction/${esc(uid)}/login">
<fieldset><legend>Identité de test</legend>
${choices}
</fieldset>
<button type="submit">Se connecter</button>
</form>
<form method="post" action="/interaction/${esc(uid)}/abort"><button type="submit">Annuler</button></form>`);
}

// -- the provider -----------------------------------------------------------------------------
// The identity is chosen at every authorization (no silent SSO): the portal's logout reaches
// the issuer's host, where the wallet host's session cookie never goes.
const policy = interactionPolicy.base();
policy.get('login').checks.add(new interactionPolicy.Check(
  'psc_sandbox_choose_identity',
  'choose a test identity',
  (ctx) => (ctx.oidc.result?.login ? interactionPolicy.Check.NO_NEED_TO_PROMPT
    : interactionPolicy.Check.REQUEST_PROMPT),
));

const configuration = {
  clients: [{
    client_id: opts['client-id'],
    client_secret: opts['client-secret'],
    redirect_uris: redirectUris,
    post_logout_redirect_uris: postLogoutUris,
    response_types: ['code'],
    grant_types: ['authorization_code'],
    // client_secret_post is accepted as well: oidc-provider takes both for this method.
    token_endpoint_auth_method: 'client_secret_basic',
    id_token_signed_response_alg: opts['id-token-alg'],
    // PSC always states the acr: without acr_values in the request, as if eidas1 were asked.
    default_acr_values: ['eidas1'],
  }],
  jwks: { keys: [signingJwk] },
  cookies: { keys: [randomBytes(32).toString('base64url')] },
  scopes: ['openid', 'scope_all'],
  claims: { acr: null, auth_time: null, iss: null, sid: null, openid: ['sub'], scope_all: scopeAllClaims },
  acrValues: ['eidas1', 'eidas2'],
  clientAuthMethods: ['client_secret_basic', 'client_secret_post'],
  responseTypes: ['code'],
  enabledJWA: { idTokenSigningAlgValues: ['RS256', 'HS256'] },
  routes: {
    authorization: `${OIDC}/auth`,
    token: `${OIDC}/token`,
    userinfo: `${OIDC}/userinfo`,
    jwks: `${OIDC}/certs`,
    end_session: `${OIDC}/logout`,
  },
  features: {
    devInteractions: { enabled: false },
    pushedAuthorizationRequests: { enabled: false },
    rpInitiatedLogout: {
      enabled: true,
      // Only shown when this host holds a session; it confirms itself (no extra click).
      async logoutSource(ctx, form) {
        ctx.body = page('Déconnexion', `${form.replace('</form>',
          '<input type="hidden" name="logout" value="yes"><button type="submit">Se déconnecter</button></form>')}
<script>document.forms[0].submit()</script>`);
      },
      async postLogoutSuccessSource(ctx) {
        ctx.body = page('Vous êtes déconnecté de Pro Santé Connect', '');
      },
    },
  },
  // The interaction pages (/interaction/<uid>) stay on the host the authorization came to.
  interactions: { policy },
  async findAccount(ctx, sub) {
    const identity = bySub.get(sub);
    if (!identity) return undefined;
    return { accountId: sub, claims: async () => structuredClone(identity.claims) };
  },
  // No consent screen: the registered client gets openid scope_all at once.
  async loadExistingGrant(ctx) {
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope('openid scope_all');
    await grant.save();
    return grant;
  },
  async renderError(ctx, out) {
    ctx.type = 'html';
    ctx.body = page('Erreur', Object.entries(out)
      .map(([key, value]) => `<p><strong>${esc(key)}</strong> : ${esc(value)}</p>`).join('\n'));
  },
  clientBasedCORS: () => false,
  ttl: { AccessToken: 600, AuthorizationCode: 60, IdToken: 600, Interaction: 900, Session: 3600, Grant: 3600 },
};

const provider = new Provider(issuer, configuration);

provider.use(async (ctx, next) => {
  await next();
  // PSC's login page lives on another host than its issuer.
  if (ctx.oidc?.route === 'discovery' && ctx.status === 200) {
    ctx.body.authorization_endpoint = `${walletOrigin}${WALLET_AUTH}`;
  }
  if (ctx.oidc?.route === 'userinfo' && ctx.status === 200 && ctx.body && typeof ctx.body === 'object') {
    const identity = bySub.get(ctx.oidc.account?.accountId);
    const claims = { ...ctx.body, ...(identity?.userinfo_sub ? { sub: identity.userinfo_sub } : {}) };
    if (opts.userinfo === 'jwt' || identity?.userinfo === 'jwt') {
      const now = Math.floor(Date.now() / 1000);
      ctx.body = signJwt({ ...claims, iss: issuer, aud: ctx.oidc.client.clientId, iat: now, exp: now + 600 });
      ctx.type = 'application/jwt; charset=utf-8';
    } else {
      ctx.body = claims;
    }
  }
});

// -- HTTP: the provider under the realm's path, the interaction pages on the wallet host ------
const app = provider.callback();

async function readForm(req) {
  let data = '';
  for await (const chunk of req) data += chunk;
  return Object.fromEntries(new URLSearchParams(data));
}

function send(res, status, html) {
  res.writeHead(status, { 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-store' });
  res.end(html);
}

async function interaction(req, res, uid, action) {
  let details;
  try {
    details = await provider.interactionDetails(req, res);
  } catch {
    return send(res, 400, page('Session expirée', '<p>Cette connexion a expiré : recommencez depuis le portail.</p>'));
  }
  if (details.uid !== uid) return send(res, 400, page('Erreur', '<p>Connexion inconnue.</p>'));
  if (req.method === 'GET' && !action) return send(res, 200, loginPage(uid));
  if (req.method !== 'POST') return send(res, 405, page('Erreur', '<p>Méthode non permise.</p>'));
  const form = await readForm(req);
  if (action === 'abort') {
    return provider.interactionFinished(req, res, {
      error: 'access_denied', error_description: "L'utilisateur a annulé la connexion",
    }, { mergeWithLastSubmission: false });
  }
  const identity = identities[form.login];
  if (action !== 'login' || !identity) return send(res, 400, loginPage(uid));
  const login = { accountId: identity.claims.sub, ...(identity.acr ? { acr: identity.acr } : {}) };
  return provider.interactionFinished(req, res, { login }, { mergeWithLastSubmission: false });
}

async function handle(req, res) {
  const url = new URL(req.url, 'http://sandbox');
  let path = url.pathname;
  const match = path.match(/^\/interaction\/([\w-]+)(?:\/(login|abort))?$/);
  if (match) return interaction(req, res, match[1], match[2]);
  if (path === WALLET_AUTH) path = `${REALM}${OIDC}/auth`;
  if (path === `${REALM}${ALIAS}`) path = `${REALM}/.well-known/openid-configuration`;
  if (!path.startsWith(`${REALM}/`)) return send(res, 404, page('Introuvable', ''));
  // oidc-provider derives its mount path from originalUrl minus url.
  req.originalUrl = path + url.search;
  req.url = path.slice(REALM.length) + url.search;
  return app(req, res);
}

function serve(listenPort, host) {
  return new Promise((resolve, reject) => {
    const server = http.createServer((req, res) => handle(req, res).catch((err) => {
      console.error(err);
      if (!res.headersSent) send(res, 500, page('Erreur', `<p>${esc(err.message)}</p>`));
    }));
    server.once('error', reject);
    server.listen(listenPort, host, () => resolve(server));
  });
}

await serve(port, '127.0.0.1');
await serve(walletPort, '127.0.0.1');
// "localhost" may resolve to ::1 first: answer there too when the machine has IPv6 loopback.
await serve(walletPort, '::1').catch(() => {});

const discovery = `${issuer}${ALIAS}`;
console.log(`Pro Santé Connect (bac à sable) : ${issuer}
  page de connexion : ${walletOrigin}${WALLET_AUTH}
  redirect_uris : ${redirectUris.join(' ')}
  post_logout_redirect_uris : ${postLogoutUris.join(' ')}

Variables du portail (à exporter avant « make run », dans un autre terminal) :
ENRS_PSC_DISCOVERY_URL=${discovery}
ENRS_PSC_CLIENT_ID=${opts['client-id']}
ENRS_PSC_CLIENT_SECRET=${opts['client-secret']}

Identités de test (champ « login » du formulaire) :
${Object.entries(identities).map(([key, identity]) => `  ${key.padEnd(11)} ${identity.claims.SubjectNameID.padEnd(16)} acr ${(identity.acr || 'aucun').padEnd(7)} ${identity.label}`).join('\n')}
`);

for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => process.exit(0));
