// Package ekca is a test kit for EK certificates: a TPM manufacturer CA
// made in the test (an RSA-2048 root and an ECDSA P-256 intermediate, as
// vendors have them) that issues EK certificates shaped as the TCG EK
// Credential Profile says (empty subject, critical subject alternative
// name with the TPM manufacturer, model and version, extended key usage
// 2.23.133.8.1, key usage by key type), certificates that break one rule
// each, revocation lists, and the files swtpm's local CA tool reads; and
// it writes a certificate into a TPM's NV through the platform hierarchy,
// as a manufacturer does (the reference simulator has none, and loses its
// NV at every open).
//
// Only tests import it.
package ekca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TPM identity written into certificates by default (swtpm's values).
const (
	DefaultManufacturer = "id:00001014"
	DefaultModel        = "swtpm"
	DefaultVersion      = "id:20191023"
)

// OIDs of the profile.
var (
	oidSubjectAltName  = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidTPMManufacturer = asn1.ObjectIdentifier{2, 23, 133, 2, 1}
	oidTPMModel        = asn1.ObjectIdentifier{2, 23, 133, 2, 2}
	oidTPMVersion      = asn1.ObjectIdentifier{2, 23, 133, 2, 3}
	// OIDEKUsage is tcg-kp-EKCertificate.
	OIDEKUsage = asn1.ObjectIdentifier{2, 23, 133, 8, 1}
)

// CA is a TPM manufacturer's CA: a root and the intermediate that signs EK
// certificates.
type CA struct {
	Root            *x509.Certificate
	RootKey         *rsa.PrivateKey
	Intermediate    *x509.Certificate
	IntermediateKey *ecdsa.PrivateKey
	serial          int64
}

// New makes a CA named name, valid from a day ago for ten years.
func New(t testing.TB, name string) *CA {
	t.Helper()
	rootKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	root := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name + " root"},
		NotBefore: now.Add(-24 * time.Hour), NotAfter: now.Add(10 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	rootCert := mustCreate(t, root, root, &rootKey.PublicKey, rootKey)
	icaKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ica := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: name + " EK intermediate"},
		NotBefore: now.Add(-24 * time.Hour), NotAfter: now.Add(10 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, MaxPathLenZero: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	icaCert := mustCreate(t, ica, rootCert, &icaKey.PublicKey, rootKey)
	return &CA{Root: rootCert, RootKey: rootKey, Intermediate: icaCert, IntermediateKey: icaKey, serial: 1000}
}

// mustCreate signs tmpl with parent's key and parses the result.
func mustCreate(t testing.TB, tmpl, parent *x509.Certificate, pub crypto.PublicKey, key crypto.Signer) *x509.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		t.Fatalf("ekca: create certificate: %v", err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("ekca: parse certificate: %v", err)
	}
	return c
}

// EK says how to shape an EK certificate; the zero value is a valid one.
type EK struct {
	// NotBefore and NotAfter default to a day ago and a year ahead.
	NotBefore, NotAfter time.Time
	// Manufacturer, Model and Version default to swtpm's; NoSAN leaves the
	// subject alternative name out.
	Manufacturer, Model, Version string
	NoSAN                        bool
	// Serial defaults to the CA's next serial number.
	Serial *big.Int
	// SignatureAlgorithm, with ByRoot, picks how the certificate is signed
	// (default ECDSA-SHA256 by the intermediate; ByRoot signs with the RSA
	// root, where SHA256WithRSAPSS is possible).
	SignatureAlgorithm x509.SignatureAlgorithm
	ByRoot             bool
	// ExtKeyUsage replaces the EK usage with these usages.
	ExtKeyUsage []x509.ExtKeyUsage
	// ExtraExtensions are added as they are (an unknown critical one, say).
	ExtraExtensions []pkix.Extension
}

// Issue returns the DER EK certificate of pub (an *rsa.PublicKey or
// *ecdsa.PublicKey) shaped by opts.
func (ca *CA) Issue(t testing.TB, pub crypto.PublicKey, opts EK) []byte {
	t.Helper()
	now := time.Now()
	if opts.NotBefore.IsZero() {
		opts.NotBefore = now.Add(-24 * time.Hour)
	}
	if opts.NotAfter.IsZero() {
		opts.NotAfter = now.Add(365 * 24 * time.Hour)
	}
	if opts.Serial == nil {
		ca.serial++
		opts.Serial = big.NewInt(ca.serial)
	}
	tmpl := &x509.Certificate{
		SerialNumber: opts.Serial, NotBefore: opts.NotBefore, NotAfter: opts.NotAfter,
		BasicConstraintsValid: true, SignatureAlgorithm: opts.SignatureAlgorithm,
		ExtraExtensions: opts.ExtraExtensions,
	}
	switch pub.(type) {
	case *ecdsa.PublicKey:
		tmpl.KeyUsage = x509.KeyUsageKeyAgreement
	default:
		tmpl.KeyUsage = x509.KeyUsageKeyEncipherment
	}
	if opts.ExtKeyUsage != nil {
		tmpl.ExtKeyUsage = opts.ExtKeyUsage
	} else {
		tmpl.UnknownExtKeyUsage = []asn1.ObjectIdentifier{OIDEKUsage}
	}
	if !opts.NoSAN {
		tmpl.ExtraExtensions = append(tmpl.ExtraExtensions, SubjectAltName(t,
			orDefault(opts.Manufacturer, DefaultManufacturer), orDefault(opts.Model, DefaultModel), orDefault(opts.Version, DefaultVersion)))
	}
	parent, key := ca.Intermediate, crypto.Signer(ca.IntermediateKey)
	if opts.ByRoot {
		parent, key = ca.Root, ca.RootKey
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		t.Fatalf("ekca: issue EK certificate: %v", err)
	}
	return der
}

