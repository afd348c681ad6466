// A stock pusher-js client for the Pusher endpoint tests: connects with the options a
// Laravel Echo app would use, subscribes to the channels given, and prints what it
// receives as JSON lines on stdout. Usage: node pusher_client.js '<json options>'
//   {"host", "port", "key", "channels": [...], "authEndpoint"?, "apiKey"?, "backend"?,
//    "signin"?, "userAuthEndpoint"?, "userData"? (with backend: the user it signs, an object)}
// It runs until killed; "unsubscribe NAME" or "disconnect" on stdin act on the client.
"use strict";
const Pusher = require("pusher-js");

const opts = JSON.parse(process.argv[2]);
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

const authEndpoint = opts.authEndpoint || `http://${opts.host}:${opts.port}/broadcasting/auth`;
// With `backend` ({appId, secret, encryptionMasterKeyBase64?}), the app's own private
// channels are signed as a Laravel backend would, with the official server SDK; game
// channels still go to btsguru's endpoint with the API key.
const backend = opts.backend && new (require("pusher"))({
  appId: opts.backend.appId, key: opts.key, secret: opts.backend.secret,
  ...(opts.backend.encryptionMasterKeyBase64
    ? { encryptionMasterKeyBase64: opts.backend.encryptionMasterKeyBase64 } : {}),
});
const isGame = (name) => /^(private-|presence-)?(encrypted-)?(cache-)?sports\./.test(name);

const pusher = new Pusher(opts.key, {
  wsHost: opts.host,
  wsPort: opts.port,
  forceTLS: false,
  enabledTransports: ["ws"],
  disableStats: true,
  cluster: "mt1",
  nacl: require("tweetnacl"),  // for private-encrypted-* channels
  // pusher.signin(): `userAuthEndpoint` (btsguru's, with the API key) or, with
  // `backend`, the app's own backend signing user_data it chose
  userAuthentication: backend && opts.userData ? {
    customHandler: ({ socketId }, callback) =>
      callback(null, backend.authenticateUser(socketId, opts.userData)),
  } : {
    endpoint: opts.userAuthEndpoint || `http://${opts.host}:${opts.port}/v1/realtime/user-auth`,
    transport: "ajax",
    headers: opts.apiKey ? { "X-API-Key": opts.apiKey } : {},
  },
  channelAuthorization: backend ? {
    customHandler: ({ socketId, channelName }, callback) => {
      if (!isGame(channelName)) {
        callback(null, backend.authorizeChannel(socketId, channelName));
        return;
      }
      fetch(authEndpoint, {
        method: "POST",
        headers: { "Content-Type": "application/x-www-form-urlencoded",
                   ...(opts.apiKey ? { "X-API-Key": opts.apiKey } : {}) },
        body: new URLSearchParams({ socket_id: socketId, channel_name: channelName }),
      }).then(async (r) => r.ok ? callback(null, await r.json())
                                : callback(new Error(`auth ${r.status}: ${await r.text()}`), null),
              (e) => callback(e, null));
    },
  } : {
    endpoint: authEndpoint,
    transport: "ajax",
    headers: opts.apiKey ? { "X-API-Key": opts.apiKey } : {},
  },
});

pusher.connection.bind("state_change", (s) => out({ type: "state", state: s.current }));
// the protocol messages a test may wait on (sign-in, errors, internal subscriptions)
pusher.connection.bind("message", (m) => {
  if (m.event === "pusher:signin_success" || m.event === "pusher:error"
      || (m.event === "pusher_internal:subscription_succeeded" && m.channel.startsWith("#")))
    out({ type: "message", event: m.event, channel: m.channel, data: m.data });
});
if (opts.signin) {
  pusher.user.bind_global((event, data) => {
    if (!event.startsWith("pusher")) out({ type: "user_event", event, data });
  });
  pusher.signin();
}
pusher.connection.bind("connected", () =>
  out({ type: "connected", socket_id: pusher.connection.socket_id }));
pusher.connection.bind("error", (e) => out({ type: "error", error: e && (e.data || e.error || String(e)) }));

for (const name of opts.channels) {
  const channel = pusher.subscribe(name);
  channel.bind("pusher:subscription_succeeded", (data) => {
    const members = name.startsWith("presence-") && channel.members
      ? Object.keys(channel.members.members).sort() : undefined;
    out({ type: "subscribed", channel: name, members, me: channel.members && channel.members.me });
  });
  channel.bind("pusher:subscription_error", (err) => out({ type: "subscription_error", channel: name, error: err }));
  channel.bind("pusher:member_added", (m) => out({ type: "member_added", channel: name, id: m.id, info: m.info }));
  channel.bind("pusher:member_removed", (m) => out({ type: "member_removed", channel: name, id: m.id }));
  channel.bind("pusher:cache_miss", () => out({ type: "cache_miss", channel: name }));
  channel.bind_global((event, data) => {
    if (event.startsWith("pusher:") || event.startsWith("pusher_internal:")) return;
    out({ type: "event", channel: name, event, data });
  });
}

let buffer = "";
process.stdin.on("data", (chunk) => {
  buffer += chunk;
  let at;
  while ((at = buffer.indexOf("\n")) >= 0) {
    const line = buffer.slice(0, at).trim();
    buffer = buffer.slice(at + 1);
    if (line === "disconnect") { pusher.disconnect(); }
    else if (line === "connect") { pusher.connect(); }
    else if (line.startsWith("unsubscribe ")) { pusher.unsubscribe(line.slice(12)); }
    else if (line.startsWith("trigger ")) {
      const [, name, event, json] = line.match(/^trigger (\S+) (\S+) (.*)$/);
      out({ type: "triggered", ok: pusher.channel(name).trigger(event, JSON.parse(json)) });
    }
  }
});
process.stdin.on("end", () => { pusher.disconnect(); process.exit(0); });
