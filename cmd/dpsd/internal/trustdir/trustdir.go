// Package trustdir reads a directory of TPM manufacturer certificates and
// revocation lists, the form dpsd takes TPM roots in (serve's tpm-roots,
// and dpsd group add --tpm-roots): every file named *.pem, *.crt, *.cer,
// *.der or *.crl directly in the directory, PEM (any number of CERTIFICATE
// and X509 CRL blocks, text between them ignored, as in vendor bundles) or
// a single DER certificate or CRL. Self-signed certificates are roots, the
// others intermediates. Other files (README, checksums, signatures) and
// subdirectories are skipped and named in the report; a file that has a
// certificate extension but does not parse is an error naming it.
package trustdir

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/tpmdps/dpsd/attest"
)

// Extensions of the files read (compared in lower case).
var Extensions = []string{".pem", ".crt", ".cer", ".der", ".crl"}

// ErrEmpty: the directory holds no certificate at all.
var ErrEmpty = errors.New("trustdir: no certificate in the directory")

// Report says what Load found.
type Report struct {
	// Files are the files read, Skipped the entries left alone (base names).
	Files, Skipped []string
	// Roots, Intermediates and CRLs count what the files held.
	Roots, Intermediates, CRLs int
	// Orphans are the subjects of intermediates whose issuer is not among
	// the certificates loaded: no chain through them can end at a root
	// loaded here (a TPM group's own roots may still complete them).
	Orphans []string
}

// Load reads dir. It fails when dir cannot be read, a certificate file does
// not parse, or there is no certificate at all.
func Load(dir string) (*attest.CertBundle, Report, error) {
	var rep Report
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, rep, fmt.Errorf("trustdir: %w", err)
	}
	b := &attest.CertBundle{}
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") || !slices.Contains(Extensions, strings.ToLower(filepath.Ext(name))) {
			rep.Skipped = append(rep.Skipped, name)
			continue
		}
		path := filepath.Join(dir, name)
		info, err := os.Stat(path) // follows symbolic links, as certificate directories often use them
		if err != nil {
			return nil, rep, fmt.Errorf("trustdir: %w", err)
		}
		if !info.Mode().IsRegular() {
			rep.Skipped = append(rep.Skipped, name)
			continue
		}
		if info.Size() > attest.MaxTrustFileSize {
			return nil, rep, fmt.Errorf("trustdir: %s: %d bytes, more than %d", path, info.Size(), attest.MaxTrustFileSize)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, rep, fmt.Errorf("trustdir: %w", err)
		}
		if err := b.Add(data); err != nil {
			return nil, rep, fmt.Errorf("trustdir: %s: %w", path, err)
		}
		rep.Files = append(rep.Files, name)
	}
	if len(b.Roots)+len(b.Intermediates) == 0 {
		return nil, rep, fmt.Errorf("%w: %s (files read: %d)", ErrEmpty, dir, len(rep.Files))
	}
	rep.Roots, rep.Intermediates, rep.CRLs = len(b.Roots), len(b.Intermediates), len(b.CRLs)
	subjects := map[string]bool{}
	for _, c := range slices.Concat(b.Roots, b.Intermediates) {
		subjects[string(c.RawSubject)] = true
	}
	for _, c := range b.Intermediates {
		if !subjects[string(c.RawIssuer)] {
			rep.Orphans = append(rep.Orphans, c.Subject.String())
		}
	}
	return b, rep, nil
}
