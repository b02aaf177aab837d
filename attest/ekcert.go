package attest

// Endorsement key certificates (TCG EK Credential Profile for TPM Family
// 2.0): parsing with the quirks of certificates read from TPM NV, and the
// check that a certificate is for the EK a device sent. Chain verification
// is in ektrust.go.
//
// Quirks handled, and decisions taken:
//
//   - NV contents: an index may hold the DER preceded by the TCG PC Client
//     header (0x10 0x01, certificate type 0x00, a 2-byte big-endian size) and
//     is often padded after the DER (0xff or 0x00 to the index size). The
//     header is removed and bytes after the outer DER SEQUENCE are dropped.
//   - The subject alternative name: the profile puts the TPM manufacturer,
//     model and version (2.23.133.2.1-3) in a directoryName and marks the
//     extension critical when the subject is empty. Go parses the SAN
//     syntax but, finding no DNS, email, IP or URI name, leaves it in
//     UnhandledCriticalExtensions, so chain verification would fail. We
//     parse the directoryName ourselves and, when it names the TPM, clear
//     just that one extension from the list; any other unknown critical
//     extension still fails verification.
//   - Extended key usage: the profile's 2.23.133.8.1 is recorded. A
//     certificate whose EKU lists other usages only (and not "any") is not
//     an EK certificate and is refused.
//   - RSAES-OAEP subject public keys (1.2.840.113549.1.1.7, found in older
//     EK certificates): Go leaves PublicKey nil; we read the RSA key from
//     the BIT STRING, which has the same PKCS #1 form as rsaEncryption.
//   - RSA-PSS signatures are verified when their parameters are the
//     standard ones (MGF1 with the message hash, salt of the hash length);
//     Go reports other parameters as an unknown algorithm and the chain
//     then does not verify.
//   - Negative serial numbers (RFC 5280 section 4.1.2.2 requires positive
//     ones; a few old EK certificates have them): refused, as Go refuses
//     them when parsing. An operator who must accept such TPMs can run
//     dpsd with GODEBUG=x509negativeserial=1, which makes Go parse them
//     (docs/operations.md).
//   - Certificates that are CAs (basicConstraints cA TRUE) are no EK
//     certificates and are refused.

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// MaxEKCertificateSize bounds the EK certificate bytes accepted (with any
// NV header and padding). TPM NV indices hold at most a few KiB; vendor EK
// certificates are 0.5 to 2 KiB.
const MaxEKCertificateSize = 8 << 10

// Errors of EK certificate checks. Each is wrapped with the reason; test
// with errors.Is.
var (
	// ErrBadEKCertificate: the bytes are not a usable EK certificate.
	ErrBadEKCertificate = errors.New("attest: bad EK certificate")
	// ErrEKCertificateKeyMismatch: the certificate is for another key than the EK.
	ErrEKCertificateKeyMismatch = errors.New("attest: EK certificate is for another key than the endorsement key")
	// ErrEKCertificateUntrusted: no chain leads to a trusted root.
	ErrEKCertificateUntrusted = errors.New("attest: EK certificate does not chain to a trusted root")
	// ErrEKCertificateExpired: the certificate, or one of its chain, is
	// expired or not yet valid.
	ErrEKCertificateExpired = errors.New("attest: EK certificate or its chain is outside its validity period")
	// ErrEKCertificateRevoked: a revocation list lists the certificate or
	// an intermediate of every chain.
	ErrEKCertificateRevoked = errors.New("attest: EK certificate or its chain is revoked")
)

// Object identifiers of the TCG EK Credential Profile (section 3.2) and RFC 5280.
var (
	oidExtensionSubjectAltName = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidTPMManufacturer         = asn1.ObjectIdentifier{2, 23, 133, 2, 1}
	oidTPMModel                = asn1.ObjectIdentifier{2, 23, 133, 2, 2}
	oidTPMVersion              = asn1.ObjectIdentifier{2, 23, 133, 2, 3}
	// OIDEKCertificateUsage is the extended key usage of EK certificates
	// (tcg-kp-EKCertificate).
	OIDEKCertificateUsage = asn1.ObjectIdentifier{2, 23, 133, 8, 1}
	oidRSAESOAEP          = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 7}
)

// EKCertificate is a parsed EK certificate. Certificate is Go's parse with
// the TPM subject alternative name removed from UnhandledCriticalExtensions;
// it belongs to the EKCertificate and must not be modified.
type EKCertificate struct {
	Certificate *x509.Certificate
	// PublicKey is the certified key: *rsa.PublicKey or *ecdsa.PublicKey.
	PublicKey crypto.PublicKey
	// Manufacturer, Model and Version are the TPM's, from the subject
	// alternative name ("id:494E5443" style vendor ids as written); empty
	// when the certificate does not name them.
	Manufacturer, Model, Version string
	// EKUsage reports the extended key usage tcg-kp-EKCertificate.
	EKUsage bool
}

