// Package hubconn is the room of hand-off: a Connector makes a device
// known to the hub it was assigned, so that the hub accepts it when it
// connects. The provisioning service decides what the hub must know (the
// device id, the credential the device will use there, its capabilities,
// the twin it starts with, and the hub it leaves) and calls the connector
// of each hub involved; the connector does the I/O.
//
// Two implementations:
//
//   - IoTHub speaks Azure IoT Hub's registry and twin REST API (api-version
//     2021-04-12) with a service SAS signed by the linked hub's connection
//     string: it creates the device identity or updates the one of that
//     id (never a second), replaces the twin's tags and desired
//     properties, reads a twin to migrate it, and deletes the identity
//     from a hub the device leaves.
//   - Webhook POSTs each registration to a self-hosted platform's URL,
//     signed with HMAC-SHA256 (Sign, Verify), naming the device, its hub,
//     its twin and a reference to its credential, never the credential.
//
// Every call is one attempt. A failure is an *Error that says whether it
// is worth retrying (the hub throttled, answered 5xx or could not be
// reached) and, if the hub said so, after how long; retries, backoff and
// the bound on pending work are the caller's (provision's outbox).
package hubconn
