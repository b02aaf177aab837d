package datadir

import (
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"github.com/tpmdps/dpsd/issuer"
)

// Files of the built-in issuer's CA inside the data directory: separate
// from the development TLS CA (ca.pem), which devices trust for the
// broker's server certificate, not for one another's client certificates.
const (
	IssuingCACertFile = "issuing-ca.pem"
	IssuingCAKeyFile  = "issuing-ca-key.pem"
	// IssuingCAValidity is the lifetime of a generated issuing CA.
	IssuingCAValidity = 10 * 365 * 24 * time.Hour
)

// IssuingCA returns the built-in issuer's CA kept in the data directory,
// generating it on first use: a self-signed CA with a key of type kt,
// subject "dpsd issuing CA {idScope}", valid IssuingCAValidity. The key is
// written first, 0600, then the certificate; an existing CA is used
// whatever kt says. created reports whether it was generated now.
func (d *Dir) IssuingCA(kt issuer.KeyType, idScope string, now time.Time) (ca *issuer.CA, created bool, err error) {
	certFile, keyFile := d.File(IssuingCACertFile), d.File(IssuingCAKeyFile)
	_, cerr := os.Stat(certFile)
	_, kerr := os.Stat(keyFile)
	switch {
	case cerr == nil || kerr == nil:
		// Either file present: load (a missing half is an error, never
		// replaced: the key of a CA that devices trust is not thrown away).
		ca, err = LoadIssuingCA(certFile, keyFile)
		if err != nil {
			return nil, false, fmt.Errorf("%w: restore the missing or broken file; removing both generates a new CA, whose certificates brokers trusting the old one refuse", err)
		}
		return ca, false, nil
	case !errors.Is(cerr, fs.ErrNotExist):
		return nil, false, fmt.Errorf("datadir: %w", cerr)
	case !errors.Is(kerr, fs.ErrNotExist):
		return nil, false, fmt.Errorf("datadir: %w", kerr)
	}
	ca, err = issuer.NewCA(kt, pkix.Name{CommonName: "dpsd issuing CA " + idScope, Organization: []string{"dpsd"}}, now, IssuingCAValidity)
	if err != nil {
		return nil, false, err
	}
	keyPEM, err := ca.KeyPEM()
	if err != nil {
		return nil, false, err
	}
	if err := writeFile(d.File(IssuingCAKeyFile), keyPEM); err != nil {
		return nil, false, err
	}
	if err := writeFile(d.File(IssuingCACertFile), ca.ChainPEM()); err != nil {
		return nil, false, err
	}
	return ca, true, nil
}

// LoadIssuingCA reads an issuing CA from its certificate file (the CA,
// optionally followed by its root) and its key file, which must not be
// readable by group or others (ErrInsecure). A missing key file gives an
// error wrapping fs.ErrNotExist. Errors name the files, never the key.
func LoadIssuingCA(certFile, keyFile string) (*issuer.CA, error) {
	keyPEM, err := readSecret(keyFile)
	if err != nil {
		if errors.Is(err, ErrInsecure) {
			return nil, fmt.Errorf("%w (chmod 600 %s)", err, keyFile)
		}
		return nil, err
	}
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("datadir: issuing CA certificate: %w", err)
	}
	ca, err := issuer.ParseCA(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("datadir: %s with %s: %w", certFile, keyFile, err)
	}
	return ca, nil
}
