// Package provision is the provisioning service with no transport in it: it
// authenticates devices, runs the TPM challenge, allocates hubs, records
// registrations and answers polls. It takes request structs and returns
// response structs, so it is tested without a broker and could sit behind
// another transport (HTTP) unchanged. The MQTT hooks only translate.
package provision

// This file fixes the exported API that the broker hooks build against while
// the implementation lands. Each stub is replaced by its implementation file.

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"time"

	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/store"
)

var errNotImplemented = errors.New("provision: not implemented yet")

// Config configures a Service.
type Config struct {
	IDScope           string
	Store             store.Store
	ChallengeSecret   []byte        // 32+ random bytes, persisted by the caller
	ChallengeLifetime time.Duration // default 10 min
	OperationLifetime time.Duration // how long a finished operation can be polled, default 1 h
	SAS               attest.SASPolicy
	Hubs              []string // hubs for the hashed allocation when an enrollment names none
	RetryAfter        time.Duration
	Rand              io.Reader        // default crypto/rand.Reader
	Now               func() time.Time // default time.Now
	Logger            *slog.Logger
}

// Service is the provisioning service. Safe for concurrent use.
type Service struct{ cfg Config }

// New validates cfg and returns a Service.
func New(cfg Config) (*Service, error) { return nil, errNotImplemented }

// AuthMethod is how a connection authenticated.
type AuthMethod int

// Authentication methods, weakest first (a takeover needs at least as strong).
const (
	AuthRestricted   AuthMethod = iota // no credential: may only ask for a TPM challenge
	AuthTPM                            // SAS signed with a TPM challenge key
	AuthSymmetricKey                   // SAS signed with an enrollment or group-derived key
	AuthX509                           // TLS client certificate
)

// Identity is the outcome of authenticating a connection, kept for its lifetime.
type Identity struct {
	RegistrationID string // lowercased
	Method         AuthMethod
	GroupID        string // enrollment group that matched, if any
	ChallengeRef   string // TPM: the challenge reference that authenticated
	Certificate    *x509.Certificate
}

// Connect describes a CONNECT for authentication.
type Connect struct {
	ClientID   string
	Username   string
	Password   []byte // SAS token, nil when absent
	PeerChain  []*x509.Certificate
	RemoteAddr string
	TrackingID string
}

// Authenticate decides what a CONNECT may do. A nil error with Method
// AuthRestricted means a restricted session; an error means CONNACK refusal.
func (s *Service) Authenticate(ctx context.Context, c Connect) (Identity, error) {
	return Identity{}, errNotImplemented
}

// TPMKeys are the base64 TPM2B_PUBLIC keys a TPM device sends.
type TPMKeys struct {
	EndorsementKey string `json:"endorsementKey"`
	StorageRootKey string `json:"storageRootKey"`
}

// RegisterRequest is a register request's body plus its context.
type RegisterRequest struct {
	RegistrationID string          `json:"registrationId"`
	TPM            *TPMKeys        `json:"tpm,omitempty"`
	Payload        json.RawMessage `json:"payload,omitempty"`
}

// Response is a DPS answer: an HTTP status, an optional retry-after, and a
// JSON body. Body is one of the response types of this package.
type Response struct {
	Status     int
	RetryAfter time.Duration // < 0: no retry-after
	Body       any
}

// Register handles a register request from an identified connection.
func (s *Service) Register(ctx context.Context, id Identity, req RegisterRequest, trackingID string) Response {
	return Response{}
}

// Poll answers an operation status request.
func (s *Service) Poll(ctx context.Context, id Identity, operationID, trackingID string) Response {
	return Response{}
}

// EncodeBody writes a response body as pure-ASCII JSON (every non-ASCII
// character escaped as \uXXXX).
func EncodeBody(body any) ([]byte, error) { return nil, errNotImplemented }
