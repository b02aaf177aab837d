// Package interop tests dpsd against the official Azure IoT Node.js SDKs:
// azure-iot-provisioning-device with its MQTT transports (TLS and secure
// WebSocket) and the symmetric-key and X.509 security clients, and
// azure-iot-provisioning-service against the service API, and azure-iothub
// (Registry and Twin) against the IoT Hub stand-in (internal/testkit/iothubtest)
// that the hub connector is tested with, so the stand-in accepts what
// Microsoft's client sends, not only what dpsd's connector sends. It also tests
// the operational certificates dpsd issues against other people's software:
// the register requests of IoT Edge's identity service and of the Embedded
// C SDK's CSR preview as their sources build them (csr_raw_test.go), and
// Eclipse Mosquitto as the broker that must accept the issued certificates
// and refuse others (certificates_test.go; internal/testkit/mosquittotest
// starts it on a free port, the mosquitto command-line clients use the
// certificate files). Those tests use free ports; the SDK tests below use
// fixed ones.
//
// The package holds only tests. They start the server in process
// (dpsdtest) on the fixed ports the SDKs use, because the SDKs take a
// host name and no port: MQTT over TLS on 127.0.0.1:8883, and on
// 127.0.0.1:443 either the broker's own WebSocket listener, the service API,
// both on one listener (broker.WebSocketHandler), or the IoT Hub stand-in
// (as host localhost). Binding port 443 needs root or CAP_NET_BIND_SERVICE;
// the tests fail, they are not skipped, when a port cannot be bound or when
// node or npm is missing.
//
// The JavaScript side lives in interop/node: package.json pins exact SDK
// versions and package-lock.json is committed. The tests run
// `npm ci --no-audit --no-fund` there when node_modules is missing or was
// installed from another lockfile (a stamp file records the lockfile's
// SHA-256), then run one node script per scenario with NODE_EXTRA_CA_CERTS
// naming the test server's CA and a bounded timeout. Each script prints one
// JSON line that the Go side checks.
//
// Set DPSD_INTEROP_DEBUG=1 to pass DEBUG=azure-iot* to node (SDK wire logs
// on stderr, shown when a test fails) and DPSD_TEST_LOG=1 for server logs.
package interop
