package main

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/google/go-tpm/tpm2"

	"github.com/tpmdps/dpsd/device"
	"github.com/tpmdps/dpsd/device/devtpm"
)

// certFlags are provision's flags of an operational certificate.
type certFlags struct {
	issue            bool
	certOut, keyOut  string
	keyType          string
	handle           tpm2.TPMHandle
	handleSet, isTPM bool
}

// add declares the flags on fs.
func (c *certFlags) add(fs *flag.FlagSet) {
	c.handle = devtpm.CertKeyHandle
	fs.BoolVar(&c.issue, "issue-cert", false, "ask the service for an operational certificate (a CSR in the register request); needs --cert-out. "+
		"The key is made in the TPM (--tpm) and persisted at --cert-key-handle, or in software with --key-out")
	fs.StringVar(&c.certOut, "cert-out", "", "write the issued certificate here (PEM: the certificate, then its intermediates)")
	fs.StringVar(&c.keyOut, "key-out", "", "make the certificate's key in software and write it here (PKCS #8 PEM, 0600), for devices without a TPM")
	fs.StringVar(&c.keyType, "cert-key-type", "ecdsa-p256", "key type with --key-out: ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072 or rsa-4096 (a TPM key is ECDSA P-256)")
	fs.Var(handleFlag{&c.handle}, "cert-key-handle", "persistent handle of the certificate key in the TPM; the key of an earlier certificate there is replaced once the new one is issued")
}

// check validates the combination after parsing.
func (c *certFlags) check(fs *flag.FlagSet) error {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	c.handleSet = set["cert-key-handle"]
	switch {
	case !c.issue && (c.certOut != "" || c.keyOut != "" || set["cert-key-type"] || c.handleSet):
		return fmt.Errorf("%w: --cert-out, --key-out, --cert-key-type and --cert-key-handle need --issue-cert", errUsage)
	case !c.issue:
		return nil
	case c.certOut == "":
		return fmt.Errorf("%w: --issue-cert needs --cert-out", errUsage)
	case c.keyOut != "" && c.handleSet:
		return fmt.Errorf("%w: --key-out (a software key) and --cert-key-handle (a TPM key) exclude each other", errUsage)
	case c.keyOut == "" && set["cert-key-type"]:
		return fmt.Errorf("%w: --cert-key-type is for --key-out; a TPM key is ECDSA P-256", errUsage)
	case c.handle == 0:
		return fmt.Errorf("%w: --cert-key-handle must be a persistent handle", errUsage)
	case c.keyOut != "" && !slices.Contains(softwareKeyTypes(), c.keyType):
		return fmt.Errorf("%w: --cert-key-type %q (want %s)", errUsage, c.keyType, strings.Join(softwareKeyTypes(), ", "))
	}
	c.isTPM = c.keyOut == ""
	return nil
}

// softwareKeyTypes are the values of --cert-key-type.
func softwareKeyTypes() []string {
	return []string{"ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-3072", "rsa-4096"}
}

// softwareKey generates a key of type kt.
func softwareKey(kt string) (crypto.Signer, error) {
	switch kt {
	case "ecdsa-p256":
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "ecdsa-p384":
		return ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case "rsa-2048":
		return rsa.GenerateKey(rand.Reader, 2048)
	case "rsa-3072":
		return rsa.GenerateKey(rand.Reader, 3072)
	case "rsa-4096":
		return rsa.GenerateKey(rand.Reader, 4096)
	}
	return nil, fmt.Errorf("%w: --cert-key-type %q (want ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072 or rsa-4096)", errUsage, kt)
}

// certificateKey makes the key to certify: in software, or in the TPM
// under its SRK (tpmAtt is the device's TPM). close discards a key that
// was not kept (a transient TPM key is flushed).
func (c *certFlags) certificateKey(ctx context.Context, tpmAtt *device.TPM) (key crypto.Signer, closeKey func(), err error) {
	if !c.isTPM {
		k, err := softwareKey(c.keyType)
		return k, func() {}, err
	}
	k, err := tpmAtt.NewCertificateKey(ctx)
	if err != nil {
		return nil, nil, err
	}
	return k, func() { _ = k.Close() }, nil
}

// keep stores what was issued: the key (persisted at the handle, or
// written to --key-out) and then the certificate. It returns where the key
// is, for the output.
func (c *certFlags) keep(key crypto.Signer, res *device.Result) (keyHandle, keyFile string, err error) {
	if c.isTPM {
		k := key.(*devtpm.SigningKey)
		if err := k.Persist(c.handle); err != nil {
			return "", "", fmt.Errorf("%w: persist the certificate key at 0x%08x: %w", device.ErrTPM, uint32(c.handle), err)
		}
		keyHandle = fmt.Sprintf("0x%08x", uint32(c.handle))
	} else {
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return "", "", fmt.Errorf("encode the certificate key: %w", err)
		}
		if err := writeFileAtomic(c.keyOut, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
			return "", "", err
		}
		keyFile = c.keyOut
	}
	if err := writeFileAtomic(c.certOut, res.CertificatePEM(), 0o644); err != nil {
		return "", "", err
	}
	return keyHandle, keyFile, nil
}

// writeFileAtomic writes data to path through a temporary file in the same
// directory, so that a reader never sees half a file.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// provisionOutput is what provision prints: the Result and, with
// --issue-cert, where the certificate and its key are.
type provisionOutput struct {
	*device.Result
	CertificateFile      string `json:"certificateFile,omitempty"`
	CertificateKeyHandle string `json:"certificateKeyHandle,omitempty"`
	CertificateKeyFile   string `json:"certificateKeyFile,omitempty"`
}

// errNoResult: keep was asked to store a Result that holds no certificate.
var errNoResult = errors.New("no certificate issued")