// orDefault returns s, or def when s is empty.
func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// SubjectAltName is the profile's critical SAN extension: one
// directoryName with the TPM manufacturer, model and version, each in its
// own RDN.
func SubjectAltName(t testing.TB, manufacturer, model, version string) pkix.Extension {
	t.Helper()
	name := pkix.RDNSequence{
		{{Type: oidTPMManufacturer, Value: manufacturer}},
		{{Type: oidTPMModel, Value: model}},
		{{Type: oidTPMVersion, Value: version}},
	}
	nameDER, err := asn1.Marshal(name)
	if err != nil {
		t.Fatal(err)
	}
	san, err := asn1.Marshal([]asn1.RawValue{{Class: asn1.ClassContextSpecific, Tag: 4, IsCompound: true, Bytes: nameDER}})
	if err != nil {
		t.Fatal(err)
	}
	return pkix.Extension{Id: oidSubjectAltName, Critical: true, Value: san}
}

// CRL returns a DER revocation list signed by the intermediate that revokes
// the given serial numbers.
func (ca *CA) CRL(t testing.TB, serials ...*big.Int) []byte {
	t.Helper()
	var entries []x509.RevocationListEntry
	for _, s := range serials {
		entries = append(entries, x509.RevocationListEntry{SerialNumber: s, RevocationTime: time.Now().Add(-time.Hour)})
	}
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number: big.NewInt(1), ThisUpdate: time.Now().Add(-time.Hour), NextUpdate: time.Now().Add(24 * time.Hour),
		RevokedCertificateEntries: entries,
	}, ca.Intermediate, ca.IntermediateKey)
	if err != nil {
		t.Fatalf("ekca: create CRL: %v", err)
	}
	return der
}

// PEM encodes DER certificates as one PEM text.
func PEM(certs ...*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// PEMDER encodes one DER certificate as PEM.
func PEMDER(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// WriteDir writes the CA's root and intermediate as PEM files into a new
// directory (what --tpm-roots reads) and returns it.
func (ca *CA) WriteDir(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	write(t, filepath.Join(dir, "root.pem"), PEM(ca.Root))
	write(t, filepath.Join(dir, "intermediate.crt"), PEM(ca.Intermediate))
	return dir
}

// LocalCAFiles writes the intermediate's key and certificate as PEM files
// for swtpm_localca (its signingkey and issuercert) into dir.
func (ca *CA) LocalCAFiles(t testing.TB, dir string) (keyFile, certFile string) {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(ca.IntermediateKey)
	if err != nil {
		t.Fatal(err)
	}
	keyFile, certFile = filepath.Join(dir, "ica.key"), filepath.Join(dir, "ica.pem")
	write(t, keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	write(t, certFile, PEM(ca.Intermediate))
	return keyFile, certFile
}

// write writes a file readable by the test user only.
func write(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// Resign returns der with its TBSCertificate changed by edit and signed
// again by the intermediate (ECDSA-SHA256): for certificates Go's
// CreateCertificate refuses to make (an RSAES-OAEP key, a negative serial).
func (ca *CA) Resign(t testing.TB, der []byte, edit func(tbs []byte) []byte) []byte {
	t.Helper()
	var c struct {
		TBS asn1.RawValue
		Alg pkix.AlgorithmIdentifier
		Sig asn1.BitString
	}
	if _, err := asn1.Unmarshal(der, &c); err != nil {
		t.Fatal(err)
	}
	tbs := edit(append([]byte(nil), c.TBS.FullBytes...))
	digest := crypto.SHA256.New()
	digest.Write(tbs)
	sig, err := ca.IntermediateKey.Sign(rand.Reader, digest.Sum(nil), crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	out, err := asn1.Marshal(struct {
		TBS asn1.RawValue
		Alg pkix.AlgorithmIdentifier
		Sig asn1.BitString
	}{asn1.RawValue{FullBytes: tbs}, pkix.AlgorithmIdentifier{Algorithm: asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}}, asn1.BitString{Bytes: sig, BitLength: 8 * len(sig)}})
	if err != nil {
		t.Fatal(err)
	}
	return out
}
