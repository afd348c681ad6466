// Laravel Echo 2 (with pusher-js and tweetnacl), unmodified, configured as a Laravel app's
// resources/js/echo.js would be for Reverb, for the Pusher endpoint tests.
// Usage: node echo_client.mjs '<json options>'
//   {"host", "port", "key", "apiKey", "channel"?, "encrypted"? (a name without its
//    private-encrypted- prefix), "events": [...] (listened to on both), "signin"?}
// Prints one JSON line per thing it receives; runs until killed.
import Echo from "laravel-echo";
import Pusher from "pusher-js";
import nacl from "tweetnacl";

const opts = JSON.parse(process.argv[2]);
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const base = `http://${opts.host}:${opts.port}`;

const echo = new Echo({
  broadcaster: "reverb",
  key: opts.key,
  wsHost: opts.host,
  wsPort: opts.port,
  wssPort: opts.port,
  forceTLS: false,
  enabledTransports: ["ws", "wss"],
  Pusher,
  nacl,
  authEndpoint: `${base}/broadcasting/auth`,
  auth: { headers: { "X-API-Key": opts.apiKey } },
  userAuthentication: { endpoint: `${base}/v1/realtime/user-auth`,
                        headers: { "X-API-Key": opts.apiKey } },
});

echo.connector.pusher.connection.bind("connected", () => out({ type: "connected" }));
const channels = [];
if (opts.channel) channels.push(["channel", echo.channel(opts.channel)]);
if (opts.encrypted) channels.push(["encrypted", echo.encryptedPrivate(opts.encrypted)]);
for (const [kind, channel] of channels) {
  channel.subscribed(() => out({ type: "subscribed", kind }));
  channel.error((e) => out({ type: "error", kind, error: e }));
  for (const event of opts.events || []) {
    channel.listen(`.${event}`, (data) => out({ type: "event", kind, event, data }));
  }
}
if (opts.signin) {
  echo.connector.pusher.user.bind_global((event, data) => {
    if (!event.startsWith("pusher")) out({ type: "user_event", event, data });
  });
  echo.connector.signin();
}
