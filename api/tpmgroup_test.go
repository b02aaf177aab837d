package api

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/pem"
	"math/big"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/tpmdps/dpsd/internal/testkit/ekca"
	"github.com/tpmdps/dpsd/store"
)

func TestTPMGroups(t *testing.T) {
	env := newTestEnv(t)
	ca := ekca.New(t, "vendor A")
	root, inter := string(ekca.PEM(ca.Root)), base64.StdEncoding.EncodeToString(ca.Intermediate.Raw)
	crl := string(pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: ca.CRL(t, big.NewInt(3))}))
	hash := strings.Repeat("Ab", 32)
	tpm := func(fields map[string]any) map[string]any {
		return map[string]any{"attestation": map[string]any{"type": "tpm", "tpm": fields}, "iotHubHostName": "hub.example.net"}
	}
	g := decodeAs[store.Group](t, env.request(http.MethodPut, "/enrollmentGroups/Factory-A", tpm(map[string]any{
		"ekCertificateRoots": []string{root}, "ekCertificateIntermediates": []string{inter}, "ekCertificateCrls": []string{crl},
		"tpmManufacturer": " id:494E5443 ", "tpmModel": "SLB9670",
		"endorsementKeyHashes": []string{hash, "sha256:" + strings.ToLower(hash), strings.Repeat("01", 32)},
	}), nil))
	a := g.Attestation.TPM
	if g.EnrollmentGroupID != "factory-a" || g.Attestation.Type != store.AttestationTPM || a == nil ||
		len(a.EKCertificateRoots) != 1 || len(a.EKCertificateIntermediates) != 1 || len(a.EKCertificateCRLs) != 1 ||
		a.TPMManufacturer != "id:494E5443" || a.TPMModel != "SLB9670" ||
		!slices.Equal(a.EndorsementKeyHashes, []string{strings.ToLower(hash), strings.Repeat("01", 32)}) {
		t.Fatalf("group %+v %+v", g, a)
	}
	got := decodeAs[store.Group](t, env.request(http.MethodGet, "/enrollmentGroups/factory-a", nil, nil))
	if got.Attestation.TPM == nil || got.Attestation.TPM.EKCertificateRoots[0] != root {
		t.Fatalf("GET %+v", got.Attestation)
	}

	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leaf := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Issue(t, &leafKey.PublicKey, ekca.EK{})}))
	for name, body := range map[string]map[string]any{
		"no roots":            tpm(map[string]any{}),
		"no tpm":              {"attestation": map[string]any{"type": "tpm"}},
		"an EK":               tpm(map[string]any{"ekCertificateRoots": []string{root}, "endorsementKey": testEK(t)}),
		"requireEk":           tpm(map[string]any{"ekCertificateRoots": []string{root}, "requireEkCertificate": true}),
		"bad root":            tpm(map[string]any{"ekCertificateRoots": []string{"MIIB"}}),
		"leaf as root":        tpm(map[string]any{"ekCertificateRoots": []string{leaf}}),
		"leaf as inter":       tpm(map[string]any{"ekCertificateRoots": []string{root}, "ekCertificateIntermediates": []string{leaf}}),
		"bad CRL":             tpm(map[string]any{"ekCertificateRoots": []string{root}, "ekCertificateCrls": []string{root}}),
		"bad hash":            tpm(map[string]any{"ekCertificateRoots": []string{root}, "endorsementKeyHashes": []string{"abc"}}),
		"long model":          tpm(map[string]any{"ekCertificateRoots": []string{root}, "tpmModel": strings.Repeat("m", 65)}),
		"control char":        tpm(map[string]any{"ekCertificateRoots": []string{root}, "tpmManufacturer": "id:\x01"}),
		"symmetric key too":   {"attestation": map[string]any{"type": "tpm", "tpm": map[string]any{"ekCertificateRoots": []string{root}}, "symmetricKey": map[string]any{}}},
		"too many hashes":     tpm(map[string]any{"ekCertificateRoots": []string{root}, "endorsementKeyHashes": slices.Repeat([]string{hash}, maxTPMGroupEKHashes+1)}),
		"too many CRLs":       tpm(map[string]any{"ekCertificateRoots": []string{root}, "ekCertificateCrls": slices.Repeat([]string{crl}, maxTPMGroupCRLs+1)}),
		"too many certs":      tpm(map[string]any{"ekCertificateRoots": slices.Repeat([]string{root}, maxTPMGroupCertificates+1)}),
		"roots not a list":    tpm(map[string]any{"ekCertificateRoots": root}),
		"unknown attestation": {"attestation": map[string]any{"type": "sgx"}},
	} {
		t.Run(name, func(t *testing.T) {
			r := env.request(http.MethodPut, "/enrollmentGroups/bad-group", body, nil)
			if r.status != 400 {
				t.Fatalf("status %d %s", r.status, r.body)
			}
		})
	}
	// An individual enrollment may require an EK certificate, and carries
	// no group fields.
	e := decodeAs[store.Enrollment](t, env.request(http.MethodPut, "/enrollments/dev-1", map[string]any{"attestation": map[string]any{"type": "tpm",
		"tpm": map[string]any{"endorsementKey": testEK(t), "requireEkCertificate": true}}}, nil))
	if e.Attestation.TPM == nil || !e.Attestation.TPM.RequireEKCertificate {
		t.Fatalf("enrollment %+v", e.Attestation.TPM)
	}
	env.request(http.MethodPut, "/enrollments/dev-2", map[string]any{"attestation": map[string]any{"type": "tpm",
		"tpm": map[string]any{"endorsementKey": testEK(t), "ekCertificateRoots": []string{root}}}}, nil).expectError(t, 400, codeInvalidArgument)
}
