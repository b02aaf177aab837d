package loadgen

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"sync"

	"github.com/tpmdps/dpsd/apiclient"
	"github.com/tpmdps/dpsd/softtpm"
	"github.com/tpmdps/dpsd/store"
)

// DeviceKind is how a simulated device attests.
type DeviceKind int

// Device kinds.
const (
	// TPMRSA is a TPM device with RSA-2048 EK and SRK (software emulated).
	TPMRSA DeviceKind = iota
	// TPMECC is a TPM device with ECC P-256 EK and SRK (software emulated).
	TPMECC
	// Symmetric is a symmetric-key device (individual enrollment).
	Symmetric
)

// String returns "tpm-rsa", "tpm-ecc" or "symmetric".
func (k DeviceKind) String() string {
	switch k {
	case TPMRSA:
		return "tpm-rsa"
	case TPMECC:
		return "tpm-ecc"
	case Symmetric:
		return "symmetric"
	}
	return fmt.Sprintf("DeviceKind(%d)", int(k))
}

// ParseDeviceKind is the inverse of DeviceKind.String.
func ParseDeviceKind(s string) (DeviceKind, error) {
	for _, k := range []DeviceKind{TPMRSA, TPMECC, Symmetric} {
		if strings.EqualFold(s, k.String()) {
			return k, nil
		}
	}
	return 0, fmt.Errorf("loadgen: unknown device kind %q (want tpm-rsa, tpm-ecc or symmetric)", s)
}

// Device is one simulated device.
type Device struct {
	// RegistrationID is the device's registration id (lowercase).
	RegistrationID string
	// Kind is how it attests.
	Kind DeviceKind
	// TPM is the software TPM of a TPM device (possibly shared with other
	// devices: the service does not require distinct EKs).
	TPM *softtpm.Device
	// SymmetricKey is a symmetric device's key (a secret).
	SymmetricKey []byte
	// CertificateKey, when not nil, is the key the device asks a
	// certificate for: its register body carries a CSR for it ("csr") and
	// its enrollment a credentialPolicyName.
	CertificateKey *ecdsa.PrivateKey

	registerBody []byte // precomputed register request body
}

// FleetSpec says which devices to make.
type FleetSpec struct {
	// Prefix starts every registration id: "{Prefix}-{kind}-{n}".
	Prefix string
	// Count of each kind.
	TPMRSA, TPMECC, Symmetric int
	// KeyPool is how many distinct software TPMs (EK and SRK pairs) each TPM
	// kind uses, shared round robin (generating an RSA key takes tens of
	// milliseconds). 0 means one per device.
	KeyPool int
	// CSR gives every device an ECDSA P-256 key and a certificate signing
	// request for it (subject CN its registration id) in its register body,
	// and its enrollment a credentialPolicyName: every provisioning is
	// issued a certificate.
	CSR bool
}

// CredentialPolicy is the credentialPolicyName of the enrollments of a
// fleet made with FleetSpec.CSR.
const CredentialPolicy = "dps-load"

// NewFleet generates the devices of spec (interleaving kinds, so that a mix
// runs mixed from the start).
func NewFleet(spec FleetSpec) ([]*Device, error) {
	if spec.Prefix == "" {
		spec.Prefix = "load"
	}
	pools := map[DeviceKind][]*softtpm.Device{}
	makeTPM := func(kind DeviceKind, n, count int) (*softtpm.Device, error) {
		size := spec.KeyPool
		if size <= 0 || size > count {
			size = count
		}
		p := pools[kind]
		if len(p) < size {
			alg := softtpm.RSA2048
			if kind == TPMECC {
				alg = softtpm.ECCP256
			}
			d, err := softtpm.NewDevice(rand.Reader, alg)
			if err != nil {
				return nil, fmt.Errorf("loadgen: software TPM: %w", err)
			}
			pools[kind] = append(p, d)
			return d, nil
		}
		return p[n%size], nil
	}
	counts := map[DeviceKind]int{TPMRSA: spec.TPMRSA, TPMECC: spec.TPMECC, Symmetric: spec.Symmetric}
	made := map[DeviceKind]int{}
	var out []*Device
	for {
		progress := false
		for _, kind := range []DeviceKind{TPMRSA, TPMECC, Symmetric} {
			n := made[kind]
			if n >= counts[kind] {
				continue
			}
			progress = true
			made[kind]++
			d := &Device{RegistrationID: strings.ToLower(fmt.Sprintf("%s-%s-%d", spec.Prefix, kind, n)), Kind: kind}
			body := map[string]any{"registrationId": d.RegistrationID}
			if kind == Symmetric {
				d.SymmetricKey = make([]byte, 32)
				if _, err := rand.Read(d.SymmetricKey); err != nil {
					return nil, fmt.Errorf("loadgen: symmetric key: %w", err)
				}
			} else {
				t, err := makeTPM(kind, n, counts[kind])
				if err != nil {
					return nil, err
				}
				d.TPM = t
				body["tpm"] = map[string]string{
					"endorsementKey": base64.StdEncoding.EncodeToString(t.EK.Public()),
					"storageRootKey": base64.StdEncoding.EncodeToString(t.SRK.Public()),
				}
			}
			if spec.CSR {
				key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
				if err != nil {
					return nil, fmt.Errorf("loadgen: certificate key: %w", err)
				}
				csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: d.RegistrationID}}, key)
				if err != nil {
					return nil, fmt.Errorf("loadgen: certificate signing request: %w", err)
				}
				d.CertificateKey = key
				body["csr"] = base64.StdEncoding.EncodeToString(csr)
			}
			b, err := json.Marshal(body)
			if err != nil {
				return nil, fmt.Errorf("loadgen: register body: %w", err)
			}
			d.registerBody = b
			out = append(out, d)
		}
		if !progress {
			return out, nil
		}
	}
}

