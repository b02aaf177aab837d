// service.js manages enrollments on dpsd's service API with the official
// Azure IoT Node.js service SDK (azure-iot-provisioning-service) and prints
// one JSON line with what every call returned, for the Go test (package
// interop) to check. Input: one JSON argument:
//   {"op": "create" | "delete", "connectionString": "HostName=localhost;...",
//    "tpm": {"registrationId", "deviceId", "endorsementKey"},
//    "group": {"enrollmentGroupId", "primaryKey", "secondaryKey"}}
// "create" creates, reads, updates (If-Match with the read etag) and queries
// a TPM individual enrollment and a symmetric-key enrollment group, and reads
// their attestation mechanisms (the only answer that carries keys); "delete"
// deletes both (the group with its etag) and reads them again.
'use strict';

const { ProvisioningServiceClient } = require('azure-iot-provisioning-service');

// call runs a callback-style SDK method and resolves with {body, status}, or
// {error: {name, message, status}} when the SDK reports an error.
function call(fn, ...args) {
  return new Promise((resolve) => {
    fn(...args, (err, body, response) => {
      if (err) {
        resolve({ error: {
          name: err.name || err.constructor.name,
          message: String(err.message || err),
          status: err.response && err.response.statusCode,
        } });
        return;
      }
      resolve({ body, status: response && response.statusCode });
    });
  });
}

async function create(client, spec) {
  const out = {};
  const enrollment = {
    registrationId: spec.tpm.registrationId,
    deviceId: spec.tpm.deviceId,
    attestation: { type: 'tpm', tpm: { endorsementKey: spec.tpm.endorsementKey } },
    provisioningStatus: 'enabled',
    initialTwin: { tags: { site: 'interop' }, properties: { desired: { answer: 42 } } },
  };
  out.createEnrollment = await call(client.createOrUpdateIndividualEnrollment.bind(client), enrollment);
  out.getEnrollment = await call(client.getIndividualEnrollment.bind(client), spec.tpm.registrationId);
  if (out.getEnrollment.body) {
    const upd = Object.assign({}, out.getEnrollment.body, { provisioningStatus: 'disabled' });
    out.updateEnrollment = await call(client.createOrUpdateIndividualEnrollment.bind(client), upd);
    // The etag of the read is stale now: a second update with it must fail.
    out.staleUpdateEnrollment = await call(client.createOrUpdateIndividualEnrollment.bind(client), upd);
  }
  const q = client.createIndividualEnrollmentQuery({ query: '*' }, 10);
  out.queryEnrollments = await call(q.next.bind(q));
  out.queryEnrollments.hasMoreResults = q.hasMoreResults;

  const group = {
    enrollmentGroupId: spec.group.enrollmentGroupId,
    attestation: { type: 'symmetricKey', symmetricKey: { primaryKey: spec.group.primaryKey, secondaryKey: spec.group.secondaryKey } },
    provisioningStatus: 'enabled',
  };
  out.createGroup = await call(client.createOrUpdateEnrollmentGroup.bind(client), group);
  out.getGroup = await call(client.getEnrollmentGroup.bind(client), spec.group.enrollmentGroupId);
  const gq = client.createEnrollmentGroupQuery({ query: '*' });
  out.queryGroups = await call(gq.next.bind(gq));
  out.enrollmentAttestation = await call(client.getIndividualEnrollmentAttestationMechanism.bind(client), spec.tpm.registrationId);
  out.groupAttestation = await call(client.getEnrollmentGroupAttestationMechanism.bind(client), spec.group.enrollmentGroupId);
  return out;
}

async function remove(client, spec) {
  const out = {};
  out.deleteEnrollment = await call(client.deleteIndividualEnrollment.bind(client), spec.tpm.registrationId);
  out.getEnrollment = await call(client.getIndividualEnrollment.bind(client), spec.tpm.registrationId);
  const g = await call(client.getEnrollmentGroup.bind(client), spec.group.enrollmentGroupId);
  // Deleting with the group object sends its etag as If-Match.
  out.deleteGroup = g.body ? await call(client.deleteEnrollmentGroup.bind(client), g.body) : g;
  out.getGroup = await call(client.getEnrollmentGroup.bind(client), spec.group.enrollmentGroupId);
  return out;
}

async function main() {
  const spec = JSON.parse(process.argv[2]);
  const client = ProvisioningServiceClient.fromConnectionString(spec.connectionString);
  let out;
  switch (spec.op) {
    case 'create': out = await create(client, spec); break;
    case 'delete': out = await remove(client, spec); break;
    default: throw new Error('unknown op ' + spec.op);
  }
  return out;
}

const timer = setTimeout(() => {
  process.stdout.write(JSON.stringify({ scriptError: 'timeout' }) + '\n', () => process.exit(3));
}, 15000);
main().then((out) => {
  clearTimeout(timer);
  process.stdout.write(JSON.stringify(out) + '\n', () => process.exit(0));
}, (e) => {
  clearTimeout(timer);
  process.stdout.write(JSON.stringify({ scriptError: String(e && e.stack || e) }) + '\n', () => process.exit(2));
});
