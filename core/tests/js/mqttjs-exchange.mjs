// MQTT.js over WebSocket against a real bridge: subscribe to a filter,
// print "subscribed", publish one message, print every message received as
// a JSON line, and exit 0 once `expect` distinct topics have arrived.
// Usage: node mqttjs-exchange.mjs <ws-url> <filter> <publish-topic> <payload> <expect>
import mqtt from 'mqtt';

const [url, filter, topic, payload, expect] = process.argv.slice(2);
const seen = new Set();
let done = false;
const client = mqtt.connect(url, { protocolVersion: 4, keepalive: 30, reconnectPeriod: 0, connectTimeout: 5000 });
const fail = (why) => { console.error(`mqttjs: ${why}`); process.exit(1); };
setTimeout(() => fail(`timed out with ${[...seen].join(', ') || 'nothing'}`), 15000).unref();

// Once every message has arrived the outcome is decided: the broker may
// close the socket as soon as it reads DISCONNECT, before the client has
// finished closing its side, which is not a failure.
client.on('error', (e) => (done ? process.exit(0) : fail(`error: ${e.message}`)));
client.on('connect', () => {
  client.subscribe(filter, { qos: 1 }, (err) => {
    if (err) fail(`subscribe failed: ${err.message}`);
    console.log('subscribed');
    client.publish(topic, payload, { qos: 1 }, (e) => e && fail(`publish failed: ${e.message}`));
  });
});
client.on('message', (t, message) => {
  console.log(JSON.stringify({ topic: t, payload: message.toString() }));
  seen.add(t);
  if (seen.size >= Number(expect) && !done) {
    done = true;
    client.end(false, () => process.exit(0));
  }
});
