package main

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/device"
	"github.com/tpmdps/dpsd/device/devtpm"
	"github.com/tpmdps/dpsd/device/tpmtransport"
	"github.com/tpmdps/dpsd/internal/version"
)

// Exit codes, documented in the package comment and in --help.
const (
	exitOK        = 0
	exitUsage     = 1
	exitRefused   = 2
	exitTransport = 3
	exitTPM       = 4
)

const exitCodesHelp = `Exit codes:
  0  assigned (provision), or success
  1  usage error or invalid configuration
  2  refused: CONNACK refusal, permanent 3xx/4xx answer, or final status failed/disabled
  3  transport failure, timeout, retries exhausted (429/5xx), or protocol error
  4  TPM error (opening the TPM or a TPM command)
`

const tpmHelp = `TPM selector: /dev/tpmrm0, /dev/tpm0, swtpm:HOST:PORT (swtpm raw TCP socket), or
simulator (in-process reference simulator; its state is lost when the command
exits, so "ek" then "provision" with --tpm simulator see two different TPMs and
EKs: use swtpm for demos).`

// errUsage marks command-line mistakes.
var errUsage = errors.New("usage")

// run is the whole command with its I/O injected, for in-process tests.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		topUsage(stderr)
		return exitUsage
	}
	var err error
	switch args[0] {
	case "ek":
		err = cmdEK(ctx, args[1:], stdout, stderr)
	case "provision":
		err = cmdProvision(ctx, args[1:], stdout, stderr)
	case "hub-sas":
		err = cmdHubSAS(ctx, args[1:], stdout, stderr)
	case "sas":
		err = cmdSAS(args[1:], stdout, stderr)
	case "version":
		if len(args) > 1 {
			fmt.Fprintln(stderr, "usage: dps-device version")
			return exitUsage
		}
		fmt.Fprintln(stdout, version.String("dps-device"))
		return exitOK
	case "help", "-h", "--help", "-help":
		topUsage(stdout)
		return exitOK
	default:
		fmt.Fprintf(stderr, "dps-device: unknown command %q\n", args[0])
		topUsage(stderr)
		return exitUsage
	}
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	code := exitCode(err)
	if err != nil {
		fmt.Fprintf(stderr, "dps-device: %v\n", err)
	}
	return code
}

func topUsage(w io.Writer) {
	fmt.Fprintf(w, `dps-device: device side of dpsd (DPS over MQTT with TPM, symmetric-key or X.509 attestation)

Commands:
  ek         print the TPM's endorsement key and default registration id (for enrollment)
  provision  provision the device (TPM by default; --symmetric-key, --group-key or
             --cert/--key instead) and print the result as JSON; with --issue-cert
             --cert-out F, also get an operational certificate for a key made in
             the TPM (or in software with --key-out F)
  hub-sas    sign an IoT hub SAS token with the hub key kept in the TPM
  sas        print the SAS token a symmetric-key device sends as its MQTT password
             (for raw MQTT tools such as mosquitto_rr)
  version    print the version

Run "dps-device COMMAND --help" for its flags.

%s

%s`, tpmHelp, exitCodesHelp)
}

// exitCode maps an error to the documented exit codes.
func exitCode(err error) int {
	if err == nil {
		return exitOK
	}
	if errors.Is(err, errUsage) || errors.Is(err, device.ErrInvalidConfig) || errors.Is(err, tpmtransport.ErrBadSelector) {
		return exitUsage
	}
	if errors.Is(err, device.ErrTPM) {
		return exitTPM
	}
	var e *device.Error
	if errors.As(err, &e) {
		if e.Refused() {
			return exitRefused
		}
		return exitTransport
	}
	return exitTransport
}

// newFlagSet makes a subcommand's flag set with help text and exit codes.
func newFlagSet(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: dps-device %s %s\n\nFlags:\n", name, synopsis)
		fs.PrintDefaults()
		fmt.Fprintf(fs.Output(), "\n%s\n\n%s", tpmHelp, exitCodesHelp)
	}
	return fs
}

// parse parses flags, turning mistakes into errUsage.
func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return fmt.Errorf("%w: unexpected arguments %q", errUsage, fs.Args())
	}
	return nil
}

// openTPM opens the selected TPM; any failure is a TPM error.
func openTPM(ctx context.Context, sel string) (transport.TPMCloser, error) {
	t, err := tpmtransport.Open(ctx, sel)
	if err != nil {
		if errors.Is(err, tpmtransport.ErrBadSelector) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: open TPM %s: %w", device.ErrTPM, sel, err)
	}
	return t, nil
}

