// A real OpenID Provider for the single sign-on tests: node-oidc-provider with one confidential
// client (authorization code + PKCE), accounts and their groups from OIDC_ACCOUNTS, its
// development login and consent pages, and a fresh RSA signing key per start.
//
//   OIDC_PROVIDER_MODULE=.../oidc-provider/lib/index.js PORT=... OIDC_CLIENT_SECRET=...
//   OIDC_REDIRECT_URI=... OIDC_ACCOUNTS='{"alice": {"email": ...}}' node provider.mjs
import { generateKeyPairSync, randomUUID } from "node:crypto";
import { pathToFileURL } from "node:url";

const { default: Provider } = await import(pathToFileURL(process.env.OIDC_PROVIDER_MODULE).href);
const port = Number(process.env.PORT);
const issuer = `http://127.0.0.1:${port}`;
const accounts = JSON.parse(process.env.OIDC_ACCOUNTS || "{}");

const key = generateKeyPairSync("rsa", { modulusLength: 2048 }).privateKey.export({ format: "jwk" });
key.kid = process.env.OIDC_KEY_ID || randomUUID();
key.use = "sig";
key.alg = "RS256";

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: "parley",
      client_secret: process.env.OIDC_CLIENT_SECRET,
      redirect_uris: process.env.OIDC_REDIRECT_URI.split(","),
      response_types: ["code"],
      grant_types: ["authorization_code"],
      token_endpoint_auth_method: "client_secret_basic",
    },
  ],
  pkce: { required: () => true },
  jwks: { keys: [key] },
  cookies: { keys: [randomUUID()] },
  scopes: ["openid", "email", "profile", "groups"],
  claims: {
    openid: ["sub"],
    email: ["email", "email_verified"],
    profile: ["name"],
    groups: ["groups"],
  },
  conformIdTokenClaims: false, // the ID token carries the claims (email, groups) itself
  findAccount: async (_ctx, sub) => {
    const account = accounts[sub];
    if (!account) return undefined;
    return { accountId: sub, claims: async () => ({ sub, ...account }) };
  },
});

provider.listen(port, "127.0.0.1", () => console.log(`oidc-provider listening on ${issuer}`));
