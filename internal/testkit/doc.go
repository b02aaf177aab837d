// Package testkit is the test kit shared by the packages' tests: waiting for
// a condition with a deadline, a clock that tests move by hand, free ports
// for child processes, and a recorder of what the server's parts report
// through their observer interfaces. Its subpackages hold the heavier
// helpers: mqtttest (a raw MQTT client on mochi's packet codec), tpmsim
// (the one reference TPM simulator of a test process), mosquittotest (an
// Eclipse Mosquitto broker that authenticates clients by certificate) and
// ekca (a TPM manufacturer's CA and the EK certificates it issues).
//
// It is a leaf: it imports no package of this module, so any test (and any
// other test helper under internal/) can use it. Nothing outside tests
// imports it.
package testkit
