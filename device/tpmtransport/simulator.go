//go:build cgo

package tpmtransport

import (
	"fmt"

	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/simulator"
)

// OpenSimulator starts the in-process Microsoft reference TPM simulator
// (go-tpm-tools, cgo). There is one per process: a second call blocks until
// the first is closed. Its state (EK, persistent keys) is lost on Close.
func OpenSimulator() (transport.TPMCloser, error) {
	t, err := simulator.OpenSimulator()
	if err != nil {
		return nil, fmt.Errorf("tpmtransport: start simulator: %w", err)
	}
	return Serialize(t), nil
}