// ParseEKCertificate parses an EK certificate as read from TPM NV or sent
// by a device (DER, optionally with the TCG NV header and trailing
// padding), with the quirks described at the top of this file. It checks
// the form only: MatchesEK and EKTrust.Verify do the rest.
func ParseEKCertificate(data []byte) (*EKCertificate, error) {
	der, err := TrimEKCertificate(data)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadEKCertificate, err)
	}
	if cert.BasicConstraintsValid && cert.IsCA {
		return nil, fmt.Errorf("%w: it is a CA certificate", ErrBadEKCertificate)
	}
	c := &EKCertificate{Certificate: cert}
	if c.PublicKey, err = ekCertPublicKey(cert); err != nil {
		return nil, err
	}
	if err := c.parseExtensions(); err != nil {
		return nil, err
	}
	return c, nil
}

// TrimEKCertificate returns the DER certificate inside data: without the
// TCG PC Client NV header (0x10 0x01 0x00 and a 2-byte size) when present,
// and without bytes after the outer DER SEQUENCE (NV padding). It does not
// parse the certificate; the slice returned aliases data.
func TrimEKCertificate(data []byte) ([]byte, error) {
	if len(data) == 0 {
		return nil, fmt.Errorf("%w: empty", ErrBadEKCertificate)
	}
	if len(data) > MaxEKCertificateSize {
		return nil, fmt.Errorf("%w: %d bytes, more than %d", ErrBadEKCertificate, len(data), MaxEKCertificateSize)
	}
	if len(data) >= 5 && data[0] == 0x10 && data[1] == 0x01 && data[2] == 0x00 {
		n := int(binary.BigEndian.Uint16(data[3:5]))
		if 5+n > len(data) {
			return nil, fmt.Errorf("%w: NV header says %d bytes, %d follow", ErrBadEKCertificate, n, len(data)-5)
		}
		data = data[5 : 5+n]
	}
	var outer asn1.RawValue
	if _, err := asn1.Unmarshal(data, &outer); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadEKCertificate, err)
	}
	if outer.Class != asn1.ClassUniversal || outer.Tag != asn1.TagSequence || !outer.IsCompound {
		return nil, fmt.Errorf("%w: not a DER SEQUENCE", ErrBadEKCertificate)
	}
	return outer.FullBytes, nil
}

// ekCertPublicKey returns the certified key: Go's, or for an RSAES-OAEP
// subject public key info the RSA key Go leaves unparsed.
func ekCertPublicKey(cert *x509.Certificate) (crypto.PublicKey, error) {
	switch k := cert.PublicKey.(type) {
	case *rsa.PublicKey:
		return k, nil
	case *ecdsa.PublicKey:
		return k, nil
	case nil:
	default:
		return nil, fmt.Errorf("%w: public key of type %T (want RSA or ECC)", ErrBadEKCertificate, k)
	}
	var spki struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	rest, err := asn1.Unmarshal(cert.RawSubjectPublicKeyInfo, &spki)
	if err != nil || len(rest) != 0 {
		return nil, fmt.Errorf("%w: subject public key info does not parse", ErrBadEKCertificate)
	}
	if !spki.Algorithm.Algorithm.Equal(oidRSAESOAEP) {
		return nil, fmt.Errorf("%w: public key algorithm %v (want RSA or ECC)", ErrBadEKCertificate, spki.Algorithm.Algorithm)
	}
	if spki.PublicKey.BitLength%8 != 0 {
		return nil, fmt.Errorf("%w: RSAES-OAEP public key is not whole bytes", ErrBadEKCertificate)
	}
	// The key inside is a PKCS #1 RSAPublicKey, as for rsaEncryption.
	k, err := x509.ParsePKCS1PublicKey(spki.PublicKey.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: RSAES-OAEP public key: %w", ErrBadEKCertificate, err)
	}
	return k, nil
}

// parseExtensions reads the TPM subject alternative name and the extended
// key usage, and clears the SAN from the unhandled critical extensions
// once it is understood.
func (c *EKCertificate) parseExtensions() error {
	cert := c.Certificate
	for _, ext := range cert.Extensions {
		if !ext.Id.Equal(oidExtensionSubjectAltName) {
			continue
		}
		found, err := c.parseTPMSubjectAltName(ext.Value)
		if err != nil {
			return err
		}
		if found {
			cert.UnhandledCriticalExtensions = slices.DeleteFunc(cert.UnhandledCriticalExtensions,
				func(id asn1.ObjectIdentifier) bool { return id.Equal(oidExtensionSubjectAltName) })
		}
	}
	for _, u := range cert.UnknownExtKeyUsage {
		if u.Equal(OIDEKCertificateUsage) {
			c.EKUsage = true
		}
	}
	if !c.EKUsage && (len(cert.ExtKeyUsage) > 0 || len(cert.UnknownExtKeyUsage) > 0) &&
		!slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageAny) {
		return fmt.Errorf("%w: its extended key usage allows other uses only (no %v)", ErrBadEKCertificate, OIDEKCertificateUsage)
	}
	return nil
}

