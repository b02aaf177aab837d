package provision

import (
	"errors"
	"strings"
	"testing"

	"github.com/tpmdps/dpsd/internal/jsonlimit"
)

func TestParseRegisterRequestAccepts(t *testing.T) {
	for _, tc := range []struct {
		body    string
		regID   string
		tpm     bool
		payload string
	}{
		{body: ""},
		{body: " "},
		{body: "{}"},
		{body: "null"},
		{body: `{"payload": null}`},
		{body: `{"registrationId":"dev-1","payload":null}`, regID: "dev-1"},
		{body: `{"registrationId":"dev-1","unknown":[1,{"x":2}],"payload":{"a":"\u00e9"}}`, regID: "dev-1", payload: `{"a":"\u00e9"}`},
		{body: `{"tpm":{"endorsementKey":"AAA=","storageRootKey":"BBB="}}`, tpm: true},
		{body: `{"tpm":null}`},
		{body: `{"payload":"x"}`, payload: `"x"`},
	} {
		req, err := ParseRegisterRequest([]byte(tc.body))
		if err != nil {
			t.Errorf("%q: %v", tc.body, err)
			continue
		}
		if req.RegistrationID != tc.regID || (req.TPM != nil) != tc.tpm || string(req.Payload) != tc.payload {
			t.Errorf("%q: got %+v (payload %q)", tc.body, req, req.Payload)
		}
	}
}

func TestParseRegisterRequestRejects(t *testing.T) {
	for name, body := range map[string]string{
		"truncated":      `{"registrationId":`,
		"not an object":  `[1,2]`,
		"string":         `"x"`,
		"wrong type":     `{"registrationId": 5}`,
		"tpm wrong type": `{"tpm": "x"}`,
		"trailing":       `{} {}`,
		"too deep":       `{"payload":` + strings.Repeat("[", 40) + strings.Repeat("]", 40) + `}`,
		"too large":      `{"payload":"` + strings.Repeat("a", MaxRequestSize) + `"}`,
	} {
		_, err := ParseRegisterRequest([]byte(body))
		if !errors.Is(err, ErrBadRequest) {
			t.Errorf("%s: err = %v, want ErrBadRequest", name, err)
		}
	}
}

func TestParseRegisterRequestDepthLimit(t *testing.T) {
	// Brackets inside strings do not count; exactly MaxRequestDepth levels pass.
	ok := `{"payload":` + strings.Repeat("[", MaxRequestDepth-1) + `"[[[[{{{{\\"` + strings.Repeat("]", MaxRequestDepth-1) + `}`
	if _, err := ParseRegisterRequest([]byte(ok)); err != nil {
		t.Fatalf("depth %d refused: %v", MaxRequestDepth, err)
	}
	deep := `{"payload":` + strings.Repeat("[", MaxRequestDepth) + strings.Repeat("]", MaxRequestDepth) + `}`
	if _, err := ParseRegisterRequest([]byte(deep)); !errors.Is(err, ErrBadRequest) {
		t.Fatalf("depth %d accepted: %v", MaxRequestDepth+1, err)
	}
}

func FuzzParseRegisterRequest(f *testing.F) {
	for _, s := range []string{"", "{}", `{"payload":null}`, `{"registrationId":"a","tpm":{"endorsementKey":"AQ==","storageRootKey":"Ag=="},"payload":{"x":[1,2,{"y":"\ud83d\ude00"}]}}`, `[[[[`, `{"a":"\"}"}`,
		`{"registrationId":"my-edge-device","clientCertificateCsr":"` + fuzzEdgeCSR + `"}`,
		`{"payload":null,"csr":"` + fuzzEdgeCSR + `"}`, `{"csr":"MIIB","clientCertificateCsr":"MIIB"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := ParseRegisterRequest(body)
		if err != nil {
			if !errors.Is(err, ErrBadRequest) {
				t.Fatalf("error does not wrap ErrBadRequest: %v", err)
			}
			return
		}
		if len(body) > MaxRequestSize {
			t.Fatalf("accepted %d bytes", len(body))
		}
		if len(req.Payload) > 0 {
			if string(req.Payload) == "null" {
				t.Fatal("null payload kept")
			}
			if err := jsonlimit.CheckDepth(req.Payload, MaxRequestDepth); err != nil {
				t.Fatalf("accepted payload nested too deeply: %v", err)
			}
		}
		if _, err := EncodeBody(&RegistrationState{RegistrationID: req.RegistrationID, Payload: req.Payload}); err != nil {
			t.Fatalf("accepted request does not re-encode: %v", err)
		}
		// A CSR in it is either a 400 saying why or a request for the device.
		csr, err := parseDeviceCSR(req, "my-edge-device")
		var r *refusal
		switch {
		case err != nil && (!errors.As(err, &r) || r.status != 400 || r.public == ""):
			t.Fatalf("CSR refused with something else than a 400: %v", err)
		case err == nil && csr != nil && !asciiEqualFold(csr.req.Subject.CommonName, "my-edge-device"):
			t.Fatalf("CSR for %q accepted for my-edge-device", csr.req.Subject.CommonName)
		case err == nil && csr == nil && (req.CSR != "" || req.ClientCertificateCSR != ""):
			t.Fatal("a CSR field was ignored")
		}
	})
}

// fuzzEdgeCSR is IoT Edge's CSR for my-edge-device (P-256, base64 DER).
const fuzzEdgeCSR = "MIHTMHsCAQAwGTEXMBUGA1UEAwwObXktZWRnZS1kZXZpY2UwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAATs6ckj27wDQlc/9LfkCV8F3m7E6mjMq5igusbTV29+tiUf0tyl2zY6WpU1Pv0V1K3vPVEo1qARYQULS9Zitf7moAAwCgYIKoZIzj0EAwIDSAAwRQIgfGdKc/kQfUIqUhVkT2HKQevaynC8/HDQ1KdVKs4telkCIQDxZpMhfpYs4faoLkH7LfWaV91AvXhzBg4EpDhXFdoPvA=="
