package hubconn

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"github.com/tpmdps/dpsd/internal/connstr"
)

// ErrConnectionString: a connection string cannot be used.
var ErrConnectionString = errors.New("hubconn: invalid connection string")

// ConnectionString is a hub's service connection string:
// HostName=...;SharedAccessKeyName=...;SharedAccessKey=... The key is a
// secret: String never prints it (Redacted names it "****").
type ConnectionString struct {
	HostName string
	KeyName  string
	Key      []byte
}

// ParseConnectionString parses a service connection string. Fields are
// separated by ";" and split at their first "="; names are matched
// case-insensitively; HostName, SharedAccessKeyName and SharedAccessKey
// (base64 of 16-64 bytes) are required, other fields are ignored.
func ParseConnectionString(s string) (ConnectionString, error) {
	f, err := connstr.Parse(s)
	if err != nil {
		return ConnectionString{}, fmt.Errorf("%w: %w", ErrConnectionString, err)
	}
	if len(f.Key) < 16 || len(f.Key) > 64 {
		return ConnectionString{}, fmt.Errorf("%w: SharedAccessKey is not base64 of 16-64 bytes", ErrConnectionString)
	}
	return ConnectionString(f), nil
}

// Redacted is the connection string without its key: what may be shown.
func (cs ConnectionString) Redacted() string {
	return "HostName=" + cs.HostName + ";SharedAccessKeyName=" + cs.KeyName
}

// String returns the full connection string, key included (a secret).
func (cs ConnectionString) String() string {
	return cs.Redacted() + ";SharedAccessKey=" + base64.StdEncoding.EncodeToString(cs.Key)
}

// RedactConnectionString returns s without its SharedAccessKey field (and
// nothing else changed), for answers and logs; a string that does not
// parse keeps only its HostName and SharedAccessKeyName fields.
func RedactConnectionString(s string) string {
	var keep []string
	for _, part := range strings.Split(strings.TrimSpace(s), ";") {
		name, _, _ := strings.Cut(strings.TrimSpace(part), "=")
		switch strings.ToLower(strings.TrimSpace(name)) {
		case "hostname", "sharedaccesskeyname":
			keep = append(keep, strings.TrimSpace(part))
		}
	}
	return strings.Join(keep, ";")
}
