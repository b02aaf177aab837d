// Package connstr parses the shared-access connection strings of Azure
// services, "HostName=...;SharedAccessKeyName=...;SharedAccessKey=...", the
// form of both a provisioning service's and an IoT hub's. Its errors never
// carry the key.
package connstr

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// Fields are the three fields a connection string must have.
type Fields struct {
	HostName string
	KeyName  string
	Key      []byte // decoded; a secret
}

// Parse reads s. Fields are separated by ";" and split at their first "=";
// names are matched case-insensitively, other fields are ignored; HostName
// (a bare host name), SharedAccessKeyName and SharedAccessKey (base64) are
// required. Callers wrap the error with their own sentinel.
func Parse(s string) (Fields, error) {
	var f Fields
	var key string
	for _, part := range strings.Split(strings.TrimSpace(s), ";") {
		if part = strings.TrimSpace(part); part == "" {
			continue
		}
		name, value, ok := strings.Cut(part, "=")
		if !ok {
			return Fields{}, fmt.Errorf("field %q has no =", redactField(part))
		}
		switch strings.ToLower(strings.TrimSpace(name)) {
		case "hostname":
			f.HostName = strings.TrimSpace(value)
		case "sharedaccesskeyname":
			f.KeyName = strings.TrimSpace(value)
		case "sharedaccesskey":
			key = strings.TrimSpace(value)
		}
	}
	switch {
	case f.HostName == "":
		return Fields{}, errors.New("HostName is missing")
	case strings.ContainsAny(f.HostName, "/?#@ \t"):
		return Fields{}, fmt.Errorf("HostName %q is not a host name", f.HostName)
	case f.KeyName == "":
		return Fields{}, errors.New("SharedAccessKeyName is missing")
	case key == "":
		return Fields{}, errors.New("SharedAccessKey is missing")
	}
	k, err := base64.StdEncoding.DecodeString(key)
	if err != nil {
		return Fields{}, errors.New("SharedAccessKey is not base64")
	}
	f.Key = k
	return f, nil
}

// redactField shows a malformed field without what may be a key.
func redactField(f string) string {
	if len(f) > 24 {
		return f[:8] + "..."
	}
	return f
}