// Enrollment returns the individual enrollment of d.
func (d *Device) Enrollment() *store.Enrollment {
	e := &store.Enrollment{RegistrationID: d.RegistrationID, EnrollmentSettings: store.EnrollmentSettings{ProvisioningStatus: store.StatusEnabled}}
	if d.CertificateKey != nil {
		e.CredentialPolicyName = CredentialPolicy
	}
	if d.Kind == Symmetric {
		k := base64.StdEncoding.EncodeToString(d.SymmetricKey)
		e.Attestation = store.Attestation{Type: store.AttestationSymmetricKey,
			SymmetricKey: &store.SymmetricKeyAttestation{PrimaryKey: k, SecondaryKey: k}}
	} else {
		e.Attestation = store.Attestation{Type: store.AttestationTPM,
			TPM: &store.TPMAttestation{EndorsementKey: base64.StdEncoding.EncodeToString(d.TPM.EK.Public())}}
	}
	return e
}

// EnrollBatch is how many enrollments one bulk request carries.
const EnrollBatch = 1000

// Enroll creates (or replaces) the enrollments of devices through the
// service API's bulk operation, EnrollBatch at a time.
func Enroll(ctx context.Context, c *apiclient.Client, devices []*Device) error {
	for i := 0; i < len(devices); i += EnrollBatch {
		batch := devices[i:min(i+EnrollBatch, len(devices))]
		es := make([]*store.Enrollment, len(batch))
		for j, d := range batch {
			es[j] = d.Enrollment()
		}
		res, err := c.BulkEnrollments(ctx, "update", es)
		if err != nil {
			return fmt.Errorf("loadgen: bulk enrollment of %d devices: %w", len(es), err)
		}
		if len(res.Errors) > 0 {
			e := res.Errors[0]
			return fmt.Errorf("loadgen: bulk enrollment: %d of %d failed, first %s: %d %s",
				len(res.Errors), len(es), e.RegistrationID, e.ErrorCode, e.ErrorStatus)
		}
	}
	return nil
}

// cleanupWorkers bounds the registration deletions in flight.
const cleanupWorkers = 8

// Unenroll deletes what Enroll and a run left in the service: the devices'
// enrollments (bulk delete, EnrollBatch at a time) and their registration
// records (one request each, a few at once; a device that never registered
// has none). It returns how many of each were deleted.
func Unenroll(ctx context.Context, c *apiclient.Client, devices []*Device) (enrollments, registrations int, err error) {
	for i := 0; i < len(devices); i += EnrollBatch {
		batch := devices[i:min(i+EnrollBatch, len(devices))]
		es := make([]*store.Enrollment, len(batch))
		for j, d := range batch {
			es[j] = d.Enrollment()
		}
		res, err := c.BulkEnrollments(ctx, apiclient.BulkDelete, es)
		if err != nil {
			return enrollments, 0, fmt.Errorf("loadgen: bulk delete of %d enrollments: %w", len(es), err)
		}
		gone := 0
		for _, e := range res.Errors {
			if e.ErrorCode/1000 != 404 {
				return enrollments, 0, fmt.Errorf("loadgen: bulk delete: %d of %d failed, first %s: %d %s",
					len(res.Errors), len(es), e.RegistrationID, e.ErrorCode, e.ErrorStatus)
			}
			gone++
		}
		enrollments += len(es) - gone
	}
	var (
		mu    sync.Mutex
		first error
		next  = make(chan string)
		wg    sync.WaitGroup
	)
	for range min(cleanupWorkers, len(devices)) {
		wg.Go(func() {
			for id := range next {
				err := c.DeleteRegistration(ctx, id, "")
				mu.Lock()
				switch {
				case err == nil:
					registrations++
				case apiclient.IsStatus(err, 404):
				case first == nil:
					first = fmt.Errorf("loadgen: deleting registration %s: %w", id, err)
				}
				mu.Unlock()
			}
		})
	}
	for _, d := range devices {
		mu.Lock()
		stop := first != nil
		mu.Unlock()
		if stop || ctx.Err() != nil {
			break
		}
		next <- d.RegistrationID
	}
	close(next)
	wg.Wait()
	if first == nil && ctx.Err() != nil {
		first = ctx.Err()
	}
	return enrollments, registrations, first
}
