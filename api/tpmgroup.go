package api

import (
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/store"
)

// Bounds of a TPM group's attestation (the request body's 1 MiB bounds it
// too): a vendor's whole bundle (some 170 certificates) fits.
const (
	maxTPMGroupCertificates = 512
	maxTPMGroupCRLs         = 64
	maxTPMGroupEKHashes     = 10000
	maxTPMNameLength        = 64
)

// validateTPMGroup checks the attestation of a TPM enrollment group (an
// extension of this service: the cloud has none): roots (required, CA
// certificates), intermediates and CRLs that parse, a manufacturer and
// model of printable ASCII, and an allow-list of EK hashes, which it
// normalises to lowercase hexadecimal without duplicates.
func validateTPMGroup(a *store.Attestation) error {
	if a.SymmetricKey != nil || a.X509 != nil {
		return invalid("attestation type tpm carries only attestation.tpm")
	}
	t := a.TPM
	if t == nil || len(t.EKCertificateRoots) == 0 {
		return invalid("a tpm enrollment group needs attestation.tpm.ekCertificateRoots: the CA certificates the devices' EK certificates chain to")
	}
	switch {
	case t.EndorsementKey != "" || t.StorageRootKey != "":
		return invalid("a tpm enrollment group has no endorsementKey or storageRootKey: it admits TPMs by their EK certificates (give ekCertificateRoots, and endorsementKeyHashes to allow only some EKs)")
	case t.RequireEKCertificate:
		return invalid("requireEkCertificate is for individual enrollments: a tpm enrollment group always requires an EK certificate")
	case len(t.EKCertificateRoots)+len(t.EKCertificateIntermediates) > maxTPMGroupCertificates:
		return invalid("attestation.tpm: more than %d certificates", maxTPMGroupCertificates)
	case len(t.EKCertificateCRLs) > maxTPMGroupCRLs:
		return invalid("attestation.tpm.ekCertificateCrls: more than %d", maxTPMGroupCRLs)
	case len(t.EndorsementKeyHashes) > maxTPMGroupEKHashes:
		return invalid("attestation.tpm.endorsementKeyHashes: more than %d", maxTPMGroupEKHashes)
	}
	for _, f := range []struct {
		name  string
		certs []string
	}{{"ekCertificateRoots", t.EKCertificateRoots}, {"ekCertificateIntermediates", t.EKCertificateIntermediates}} {
		for i, s := range f.certs {
			c, err := attest.ParseCertificate(s)
			if err != nil {
				return &apiError{code: codeInvalidArgument, msg: fmt.Sprintf("attestation.tpm.%s[%d]: %s", f.name, i, plain(err)), err: err}
			}
			if !c.BasicConstraintsValid || !c.IsCA {
				return invalid("attestation.tpm.%s[%d] (%s) is not a CA certificate (basicConstraints cA TRUE)", f.name, i, c.Subject)
			}
			if c.KeyUsage != 0 && c.KeyUsage&x509.KeyUsageCertSign == 0 {
				return invalid("attestation.tpm.%s[%d] (%s) may not sign certificates (its key usage lacks keyCertSign)", f.name, i, c.Subject)
			}
		}
	}
	for i, s := range t.EKCertificateCRLs {
		if _, err := attest.ParseCRL(s); err != nil {
			return &apiError{code: codeInvalidArgument, msg: fmt.Sprintf("attestation.tpm.ekCertificateCrls[%d]: %s", i, plain(err)), err: err}
		}
	}
	for _, f := range []struct {
		name string
		v    *string
	}{{"tpmManufacturer", &t.TPMManufacturer}, {"tpmModel", &t.TPMModel}} {
		*f.v = strings.TrimSpace(*f.v)
		if len(*f.v) > maxTPMNameLength {
			return invalid("attestation.tpm.%s is longer than %d characters", f.name, maxTPMNameLength)
		}
		for _, c := range []byte(*f.v) {
			if c < 0x20 || c > 0x7e {
				return invalid("attestation.tpm.%s has a character that is not printable ASCII", f.name)
			}
		}
	}
	if len(t.EndorsementKeyHashes) > 0 {
		seen := make(map[string]bool, len(t.EndorsementKeyHashes))
		hashes := make([]string, 0, len(t.EndorsementKeyHashes))
		for i, s := range t.EndorsementKeyHashes {
			h, err := attest.ParseEKHash(s)
			if err != nil {
				return invalid("attestation.tpm.endorsementKeyHashes[%d] is not a SHA-256 (64 hexadecimal digits) of an EK's DER SubjectPublicKeyInfo", i)
			}
			norm := hex.EncodeToString(h[:])
			if !seen[norm] {
				seen[norm] = true
				hashes = append(hashes, norm)
			}
		}
		t.EndorsementKeyHashes = hashes
	}
	return nil
}

// validateIndividualTPM refuses the group-only fields on an individual
// enrollment's TPM attestation.
func validateIndividualTPM(t *store.TPMAttestation) error {
	if t == nil {
		return nil
	}
	if len(t.EKCertificateRoots)+len(t.EKCertificateIntermediates)+len(t.EKCertificateCRLs)+len(t.EndorsementKeyHashes) > 0 ||
		t.TPMManufacturer != "" || t.TPMModel != "" {
		return invalid("ekCertificateRoots, ekCertificateIntermediates, ekCertificateCrls, tpmManufacturer, tpmModel and endorsementKeyHashes belong to tpm enrollment groups; an individual enrollment may set requireEkCertificate (checked against the service's TPM roots)")
	}
	return nil
}
