// A relying party built on panva's openid-client (OpenID Certified), driven by pytest.
//
// One JSON command per line on stdin, one JSON answer per line on stdout:
//   {"op": "discover", ...}  ->  {"ok": true, "result": ...}
//                            or  {"ok": false, "error": {"name", "code", "message", "error", "status", ...}}
// Everything an application checks (issuer, ID token signature against the JWKS and its
// alg, iss, aud, azp, exp, iat, nonce, auth_time against max_age, state, userinfo sub) is
// left to openid-client; at_hash, optional in the code flow and not checked by it, is
// computed here for pytest to compare. The Python side only plays the browser.
// Ops: discover, authorize, callback, userinfo, refresh, revoke, introspect, end_session.
import { createHash } from 'node:crypto'
import * as readline from 'node:readline'
import * as client from 'openid-client'

const configs = new Map() // name -> openid-client Configuration
const flows = new Map() // flow id -> { client, state, nonce, codeVerifier, maxAge }
let flowCount = 0

function authFor (method, secret) {
  switch (method) {
    case 'client_secret_basic': return client.ClientSecretBasic(secret)
    case 'client_secret_post': return client.ClientSecretPost(secret)
    case 'none': return client.None()
    default: throw new TypeError(`unknown client authentication ${method}`)
  }
}

function config (name) {
  const found = configs.get(name)
  if (!found) throw new TypeError(`no client configuration named ${name}: discover it first`)
  return found
}

// OIDC Core §3.1.3.8: at_hash is the left half of the SHA-256 of the access token (RS256,
// ES256). It is optional in the code flow, so openid-client does not check it: we do.
function atHash (accessToken) {
  const digest = createHash('sha256').update(accessToken, 'ascii').digest()
  return digest.subarray(0, digest.length / 2).toString('base64url')
}

function tokensOf (response) {
  const claims = response.claims()
  const idToken = response.id_token
  return {
    ...response,
    expires_in: response.expiresIn(),
    claims: claims ?? null,
    id_token_header: idToken ? JSON.parse(Buffer.from(idToken.split('.')[0], 'base64url')) : null,
    at_hash_of_access_token: atHash(response.access_token)
  }
}

const ops = {
  // Discovery (openid-client checks the issuer equals the URL it was given).
  async discover ({ name, issuer, client_id: clientId, client_secret: secret, auth = 'client_secret_basic',
    metadata = {}, clock_tolerance: tolerance }) {
    if (tolerance !== undefined) metadata = { ...metadata, [client.clockTolerance]: tolerance }
    const config = await client.discovery(new URL(issuer), clientId, metadata, authFor(auth, secret), {
      execute: [client.allowInsecureRequests] // http on loopback only: the portal under test
    })
    configs.set(name, config)
    return config.serverMetadata()
  },

  // The authorization URL with PKCE S256, state and nonce the RP keeps for the callback.
  async authorize ({ client: name, params = {}, max_age: maxAge }) {
    const codeVerifier = client.randomPKCECodeVerifier()
    const state = client.randomState()
    const nonce = client.randomNonce()
    const parameters = {
      scope: 'openid',
      ...params,
      code_challenge: await client.calculatePKCECodeChallenge(codeVerifier),
      code_challenge_method: 'S256',
      state,
      nonce
    }
    if (maxAge != null) parameters.max_age = String(maxAge)
    const url = client.buildAuthorizationUrl(config(name), parameters)
    const flow = String(++flowCount)
    flows.set(flow, { client: name, state, nonce, codeVerifier, maxAge })
    return { flow, url: url.href, state, nonce, code_verifier: codeVerifier }
  },

  // The callback: openid-client validates the response, exchanges the code and the ID token.
  // `checks` overrides what the RP remembered (a wrong nonce or verifier, say); `as` uses
  // another configuration of the same client (a wrong secret).
  async callback ({ flow, url, checks = {}, as, omit_verifier: omitVerifier = false }) {
    const remembered = flows.get(flow)
    if (!remembered) throw new TypeError(`unknown flow ${flow}`)
    const expected = {
      expectedState: remembered.state,
      expectedNonce: remembered.nonce,
      pkceCodeVerifier: omitVerifier ? undefined : remembered.codeVerifier,
      ...(remembered.maxAge != null ? { maxAge: remembered.maxAge } : {}),
      ...checks
    }
    const response = await client.authorizationCodeGrant(config(as ?? remembered.client), new URL(url), expected)
    return tokensOf(response)
  },

  async userinfo ({ client: name, access_token: accessToken, sub }) {
    return client.fetchUserInfo(config(name), accessToken, sub)
  },

  async refresh ({ client: name, refresh_token: refreshToken }) {
    return tokensOf(await client.refreshTokenGrant(config(name), refreshToken))
  },

  async revoke ({ client: name, token, hint }) {
    await client.tokenRevocation(config(name), token, hint ? { token_type_hint: hint } : {})
    return null
  },

  async introspect ({ client: name, token, hint }) {
    return client.tokenIntrospection(config(name), token, hint ? { token_type_hint: hint } : {})
  },

  async end_session ({ client: name, params = {} }) {
    return client.buildEndSessionUrl(config(name), params).href
  }
}

// What openid-client threw, for pytest: name, code and message; for an OAuth error answer
// `error`, `error_description` and `status` (from the body, or from the WWW-Authenticate
// challenge of a 401); `cause` is what oauth4webapi reported underneath (its message
// names the claim or parameter that failed a check).
function describe (err) {
  const described = { name: err?.name, code: err?.code, message: err?.message }
  for (const key of ['error', 'error_description', 'status']) {
    if (err?.[key] !== undefined) described[key] = err[key]
  }
  const cause = err?.cause
  if (err?.code === 'OAUTH_WWW_AUTHENTICATE_CHALLENGE' && Array.isArray(cause)) {
    described.challenges = cause
    const parameters = cause[0]?.parameters ?? {}
    for (const key of ['error', 'error_description']) {
      if (described[key] === undefined && parameters[key] !== undefined) described[key] = parameters[key]
    }
  } else if (cause instanceof Error) {
    described.cause = { name: cause.name, code: cause.code, message: cause.message }
  } else if (cause !== undefined) {
    try {
      described.cause = JSON.parse(JSON.stringify(cause))
    } catch {
      described.cause = String(cause)
    }
  }
  return described
}

const lines = readline.createInterface({ input: process.stdin, terminal: false })
// Commands run one at a time, in order: pytest waits for each answer anyway.
let queue = Promise.resolve()
lines.on('line', (line) => {
  queue = queue.then(async () => {
    let answer
    try {
      const { op, ...args } = JSON.parse(line)
      if (!Object.hasOwn(ops, op)) throw new TypeError(`unknown op ${op}`)
      answer = { ok: true, result: (await ops[op](args)) ?? null }
    } catch (err) {
      answer = { ok: false, error: describe(err) }
    }
    process.stdout.write(JSON.stringify(answer) + '\n')
  })
})
