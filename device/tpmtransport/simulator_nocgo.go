//go:build !cgo

package tpmtransport

import (
	"errors"

	"github.com/google/go-tpm/tpm2/transport"
)

// OpenSimulator reports that this binary was built without cgo, which the
// reference simulator needs.
func OpenSimulator() (transport.TPMCloser, error) {
	return nil, errors.New("tpmtransport: the TPM simulator needs a cgo build")
}
