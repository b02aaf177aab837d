package broker

import (
	"fmt"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// AddServerHooks adds to srv the hooks every dpsd MQTT server runs with
// besides its request hook. The load tool's bare broker adds them too, so
// that its baseline runs the same per-connection code.
func AddServerHooks(srv *mqtt.Server) error {
	if err := srv.AddHook(new(noRetainedScanHook), nil); err != nil {
		return fmt.Errorf("broker: adding hook: %w", err)
	}
	return nil
}

// noRetainedScanHook marks every filter of a SUBSCRIBE "send no retained
// messages" (MQTT 5 Retain Handling 2, under which the server sends none,
// [MQTT-3.3.1-11]; set here for 3.1.1 clients too). The service never
// retains a message (RetainAvailable is 0) and a client may only subscribe
// to the response filter, so the answer is always "none"; but mochi would
// still search its retained-message index for every new subscription, on
// the connection's read goroutine, and that recursive search is the deepest
// call an idle connection makes: it doubled the goroutine's stack (8 to 16
// KiB), which a connection then keeps for its whole life.
type noRetainedScanHook struct{ mqtt.HookBase }

// ID names the hook.
func (*noRetainedScanHook) ID() string { return "dpsd-no-retained-scan" }

// Provides declares the one event the hook handles.
func (*noRetainedScanHook) Provides(b byte) bool { return b == mqtt.OnSubscribe }

// OnSubscribe sets retain handling 2 on every filter of pk.
func (*noRetainedScanHook) OnSubscribe(_ *mqtt.Client, pk packets.Packet) packets.Packet {
	for i := range pk.Filters {
		pk.Filters[i].RetainHandling = 2
	}
	return pk
}