func keyAlg(ecc bool) devtpm.Alg {
	if ecc {
		return devtpm.ECCP256
	}
	return devtpm.RSA2048
}

// ekInfo is what dps-device ek prints.
type ekInfo struct {
	EndorsementKey string `json:"endorsementKey"`
	RegistrationID string `json:"registrationId"`
	// EndorsementKeyHash is what a TPM group's allow-list holds (attest.EKHash).
	EndorsementKeyHash string `json:"endorsementKeyHash"`
	// EndorsementKeyCertificate is the EK certificate in NV (base64 DER), if any.
	EndorsementKeyCertificate string `json:"endorsementKeyCertificate,omitempty"`
	// TPMManufacturer and TPMModel are the certificate's names of the TPM.
	TPMManufacturer string `json:"tpmManufacturer,omitempty"`
	TPMModel        string `json:"tpmModel,omitempty"`
	// EKCertificateError says why the certificate could not be read or parsed.
	EKCertificateError string `json:"ekCertificateError,omitempty"`
}

// cmdEK prints the EK, its default registration id and hash, and the EK
// certificate the TPM holds (ekInfo).
func cmdEK(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("ek", "[--tpm SEL] [--ecc]", stderr)
	sel := fs.String("tpm", tpmtransport.DefaultSelector, "TPM selector")
	ecc := fs.Bool("ecc", false, "create an ECC P-256 EK (and SRK) if none is persisted (default RSA-2048)")
	if err := parse(fs, args); err != nil {
		return err
	}
	tpm, err := openTPM(ctx, *sel)
	if err != nil {
		return err
	}
	defer tpm.Close()
	att := &device.TPM{Device: tpm, KeyAlg: keyAlg(*ecc)}
	ek, err := att.EndorsementKey(ctx)
	if err != nil {
		return err
	}
	info := ekInfo{EndorsementKey: base64.StdEncoding.EncodeToString(ek), RegistrationID: attest.RegistrationID(ek)}
	pub, err := attest.ParsePublic(ek)
	if err != nil {
		return fmt.Errorf("%w: the endorsement key does not parse: %w", device.ErrTPM, err)
	}
	h, err := attest.EKHash(pub)
	if err != nil {
		return err
	}
	info.EndorsementKeyHash = hex.EncodeToString(h[:])
	cert, err := att.EndorsementKeyCertificate(ctx)
	switch {
	case err != nil:
		info.EKCertificateError = err.Error()
	case len(cert) > 0:
		info.EndorsementKeyCertificate = base64.StdEncoding.EncodeToString(cert)
		if c, err := attest.ParseEKCertificate(cert); err != nil {
			info.EKCertificateError = err.Error()
		} else {
			info.TPMManufacturer, info.TPMModel = c.Manufacturer, c.Model
			if err := c.MatchesEK(pub); err != nil {
				info.EKCertificateError = err.Error()
			}
		}
	}
	return writeJSON(stdout, info)
}

// handleFlag is a flag.Value for a TPM persistent handle in hex or decimal.
type handleFlag struct{ h *tpm2.TPMHandle }

// String formats the handle in hex (flag.Value).
func (f handleFlag) String() string {
	if f.h == nil || *f.h == 0 {
		return "0"
	}
	return fmt.Sprintf("0x%08x", uint32(*f.h))
}

// Set parses a persistent handle, hex (0x81000101) or decimal (flag.Value).
func (f handleFlag) Set(s string) error {
	v, err := strconv.ParseUint(s, 0, 32)
	if err != nil {
		return fmt.Errorf("not a handle: %w", err)
	}
	if v != 0 && v>>24 != 0x81 {
		return fmt.Errorf("0x%08x is not a persistent handle (0x81xxxxxx)", v)
	}
	*f.h = tpm2.TPMHandle(v)
	return nil
}

