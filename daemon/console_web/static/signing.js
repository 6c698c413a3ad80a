// Signed commands (compact JWS, Ed25519, WebCrypto) and the per-user key store.
//
// The private key is a non-extractable CryptoKey kept in IndexedDB: the page
// can sign with it but never read it out. Two ways to get one: import the
// private JWK file `igrtctl keygen` writes (USER.key), or generate a key pair
// here and hand the public JWK to `igrtctl users add --public-key`.

const DB_NAME = "igrt-console";
const STORE = "keys";
const HEADER = { alg: "Ed25519", typ: "igrt-cmd+jws" };
export const LIFETIME_S = 10;

const enc = new TextEncoder();

export function b64url(bytes) {
  let s = "";
  const b = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  for (let i = 0; i < b.length; i += 0x8000) {
    s += String.fromCharCode.apply(null, b.subarray(i, i + 0x8000));
  }
  return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

export function randomId(bytes = 18) {
  return b64url(crypto.getRandomValues(new Uint8Array(bytes)));
}

export function ed25519Supported() {
  return !!(globalThis.crypto && crypto.subtle);
}

// ---------------------------------------------------------------- IndexedDB

function openDb() {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(DB_NAME, 1);
    req.onupgradeneeded = () => {
      req.result.createObjectStore(STORE, { keyPath: "user" });
    };
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error || new Error("IndexedDB not available"));
  });
}

async function withStore(mode, fn) {
  const db = await openDb();
  try {
    return await new Promise((resolve, reject) => {
      const tx = db.transaction(STORE, mode);
      const req = fn(tx.objectStore(STORE));
      let value;
      if (req) req.onsuccess = () => { value = req.result; };
      tx.oncomplete = () => resolve(value);
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error || new Error("IndexedDB transaction aborted"));
    });
  } finally {
    db.close();
  }
}

// {user, privateKey (CryptoKey), publicJwk, source, created} or null.
export async function loadKey(user) {
  if (!user) return null;
  const rec = await withStore("readonly", (s) => s.get(user));
  return rec && rec.privateKey ? rec : null;
}

async function saveKey(rec) {
  await withStore("readwrite", (s) => s.put(rec));
  return rec;
}

export async function forgetKey(user) {
  await withStore("readwrite", (s) => s.delete(user));
}

// ---------------------------------------------------------------- keys

function publicOf(jwk) {
  return { crv: "Ed25519", kty: "OKP", x: jwk.x };
}

const B64URL = /^[A-Za-z0-9_-]+$/;

// Import the private JWK text of `igrtctl keygen` (USER.key) for `user`.
export async function importPrivateJwk(user, text) {
  let jwk;
  try {
    jwk = JSON.parse(text);
  } catch {
    throw new Error("the file is not JSON (expected the USER.key file of igrtctl keygen)");
  }
  if (!jwk || typeof jwk !== "object" || jwk.kty !== "OKP" || jwk.crv !== "Ed25519") {
    throw new Error("not an Ed25519 JWK (kty OKP, crv Ed25519)");
  }
  if (typeof jwk.d !== "string") {
    throw new Error("this is a public key; signing needs the private key file (USER.key)");
  }
  if (typeof jwk.x !== "string" || !B64URL.test(jwk.x) || !B64URL.test(jwk.d)) {
    throw new Error("the key's x or d is not base64url");
  }
  const privateKey = await crypto.subtle.importKey(
    "jwk", { kty: "OKP", crv: "Ed25519", x: jwk.x, d: jwk.d }, { name: "Ed25519" },
    false, ["sign"]);
  const publicJwk = publicOf(jwk);
  // The key must sign something its public half verifies: a mismatched x and d
  // would only show up as bad_signature refusals later.
  const publicKey = await crypto.subtle.importKey("jwk", publicJwk, { name: "Ed25519" }, true,
    ["verify"]);
  const probe = enc.encode("igrt key check");
  const sig = await crypto.subtle.sign({ name: "Ed25519" }, privateKey, probe);
  if (!(await crypto.subtle.verify({ name: "Ed25519" }, publicKey, sig, probe))) {
    throw new Error("the key's private and public halves do not match");
  }
  return saveKey({ user, privateKey, publicJwk, source: "imported", created: Date.now() / 1000 });
}

// Generate a key pair in the browser; the private half never leaves it.
export async function generateKey(user) {
  const pair = await crypto.subtle.generateKey({ name: "Ed25519" }, false, ["sign", "verify"]);
  const jwk = await crypto.subtle.exportKey("jwk", pair.publicKey);
  return saveKey({
    user, privateKey: pair.privateKey, publicJwk: publicOf(jwk), source: "generated",
    created: Date.now() / 1000,
  });
}

export function publicJwkText(rec) {
  return JSON.stringify(rec.publicJwk, Object.keys(rec.publicJwk).sort()) + "\n";
}

// ---------------------------------------------------------------- JWS

// A number that is not finite would become null in JSON and be refused as
// bad_args; refuse it here, before anything is signed or sent.
function checkFinite(value, path) {
  if (typeof value === "number" && !Number.isFinite(value)) {
    throw new Error(`${path} is not a finite number`);
  }
  if (value && typeof value === "object") {
    for (const [k, v] of Object.entries(value)) checkFinite(v, `${path}.${k}`);
  }
}

// The claims of one command (docs/console-api.md "Commands").
export function claims({ cmd, args, user, room, replyTo, now }) {
  const iat = Math.round((now ?? Date.now() / 1000) * 1000) / 1000;
  return {
    v: 1, cmd, args: args || {}, sub: user, aud: room, iat, exp: iat + LIFETIME_S,
    jti: randomId(18), reply_to: replyTo,
  };
}

export async function signClaims(privateKey, body) {
  checkFinite(body.args, "args");
  const head = b64url(enc.encode(JSON.stringify(HEADER)));
  const payload = b64url(enc.encode(JSON.stringify(body)));
  const input = `${head}.${payload}`;
  const sig = await crypto.subtle.sign({ name: "Ed25519" }, privateKey, enc.encode(input));
  return `${input}.${b64url(sig)}`;
}
