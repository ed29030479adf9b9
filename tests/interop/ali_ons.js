'use strict';
// Interop check with ali-ons (a pure-JavaScript RocketMQ remoting client from npm):
// produce COUNT messages with tags and keys to TOPIC through the name server NAMESRV, then
// consume them in clustering mode as GROUP. Prints one JSON line per event:
//   {"sent": {...}} for each SEND_OK, {"got": {...}} for each consumed message, {"done": n}.
// Usage: node ali_ons.js NAMESRV TOPIC GROUP COUNT
const { Producer, Consumer, Message } = require('ali-ons');

const [nameSrv, topic, group, countArg] = process.argv.slice(2);
const count = Number(countArg || 100);
// ali-ons asserts an HTTP client, used only to look name servers up from an ONS address.
const httpclient = { request() { throw new Error('no HTTP: nameSrv is given'); } };
const common = { httpclient, nameSrv, accessKeyId: 'none', accessKeySecret: 'none' };
const quietLogger = { info() {}, warn() {}, debug() {}, error(e) { console.error(String(e && e.stack || e)); } };

function line(o) { process.stdout.write(JSON.stringify(o) + '\n'); }

async function main() {
  // Separate client instances: a shared one would route the consumer's errors to the
  // producer after it is closed.
  const producer = new Producer({ ...common, instanceName: `p${process.pid}`, producerGroup: `${group}_producer`, logger: quietLogger });
  producer.on('error', e => console.error(String(e && e.message || e)));
  await producer.ready();
  for (let i = 0; i < count; i++) {
    const tag = i % 2 === 0 ? 'TagA' : 'TagB';
    const msg = new Message(topic, tag, Buffer.from(`interop body ${i}`));
    msg.keys = [ `key-${i}` ];
    const r = await producer.send(msg);
    if (r.sendStatus !== 'SEND_OK') throw new Error(`send ${i}: ${r.sendStatus}`);
    line({ sent: { i, tag, key: `key-${i}`, msgId: r.msgId, queueId: r.messageQueue.queueId, queueOffset: r.queueOffset } });
  }
  await producer.close();

  const seen = new Set();
  const consumer = new Consumer({ ...common, instanceName: `c${process.pid}`, consumerGroup: group, logger: quietLogger, rebalanceInterval: 1000 });
  // The retry topic %RETRY%<group> gets a route only after the first heartbeat creates it:
  // route errors before that are transient, and the client retries.
  consumer.on('error', e => console.error(String(e && e.message || e)));
  const finished = new Promise(resolve => {
    consumer.subscribe(topic, '*', async msg => {
      const body = msg.body.toString();
      line({ got: { body, tags: msg.tags, keys: msg.keys, msgId: msg.msgId } });
      seen.add(body);
      if (seen.size >= count) resolve();
    });
  });
  await consumer.ready();
  const timeout = new Promise((_, reject) => setTimeout(() => reject(new Error(`timeout: ${seen.size}/${count} consumed`)), 60000));
  await Promise.race([ finished, timeout ]);
  await consumer.close();
  line({ done: seen.size });
}

main().then(() => process.exit(0), e => { console.error(String(e && e.stack || e)); process.exit(1); });
