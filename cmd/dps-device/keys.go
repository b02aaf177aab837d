package main

import (
	"encoding/base64"
	"flag"
	"fmt"
	"slices"
	"strings"

	"github.com/tpmdps/dpsd/device"
)

// keyAttestation returns the attestation chosen by --symmetric-key,
// --group-key or --cert/--key, or nil for the TPM (the default). The
// methods exclude each other and the TPM-only flags; symmetric keys need
// --registration-id, and X.509 needs TLS (not --plain).
func keyAttestation(fs *flag.FlagSet, symKey, groupKey, certFile, keyFile, regID string, plain bool) (device.Attestation, error) {
	var chosen []string
	for _, m := range []struct{ name, value string }{
		{"--symmetric-key", symKey}, {"--group-key", groupKey}, {"--cert/--key", certFile + keyFile},
	} {
		if m.value != "" {
			chosen = append(chosen, m.name)
		}
	}
	switch len(chosen) {
	case 0:
		return nil, nil
	case 1:
	default:
		return nil, fmt.Errorf("%w: %s exclude each other", errUsage, strings.Join(chosen, " and "))
	}
	tpmOnly := []string{"tpm", "ecc", "identity-handle", "hub-handle", "ek-cert", "no-ek-cert"}
	if fs.Lookup("issue-cert") != nil && fs.Lookup("issue-cert").Value.String() == "true" && fs.Lookup("key-out").Value.String() == "" {
		tpmOnly = tpmOnly[1:] // the certificate key is in the TPM: --tpm says which
	}
	var tpmSet []string
	fs.Visit(func(f *flag.Flag) {
		if slices.Contains(tpmOnly, f.Name) {
			tpmSet = append(tpmSet, "--"+f.Name)
		}
	})
	if len(tpmSet) > 0 {
		return nil, fmt.Errorf("%w: %s cannot be used with %s", errUsage, chosen[0], strings.Join(tpmSet, ", "))
	}
	switch {
	case symKey != "":
		if regID == "" {
			return nil, fmt.Errorf("%w: --symmetric-key needs --registration-id", errUsage)
		}
		key, err := decodeKey("--symmetric-key", symKey)
		if err != nil {
			return nil, err
		}
		k, err := device.NewSymmetricKey(key)
		if err != nil {
			return nil, err
		}
		return k, nil
	case groupKey != "":
		if regID == "" {
			return nil, fmt.Errorf("%w: --group-key needs --registration-id (the device key is derived from it)", errUsage)
		}
		key, err := decodeKey("--group-key", groupKey)
		if err != nil {
			return nil, err
		}
		k, err := device.NewGroupSymmetricKey(key, regID)
		if err != nil {
			return nil, err
		}
		return k, nil
	default:
		if certFile == "" || keyFile == "" {
			return nil, fmt.Errorf("%w: --cert and --key go together", errUsage)
		}
		if plain {
			return nil, fmt.Errorf("%w: --cert needs TLS or --websocket, not --plain", errUsage)
		}
		x, err := device.LoadX509(certFile, keyFile)
		if err != nil {
			return nil, err
		}
		return x, nil
	}
}

// decodeKey decodes a base64 key flag.
func decodeKey(flagName, v string) ([]byte, error) {
	key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(v))
	if err != nil {
		return nil, fmt.Errorf("%w: %s is not base64: %w", errUsage, flagName, err)
	}
	return key, nil
}