// cmdProvision provisions the device and prints the Result.
func cmdProvision(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("provision", "--host H [--port P] --id-scope S [--symmetric-key K | --group-key K | --cert F --key F | TPM flags] [--issue-cert --cert-out F [--key-out F]] [flags]", stderr)
	host := fs.String("host", "", "broker host name (required; also the TLS server name)")
	port := fs.Int("port", 0, "broker port (default 8883 TLS, 1883 with --plain, 443 with --websocket)")
	scope := fs.String("id-scope", "", "ID scope of the provisioning service (required)")
	regID := fs.String("registration-id", "", "registration id (default: derived from the TPM's EK, or the --cert subject CN; required with --symmetric-key and --group-key)")
	sel := fs.String("tpm", tpmtransport.DefaultSelector, "TPM selector")
	ecc := fs.Bool("ecc", false, "create ECC P-256 EK and SRK if none are persisted (default RSA-2048)")
	caFile := fs.String("ca-file", "", "PEM CA certificates to verify the broker (default: system roots)")
	plain := fs.Bool("plain", false, "plain TCP instead of TLS (local use only)")
	ws := fs.Bool("websocket", false, "MQTT over secure WebSocket (path "+device.WebSocketPath+")")
	timeout := fs.Duration("timeout", 60*time.Second, "total time allowed")
	payload := fs.String("payload", "", "JSON sent as the register request's payload")
	apiVersion := fs.String("api-version", device.DefaultAPIVersion, "DPS api-version")
	verbose := fs.Bool("verbose", false, "log each protocol step to stderr")
	var idHandle tpm2.TPMHandle
	hubHandle := device.DefaultHubKeyHandle
	fs.Var(handleFlag{&idHandle}, "identity-handle", "persist the challenge identity key at this handle, e.g. 0x81000100 (default: not persisted)")
	fs.Var(handleFlag{&hubHandle}, "hub-handle", "persist the hub key at this handle")
	symKey := fs.String("symmetric-key", "", "symmetric-key attestation with this individual enrollment key (base64; needs --registration-id)")
	groupKey := fs.String("group-key", "", "symmetric-key attestation with a key derived from this enrollment group key (base64; needs --registration-id)")
	ekCertFile := fs.String("ek-cert", "", "TPM: send this EK certificate (PEM or DER file) instead of the one in the TPM's NV")
	noEKCert := fs.Bool("no-ek-cert", false, "TPM: send no EK certificate")
	certFile := fs.String("cert", "", "X.509 attestation: PEM device certificate, optionally followed by its intermediates (with --key; registration id defaults to its subject CN)")
	keyFile := fs.String("key", "", "X.509 attestation: PEM private key of --cert")
	var cert certFlags
	cert.add(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := cert.check(fs); err != nil {
		return err
	}
	if *host == "" || *scope == "" {
		fs.Usage()
		return fmt.Errorf("%w: --host and --id-scope are required", errUsage)
	}
	if *plain && *ws {
		return fmt.Errorf("%w: --plain and --websocket exclude each other", errUsage)
	}
	if hubHandle == 0 {
		return fmt.Errorf("%w: --hub-handle must be a persistent handle", errUsage)
	}
	att, err := keyAttestation(fs, *symKey, *groupKey, *certFile, *keyFile, *regID, *plain)
	if err != nil {
		return err
	}
	cfg := device.Config{
		Host: *host, Port: *port, IDScope: *scope, RegistrationID: *regID,
		CAFile: *caFile, Timeout: *timeout, APIVersion: *apiVersion,
	}
	switch {
	case *plain:
		cfg.Transport = device.TransportTCP
	case *ws:
		cfg.Transport = device.TransportWebSocket
	}
	if *payload != "" {
		if !json.Valid([]byte(*payload)) {
			return fmt.Errorf("%w: --payload is not valid JSON", errUsage)
		}
		cfg.Payload = json.RawMessage(*payload)
	}
	if *verbose {
		cfg.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if *ekCertFile != "" && *noEKCert {
		return fmt.Errorf("%w: --ek-cert and --no-ek-cert exclude each other", errUsage)
	}
	var ekCert []byte
	if *ekCertFile != "" {
		if ekCert, err = readEKCertFile(*ekCertFile); err != nil {
			return err
		}
	}
	var tpmAtt *device.TPM
	if att == nil || cert.isTPM {
		tpm, err := openTPM(ctx, *sel)
		if err != nil {
			return err
		}
		defer tpm.Close()
		tpmAtt = &device.TPM{Device: tpm, KeyAlg: keyAlg(*ecc), IdentityKeyHandle: idHandle, HubKeyHandle: hubHandle,
			EKCertificate: ekCert, NoEKCertificate: *noEKCert}
	}
	cfg.Attestation = att
	if att == nil {
		cfg.Attestation = tpmAtt
	}
	if cert.issue {
		apiSet := false
		fs.Visit(func(f *flag.Flag) { apiSet = apiSet || f.Name == "api-version" })
		if !apiSet {
			cfg.APIVersion = "" // the device library's: the 2025-07-01-preview CSR shape
		}
		key, closeKey, err := cert.certificateKey(ctx, tpmAtt)
		if err != nil {
			return err
		}
		defer closeKey()
		cfg.CertificateKey = key
	}
	res, err := device.Provision(ctx, cfg)
	out := provisionOutput{Result: res}
	if err == nil && cert.issue {
		if len(res.CertificateChain) == 0 {
			return errNoResult
		}
		out.CertificateFile = cert.certOut
		out.CertificateKeyHandle, out.CertificateKeyFile, err = cert.keep(cfg.CertificateKey, res)
	}
	if res != nil {
		if werr := writeJSON(stdout, out); werr != nil && err == nil {
			err = werr
		}
	}
	return err
}

// cmdHubSAS prints a hub SAS token signed in the TPM.
func cmdHubSAS(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("hub-sas", "--hub HOST --device-id ID [--tpm SEL] [--ttl 1h] [--hub-handle H]", stderr)
	hub := fs.String("hub", "", "assigned hub host name (required)")
	deviceID := fs.String("device-id", "", "device id (required)")
	sel := fs.String("tpm", tpmtransport.DefaultSelector, "TPM selector")
	ttl := fs.Duration("ttl", time.Hour, "token lifetime")
	hubHandle := device.DefaultHubKeyHandle
	fs.Var(handleFlag{&hubHandle}, "hub-handle", "persistent handle of the hub key")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *hub == "" || *deviceID == "" || *ttl <= 0 || hubHandle == 0 {
		fs.Usage()
		return fmt.Errorf("%w: --hub, --device-id, a positive --ttl and a --hub-handle are required", errUsage)
	}
	tpm, err := openTPM(ctx, *sel)
	if err != nil {
		return err
	}
	defer tpm.Close()
	tok, err := device.SignHubSAS(tpm, hubHandle, device.HubResource(*hub, *deviceID), time.Now().Add(*ttl))
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(stdout, tok)
	return err
}

// cmdSAS prints the registration SAS token of a symmetric-key device: the
// CONNECT password that dps-device provision --symmetric-key (or
// --group-key) would send, for raw MQTT clients.
func cmdSAS(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("sas", "--id-scope S --registration-id ID (--symmetric-key K | --group-key K) [--ttl 1h]", stderr)
	scope := fs.String("id-scope", "", "ID scope of the provisioning service (required)")
	regID := fs.String("registration-id", "", "registration id (required)")
	symKey := fs.String("symmetric-key", "", "the individual enrollment's key (base64)")
	groupKey := fs.String("group-key", "", "the enrollment group's key (base64): the device key is derived from it over --registration-id")
	ttl := fs.Duration("ttl", time.Hour, "token lifetime")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *scope == "" || *regID == "" || *ttl <= 0 {
		fs.Usage()
		return fmt.Errorf("%w: --id-scope, --registration-id and a positive --ttl are required", errUsage)
	}
	if err := attest.ValidateIDScope(*scope); err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	if err := attest.ValidateRegistrationID(*regID); err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	att, err := keyAttestation(fs, *symKey, *groupKey, "", "", *regID, false)
	if err != nil {
		return err
	}
	k, ok := att.(*device.SymmetricKey)
	if !ok {
		return fmt.Errorf("%w: --symmetric-key or --group-key is required", errUsage)
	}
	k.Lifetime = *ttl
	creds, err := k.Credentials(context.Background(), device.Session{
		IDScope: *scope, RegistrationID: *regID,
		Resource: attest.RegistrationResource(*scope, *regID), Now: time.Now(),
	})
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(stdout, creds.Password)
	return err
}

// readEKCertFile reads an EK certificate file, PEM (one CERTIFICATE block)
// or DER, and returns the DER.
func readEKCertFile(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: --ek-cert: %w", errUsage, err)
	}
	if blk, _ := pem.Decode(data); blk != nil {
		if blk.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("%w: --ek-cert %s: a PEM %q block, want CERTIFICATE", errUsage, path, blk.Type)
		}
		data = blk.Bytes
	}
	if _, err := attest.ParseEKCertificate(data); err != nil {
		return nil, fmt.Errorf("%w: --ek-cert %s: %w", errUsage, path, err)
	}
	return data, nil
}

func writeJSON(w io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}
