// register.js provisions one device with the official Azure IoT Node.js
// device SDK (azure-iot-provisioning-device + -mqtt) and prints one JSON line:
//   {"ok": true, "registrationState": {...}}   on success
//   {"ok": false, "error": {"name", "message", ...}}   when the SDK reports an error
// The Go test (package interop) runs it with NODE_EXTRA_CA_CERTS naming the
// test server's CA. Input: one JSON argument:
//   {"transport": "mqtt" | "mqttws", "host": "localhost", "idScope": "...",
//    "registrationId": "...", "timeoutMs": 15000, "payload": {...}?,
//    "symmetricKey": b64?, "groupKey": b64? (the device key is derived here),
//    "certFile": path?, "keyFile": path?}
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const { ProvisioningDeviceClient } = require('azure-iot-provisioning-device');
const { Mqtt, MqttWs } = require('azure-iot-provisioning-device-mqtt');
const { SymmetricKeySecurityClient } = require('azure-iot-security-symmetric-key');
const { X509Security } = require('azure-iot-security-x509');

// deriveDeviceKey computes a group enrollment's device key as the Azure docs
// show: base64(HMAC-SHA256(base64decode(groupKey), registrationId)).
function deriveDeviceKey(groupKey, registrationId) {
  return crypto.createHmac('SHA256', Buffer.from(groupKey, 'base64'))
    .update(registrationId, 'utf8')
    .digest('base64');
}

function emit(obj, code) {
  process.stdout.write(JSON.stringify(obj) + '\n', () => process.exit(code));
}

function main() {
  const spec = JSON.parse(process.argv[2]);
  let security;
  if (spec.symmetricKey || spec.groupKey) {
    const key = spec.groupKey ? deriveDeviceKey(spec.groupKey, spec.registrationId) : spec.symmetricKey;
    security = new SymmetricKeySecurityClient(spec.registrationId, key);
  } else if (spec.certFile) {
    security = new X509Security(spec.registrationId, {
      cert: fs.readFileSync(spec.certFile, 'utf8'),
      key: fs.readFileSync(spec.keyFile, 'utf8'),
    });
  } else {
    throw new Error('no credential in the spec');
  }
  const transport = spec.transport === 'mqttws' ? new MqttWs() : new Mqtt();
  const client = ProvisioningDeviceClient.create(spec.host, spec.idScope, transport, security);
  if (spec.payload !== undefined) {
    client.setProvisioningPayload(spec.payload);
  }
  // The SDK's own timeout is 30 s per request and it retries status >= 429
  // without end: bound the whole run so that a server that never answers
  // fails the test instead of hanging it.
  const timer = setTimeout(() => {
    emit({ ok: false, error: { name: 'ScriptTimeout', message: 'no result within ' + spec.timeoutMs + ' ms' } }, 3);
  }, spec.timeoutMs || 15000);
  client.register((err, result) => {
    clearTimeout(timer);
    if (err) {
      emit({ ok: false, error: {
        name: err.name || err.constructor.name,
        message: String(err.message || err),
        code: err.code,
        topic: err.transportObject && err.transportObject.topic,
        result: err.result,
      } }, 0);
      return;
    }
    emit({ ok: true, registrationState: result }, 0);
  });
}

try {
  main();
} catch (e) {
  emit({ ok: false, error: { name: 'ScriptError', message: String(e && e.stack || e) } }, 2);
}
