package config

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
)

// Sources of an effective value, in precedence order (highest first).
const (
	SourceFlag    = "flag"
	SourceEnv     = "env"
	SourceFile    = "file"
	SourceDefault = "default"
	// SourceGenerated: no setting names the value; dpsd generated it and
	// keeps it in the data directory (the ID scope). Effective never
	// reports it: the command that reads the data directory does.
	SourceGenerated = "generated"
)

// Redacted replaces the value of a secret setting that is set.
const Redacted = "<redacted>"

// Value is one setting's effective value and where it came from.
type Value struct {
	// Name is the setting (flag name and config file key).
	Name string `json:"name"`
	// Env is its environment variable.
	Env string `json:"env"`
	// Value is the text that was applied (Redacted for a set secret).
	Value string `json:"value"`
	// Source is SourceFlag, SourceEnv, SourceFile or SourceDefault.
	Source string `json:"source"`
	// Secret marks a setting whose value is never shown.
	Secret bool `json:"secret,omitempty"`
}

// Effective loads the configuration exactly as Load does (same arguments,
// same precedence: flags > environment > config file > defaults, same
// validation) and reports, for every setting in help order, the value that
// won and its source, with secrets redacted. The config file itself is
// reported as the first Value, named "config".
func Effective(name, usageHead string, args []string, lookupEnv func(string) (string, bool), out io.Writer) ([]Value, Config, error) {
	c, err := Load(name, usageHead, args, lookupEnv, out)
	if err != nil {
		return nil, Config{}, err
	}
	table := settings()
	flags, err := flagValues(table, args)
	if err != nil {
		return nil, Config{}, err
	}
	var fileVals map[string]string
	if c.ConfigFile != "" {
		if fileVals, err = fileValues(c.ConfigFile); err != nil {
			return nil, Config{}, err
		}
	}
	cfgSource := SourceDefault
	if _, ok := flags[configFlag]; ok {
		cfgSource = SourceFlag
	} else if c.ConfigFile != "" {
		cfgSource = SourceEnv
	}
	vals := []Value{{Name: configFlag, Env: envName(configFlag), Value: c.ConfigFile, Source: cfgSource}}
	for _, s := range table {
		v := Value{Name: s.name, Env: envName(s.name), Value: s.def, Source: SourceDefault, Secret: s.secret()}
		if fv, ok := fileVals[s.name]; ok {
			v.Value, v.Source = fv, SourceFile
		}
		if ev, ok := lookupEnv(envName(s.name)); ok {
			v.Value, v.Source = ev, SourceEnv
		}
		if fv, ok := flags[s.name]; ok {
			v.Value, v.Source = fv, SourceFlag
		}
		v.Value = redact(v.Value, v.Secret)
		vals = append(vals, v)
	}
	return vals, c, nil
}

// flagValues returns the last value given to each flag in args (Load has
// already checked them).
func flagValues(table []setting, args []string) (map[string]string, error) {
	fs := flag.NewFlagSet("effective", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	got := make(map[string]string)
	record := func(name string) func(string) error {
		return func(v string) error { got[name] = v; return nil }
	}
	fs.Func(configFlag, "", record(configFlag))
	for _, s := range table {
		fs.Func(s.name, "", record(s.name))
	}
	if err := fs.Parse(args); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return got, nil
}

// fileValues returns the config file's values as setting text.
func fileValues(path string) (map[string]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	var raw map[string]json.RawMessage
	if err := json.NewDecoder(bytes.NewReader(data)).Decode(&raw); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrInvalid, path, err)
	}
	out := make(map[string]string, len(raw))
	for k, v := range raw {
		s, err := jsonValue(v)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: key %q: %w", ErrInvalid, path, k, err)
		}
		out[k] = s
	}
	return out, nil
}

// notSecretNames are settings whose names look secret but hold no secret
// (tls-key, issuer-key and outbound-client-key name files; the files are the
// secrets).
func notSecretNames() map[string]bool {
	return map[string]bool{"tls-key": true, "issuer-key": true, "outbound-client-key": true}
}

// secret reports whether the setting's value must never be shown: its name
// says so (isSecret) and its value is not a duration or a number, which
// cannot hold a key (sas-max-lifetime names SAS tokens but is a duration).
func (s setting) secret() bool { return !s.set.quantity && isSecret(s.name) }

// isSecret reports whether a setting's value must never be shown: its name
// says it is a key, password, token, secret, credential or connection
// string (a new setting so named is redacted unless listed in notSecretNames).
func isSecret(name string) bool {
	if notSecretNames()[name] {
		return false
	}
	n := strings.ToLower(name)
	for _, w := range []string{"password", "secret", "token", "credential", "connection-string", "sas"} {
		if strings.Contains(n, w) {
			return true
		}
	}
	return strings.HasSuffix(n, "-key") || n == "key"
}

// redact hides a secret value that is set, and the password of any URL.
func redact(v string, secret bool) string {
	if secret {
		if v == "" {
			return ""
		}
		return Redacted
	}
	if strings.Contains(v, "@") && strings.Contains(v, "://") {
		if u, err := url.Parse(v); err == nil && u.User != nil {
			if _, has := u.User.Password(); has {
				u.User = url.UserPassword(u.User.Username(), "xxxxx")
				return u.String()
			}
		}
	}
	return v
}
