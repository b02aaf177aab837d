// Package record holds what every store engine does the same way to the
// records it keeps: the validation and normalisation of ids used as keys,
// the reading of If-Match etags, and deep copies, so that bbolt and etcd
// agree on which ids exist and which etags match.
package record

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/tpmdps/dpsd/store"
)

// Lower is the key normalisation of registration and group ids: DPS ids are
// case-insensitive.
func Lower(id string) string { return strings.ToLower(id) }

// CheckID validates an id used as a key; what names it in the error
// ("registration id"). The error wraps store.ErrInvalidID.
func CheckID(what, id string) error {
	switch {
	case id == "":
		return fmt.Errorf("%w: empty %s", store.ErrInvalidID, what)
	case len(id) > store.MaxIDLength:
		return fmt.Errorf("%w: %s is %d bytes, the limit is %d", store.ErrInvalidID, what, len(id), store.MaxIDLength)
	case strings.IndexByte(id, 0) >= 0:
		return fmt.Errorf("%w: %s contains a NUL byte", store.ErrInvalidID, what)
	}
	return nil
}

// Key validates a registration or group id and returns its key form.
func Key(what, id string) (string, error) {
	if err := CheckID(what, id); err != nil {
		return "", err
	}
	return Lower(id), nil
}

// ETag returns the bare etag of an If-Match value, which may be HTTP-style
// quoted or weak (W/"...").
func ETag(ifMatch string) string {
	ifMatch = strings.TrimSpace(ifMatch)
	ifMatch = strings.TrimPrefix(ifMatch, "W/")
	if len(ifMatch) >= 2 && ifMatch[0] == '"' && ifMatch[len(ifMatch)-1] == '"' {
		ifMatch = ifMatch[1 : len(ifMatch)-1]
	}
	return ifMatch
}

// Clone deep-copies a record through its JSON form, so that an engine never
// retains or modifies the caller's record. Errors wrap store.ErrInvalidRecord.
func Clone[T any](in *T) (*T, error) {
	b, err := json.Marshal(in)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", store.ErrInvalidRecord, err)
	}
	out := new(T)
	if err := json.Unmarshal(b, out); err != nil {
		return nil, fmt.Errorf("%w: %w", store.ErrInvalidRecord, err)
	}
	return out, nil
}

// Registration is the stored form of a store.Registration in both engines:
// HubKey sealed, AttestationHash (a hash, not a secret) beside it.
type Registration struct {
	*store.Registration
	Sealed  []byte `json:"sealed,omitempty"`
	AttHash []byte `json:"attestationHash,omitempty"`
}

// LinkedHub is the stored form of a store.LinkedHub in both engines: its
// secrets blanked and sealed beside it.
type LinkedHub struct {
	*store.LinkedHub
	Sealed []byte `json:"sealed,omitempty"`
}

// HubSecrets is the plaintext sealed for a linked hub.
type HubSecrets struct {
	ConnectionString string `json:"c,omitempty"`
	WebhookSecret    string `json:"w,omitempty"`
}

// Job is the stored form of a store.Job in both engines: Secret sealed.
type Job struct {
	*store.Job
	Sealed []byte `json:"sealed,omitempty"`
}

// CheckJob validates a job for writing: an id usable as a key, and data
// that is JSON when present.
func CheckJob(j *store.Job) error {
	if j == nil {
		return fmt.Errorf("%w: nil job", store.ErrInvalidRecord)
	}
	if err := CheckID("job id", j.ID); err != nil {
		return err
	}
	if len(j.Data) > 0 && !json.Valid(j.Data) {
		return fmt.Errorf("%w: job %q: data is not JSON", store.ErrInvalidRecord, j.ID)
	}
	return nil
}

// SplitLinkedHub prepares a linked hub for writing: out is the copy to
// return to the caller, stored the copy to write, with its secrets and etag
// blanked, and secrets the JSON of HubSecrets to seal beside it (nil when
// the hub has none).
func SplitLinkedHub(h *store.LinkedHub) (out, stored *store.LinkedHub, secrets []byte, err error) {
	if out, err = Clone(h); err != nil {
		return nil, nil, nil, err
	}
	if stored, err = Clone(out); err != nil {
		return nil, nil, nil, err
	}
	sec := HubSecrets{ConnectionString: out.ConnectionString}
	if out.Webhook != nil {
		sec.WebhookSecret = out.Webhook.Secret
		stored.Webhook.Secret = ""
	}
	stored.ConnectionString, stored.ETag = "", ""
	if sec == (HubSecrets{}) {
		return out, stored, nil, nil
	}
	if secrets, err = json.Marshal(sec); err != nil {
		return nil, nil, nil, fmt.Errorf("%w: %w", store.ErrInvalidRecord, err)
	}
	return out, stored, secrets, nil
}