// parseTPMSubjectAltName reads the TPM manufacturer, model and version
// from the directoryName entries of a SAN extension value (RFC 5280
// GeneralNames). found reports that at least one was named. A name given
// twice is an error: a certificate must not be read two ways.
func (c *EKCertificate) parseTPMSubjectAltName(value []byte) (found bool, err error) {
	bad := func(format string, args ...any) (bool, error) {
		return false, fmt.Errorf("%w: subject alternative name: %s", ErrBadEKCertificate, fmt.Sprintf(format, args...))
	}
	var names asn1.RawValue
	rest, err := asn1.Unmarshal(value, &names)
	if err != nil || len(rest) != 0 || names.Class != asn1.ClassUniversal || names.Tag != asn1.TagSequence {
		return bad("not a SEQUENCE of GeneralNames")
	}
	for b := names.Bytes; len(b) > 0; {
		var gn asn1.RawValue
		if b, err = asn1.Unmarshal(b, &gn); err != nil {
			return bad("%v", err)
		}
		const directoryName = 4
		if gn.Class != asn1.ClassContextSpecific || gn.Tag != directoryName {
			continue // other name forms say nothing about the TPM
		}
		var rdns pkix.RDNSequence
		if rest, err := asn1.Unmarshal(gn.Bytes, &rdns); err != nil || len(rest) != 0 {
			return bad("directoryName does not parse")
		}
		for _, rdn := range rdns {
			for _, atv := range rdn {
				var dst *string
				switch {
				case atv.Type.Equal(oidTPMManufacturer):
					dst = &c.Manufacturer
				case atv.Type.Equal(oidTPMModel):
					dst = &c.Model
				case atv.Type.Equal(oidTPMVersion):
					dst = &c.Version
				default:
					continue
				}
				s, ok := atv.Value.(string)
				if !ok {
					return bad("%v is not a string", atv.Type)
				}
				if *dst != "" {
					return bad("%v is given twice", atv.Type)
				}
				if s == "" {
					return bad("%v is empty", atv.Type)
				}
				*dst = s
				found = true
			}
		}
	}
	return found, nil
}

// MatchesEK checks that the certificate certifies ek's public key (RSA
// modulus and exponent, or curve and point), the key the challenge blob is
// encrypted to. The error wraps ErrEKCertificateKeyMismatch.
func (c *EKCertificate) MatchesEK(ek *Public) error {
	if ek == nil {
		return fmt.Errorf("%w: no endorsement key", ErrEKCertificateKeyMismatch)
	}
	k, ok := c.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !k.Equal(ek.PublicKey()) {
		return fmt.Errorf("%w: certificate key %s, endorsement key %s", ErrEKCertificateKeyMismatch, describeKey(c.PublicKey), ek)
	}
	return nil
}

// describeKey names a key's kind for error messages.
func describeKey(k crypto.PublicKey) string {
	switch k := k.(type) {
	case *rsa.PublicKey:
		return fmt.Sprintf("RSA-%d", k.N.BitLen())
	case *ecdsa.PublicKey:
		return "ECC-" + k.Curve.Params().Name
	}
	return fmt.Sprintf("%T", k)
}

// EKHashSize is the size of an EK hash (EKHash).
const EKHashSize = sha256.Size

// EKHash returns the hash that identifies an endorsement key in an
// allow-list: SHA-256 of the DER SubjectPublicKeyInfo of its public key
// (rsaEncryption or id-ecPublicKey), the same value as
//
//	openssl x509 -in ek.pem -noout -pubkey | openssl pkey -pubin -outform DER | sha256sum
//
// for its certificate. It depends on the key only, not on the TPM template
// or encoding it came in.
func EKHash(ek *Public) ([EKHashSize]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(ek.PublicKey())
	if err != nil {
		return [EKHashSize]byte{}, fmt.Errorf("attest: encode the endorsement key: %w", err)
	}
	return sha256.Sum256(der), nil
}

// ParseEKHash reads an EK hash written as 64 hexadecimal digits (either
// case; an optional "sha256:" prefix is allowed).
func ParseEKHash(s string) ([EKHashSize]byte, error) {
	var h [EKHashSize]byte
	t := strings.TrimPrefix(strings.ToLower(strings.TrimSpace(s)), "sha256:")
	if len(t) != 2*EKHashSize {
		return h, fmt.Errorf("attest: EK hash %q: want %d hexadecimal digits", s, 2*EKHashSize)
	}
	for i := 0; i < EKHashSize; i++ {
		hi, ok1 := unhex(t[2*i])
		lo, ok2 := unhex(t[2*i+1])
		if !ok1 || !ok2 {
			return h, fmt.Errorf("attest: EK hash %q: not hexadecimal", s)
		}
		h[i] = hi<<4 | lo
	}
	return h, nil
}

// unhex decodes one lowercase hexadecimal digit.
func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}

// SameTPMName reports whether a manufacturer, model or version written in
// a group's settings (want) names the value of a certificate (got): equal
// ignoring case and surrounding space, as vendor ids are hexadecimal
// ("id:494E5443" and "id:494e5443" are one vendor).
func SameTPMName(want, got string) bool {
	return strings.EqualFold(strings.TrimSpace(want), strings.TrimSpace(got))
}
