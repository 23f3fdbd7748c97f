// Compiled by test/types.test.js with `tsc --module nodenext --moduleResolution nodenext`: a
// CommonJS module imports the package by name (resolved through package.json "exports", as a
// self-reference), with `import = require()`, as the default export and as the named export
// `createStore`. It is never run.
import session = require("express-session");
import expressSessionMulticast = require("express-session-multicast");
import createStore, { createStore as named } from "express-session-multicast";

const FromRequire: expressSessionMulticast.MulticastStoreConstructor = expressSessionMulticast.createStore(session);
const FromDefault: expressSessionMulticast.MulticastStoreConstructor = createStore(session);
const FromNamed: expressSessionMulticast.MulticastStoreConstructor = named(session);
const store: expressSessionMulticast.MulticastStore = new FromNamed({ multicast: false });
new FromRequire({ cluster: "shop" });
new FromDefault({ cluster: "shop" });

async function roundTrip(): Promise<string | undefined> {
    await store.set("sid", { cookie: new session.Cookie() });
    const sess: session.SessionData | null = await store.get("sid");
    await store.close();
    return sess?.cookie.path;
}

// @ts-expect-error the named factory is typed too: multicastPort is a number
new FromNamed({ multicastPort: "4000" });

console.log(roundTrip);
