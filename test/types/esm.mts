// Compiled by test/types.test.js with `tsc --module nodenext --moduleResolution nodenext`: an ES
// module imports the package by name (resolved through package.json "exports", as a
// self-reference), as the default export and as the named export `createStore`. It is never run.
import session from "express-session";
import createStore, { createStore as named } from "express-session-multicast";
import type { MulticastStore, MulticastStoreConstructor, MulticastStoreOptions } from "express-session-multicast";

const FromDefault: MulticastStoreConstructor = createStore(session);
const FromNamed: MulticastStoreConstructor = named(session);
const sameFactory: typeof createStore = named;
const options: MulticastStoreOptions = { multicast: false };
const store: MulticastStore = new FromNamed(options);
new FromDefault({ cluster: "shop" });

async function roundTrip(): Promise<string | undefined> {
    await store.set("sid", { cookie: new session.Cookie() });
    const sess: session.SessionData | null = await store.get("sid");
    await store.close();
    return sess?.cookie.path;
}

// @ts-expect-error the named factory is typed too: multicastPort is a number
new FromNamed({ multicastPort: "4000" });

console.log(sameFactory, roundTrip);
