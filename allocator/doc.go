// Package allocator is the room of hub allocation: the choices the
// provisioning service makes itself (Hashed: weighted rendezvous hashing
// across the linked hubs) and the cloud service's custom allocation
// webhook, whose AllocationRequest and AllocationResponse JSON it speaks
// (Request, Response) and which it calls over HTTPS (Webhook).
//
// The service decides; the webhook is I/O at the edge: provision builds
// the request from the enrollment, calls a Custom it was given, checks the
// answer (the hub must be one of the request's linkedHubs) and applies it.
// Tests substitute their own Custom, or run a webhook of their own behind
// Webhook.
//
// The JSON follows the cloud service's documentation
// (concepts-custom-allocation, tutorial-custom-allocation-policies): the
// enrollment or group is echoed without keys and with the webhook URL's
// query masked as "?****", deviceRuntimeContext carries the registration
// id, the current hub and device id on a re-registration, the attestation
// (symmetricKey as an empty object, the TPM's public keys, the X.509
// certificate's details) and the device's payload, and linkedHubs the hubs
// the webhook may choose from. What the documentation leaves open (the
// x509 object's shape, headers) is dpsd's choice, described on the types.
package allocator
