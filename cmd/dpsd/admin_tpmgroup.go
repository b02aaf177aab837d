package main

// The TPM parts of dpsd group add and show.

import (
	"bufio"
	"bytes"
	"encoding/pem"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/cmd/dpsd/internal/trustdir"
	"github.com/tpmdps/dpsd/store"
)

// adminTPMGroupAttestation builds a TPM group's attestation from the
// directory of roots (and intermediates, CRLs), the optional manufacturer
// and model, and the optional file of EK hashes. The service validates it
// again.
func adminTPMGroupAttestation(dir, manufacturer, model, ekHashFile string) (*store.TPMAttestation, error) {
	b, rep, err := trustdir.Load(dir)
	if err != nil {
		return nil, fmt.Errorf("--tpm-roots: %w", err)
	}
	if rep.Roots == 0 {
		return nil, fmt.Errorf("--tpm-roots %s: no self-signed (root) certificate among %d certificates: a group needs its roots", dir, rep.Intermediates)
	}
	a := &store.TPMAttestation{TPMManufacturer: manufacturer, TPMModel: model}
	for _, c := range b.Roots {
		a.EKCertificateRoots = append(a.EKCertificateRoots, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})))
	}
	for _, c := range b.Intermediates {
		a.EKCertificateIntermediates = append(a.EKCertificateIntermediates, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})))
	}
	for _, l := range b.CRLs {
		a.EKCertificateCRLs = append(a.EKCertificateCRLs, string(pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: l.Raw})))
	}
	if ekHashFile != "" {
		if a.EndorsementKeyHashes, err = adminReadEKHashes(ekHashFile); err != nil {
			return nil, err
		}
	}
	return a, nil
}

// adminReadEKHashes reads a file of EK hashes: one per line, blank lines
// and # comments ignored.
func adminReadEKHashes(path string) ([]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--ek-hashes: %w", err)
	}
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line, _, _ := strings.Cut(sc.Text(), "#")
		if line = strings.TrimSpace(line); line == "" {
			continue
		}
		if _, err := attest.ParseEKHash(line); err != nil {
			return nil, fmt.Errorf("--ek-hashes %s line %d: %w", path, n, err)
		}
		out = append(out, line)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("--ek-hashes: %w", err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("--ek-hashes %s: no hash (an empty allow-list would admit no TPM)", path)
	}
	return out, nil
}

// adminPrintTPMGroup prints a TPM group's trust: its roots' subjects and
// the filters.
func adminPrintTPMGroup(t *adminTable, a *store.TPMAttestation) {
	for i, r := range a.EKCertificateRoots {
		name := "(unreadable)"
		if c, err := attest.ParseCertificate(r); err == nil {
			name = c.Subject.String()
		}
		t.row("ekCertificateRoot:", name)
		if i == 9 && len(a.EKCertificateRoots) > 10 {
			t.row("ekCertificateRoots:", strconv.Itoa(len(a.EKCertificateRoots))+" in all")
			break
		}
	}
	if n := len(a.EKCertificateIntermediates); n > 0 {
		t.row("ekCertificateIntermediates:", strconv.Itoa(n))
	}
	if n := len(a.EKCertificateCRLs); n > 0 {
		t.row("ekCertificateCrls:", strconv.Itoa(n))
	}
	if a.TPMManufacturer != "" {
		t.row("tpmManufacturer:", a.TPMManufacturer)
	}
	if a.TPMModel != "" {
		t.row("tpmModel:", a.TPMModel)
	}
	if n := len(a.EndorsementKeyHashes); n > 0 {
		t.row("endorsementKeyHashes:", strconv.Itoa(n))
	}
}
