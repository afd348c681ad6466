// The official `pusher` server SDK (what a Laravel or Node backend uses), unmodified, for
// the Pusher endpoint tests. Usage: node pusher_server.js '<json options>' '<json command>'
//   options: {"appId", "key", "secret", "host", "port", "encryptionMasterKeyBase64"?}
//   commands (the answer is one JSON line on stdout):
//     {"op": "trigger", "channels": [...], "event", "data", "socketId"?} -> {status, body}
//     {"op": "sendToUser", "userId", "event", "data"} -> {status, body}
//     {"op": "terminate", "userId"} -> {status, body}
//     {"op": "authorizeChannel", "socketId", "channel", "presenceData"?} -> the auth object
//     {"op": "authenticateUser", "socketId", "userData"} -> the auth object
//     {"op": "webhook", "headers", "body"} -> {valid, events}
"use strict";
const Pusher = require("pusher");

const opts = JSON.parse(process.argv[2]);
const command = JSON.parse(process.argv[3]);
const pusher = new Pusher({
  appId: opts.appId, key: opts.key, secret: opts.secret,
  host: opts.host, port: String(opts.port), useTLS: false,
  ...(opts.encryptionMasterKeyBase64 ? { encryptionMasterKeyBase64: opts.encryptionMasterKeyBase64 } : {}),
});

async function answer(response) {
  return { status: response.status, body: await response.text() };
}

async function run() {
  switch (command.op) {
    case "trigger":
      return answer(await pusher.trigger(command.channels, command.event, command.data,
        command.socketId ? { socket_id: command.socketId } : {}));
    case "sendToUser":
      return answer(await pusher.sendToUser(command.userId, command.event, command.data));
    case "terminate":
      return answer(await pusher.terminateUserConnections(command.userId));
    case "authorizeChannel":
      return pusher.authorizeChannel(command.socketId, command.channel, command.presenceData);
    case "authenticateUser":
      return pusher.authenticateUser(command.socketId, command.userData);
    case "webhook": {
      const hook = pusher.webhook({ headers: command.headers, rawBody: command.body });
      const valid = hook.isValid();
      return { valid, events: valid ? hook.getEvents() : null };
    }
    default:
      throw new Error(`unknown op ${command.op}`);
  }
}

run().then(
  (result) => { process.stdout.write(JSON.stringify(result) + "\n"); },
  (error) => {
    const status = error && error.status;
    if (status) {  // a RequestError: the server answered non-2xx
      process.stdout.write(JSON.stringify({ status, body: error.body }) + "\n");
    } else {
      process.stderr.write(String(error && error.stack || error) + "\n");
      process.exit(1);
    }
  });
