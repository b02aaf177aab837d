// Package config holds the server's settings and loads them from, in order
// of precedence, command-line flags, DPSD_* environment variables, a JSON
// config file and the embedded defaults. Every setting is declared once in a
// table that drives the flags, the environment names, the file keys and the
// help text, so the three can never disagree.
package config

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"
)

// ErrInvalid: a setting has a value that cannot be used.
var ErrInvalid = errors.New("config: invalid setting")

// EnvPrefix starts every environment variable name.
const EnvPrefix = "DPSD_"

// Values of the issuer setting.
const (
	// IssuerBuiltin: dpsd signs operational certificates itself, with the
	// CA of issuer-cert and issuer-key, or one it generates in the data
	// directory.
	IssuerBuiltin = "builtin"
	// IssuerNone: no certificates are issued; a device's CSR gets the
	// answer IoT Edge falls back on.
	IssuerNone = "none"
)

// PlaceholderHub is the default of hubs: a name that is no IoT hub, so that
// a server that was never told its hubs says so (serve warns at start).
const PlaceholderHub = "hub.localdomain"

// Config is the server's configuration. Each field is one setting of the
// table in settings(), which documents it (and `dpsd serve --help` prints).
type Config struct {
	DataDir           string
	Store             string        // "" = bolt in DataDir; bolt:PATH; etcd://host:port[,...]/prefix
	SecretsDir        string        // cluster secrets directory ("" = secrets in DataDir)
	EtcdCA            string        // CA file of the etcd endpoints ("" = plain HTTP to etcd)
	EtcdCert, EtcdKey string        // etcd client certificate and key
	IDScope           string        // "" = generated and kept in the data directory
	MQTTAddr          string        // plain MQTT, "" = off
	MQTTSAddr         string        // MQTT over TLS, "" = off
	WSSAddr           string        // MQTT over secure WebSocket, "" = off
	APIAddr           string        // service API over HTTPS, "" = off
	MetricsAddr       string        // plain-HTTP /metrics listener, "" = /metrics on APIAddr
	APIHostName       string        // sr of service SAS tokens, HostName of the connection string
	APIReadTimeout    time.Duration // reading one API request, headers and body; 0 = none
	APIWriteTimeout   time.Duration // from a request's headers to the end of its answer; 0 = none
	TLSCert, TLSKey   string        // "" = the development CA's server certificate
	TLSNames          []string
	ChallengeLifetime time.Duration
	Hubs              []string
	RetryAfter        time.Duration
	SASMaxLifetime    time.Duration
	ConnectTimeout    time.Duration
	ShutdownTimeout   time.Duration

	ConnsPerAddress         int
	ConnRatePerAddress      int
	IPv6PrefixLen           int
	APIConnsPerAddress      int
	APIConnRatePerAddress   int
	RestrictedSessions      int
	RestrictedPerAddress    int
	RestrictedLifetime      time.Duration
	AuthFailureRate         int
	AuthFailureBurst        int
	ChallengesPerConnection int
	ChallengeRatePerAddress int
	ChallengeRateTotal      int
	RestrictedIdleTimeout   time.Duration
	RequestRatePerConn      int
	PollsPerDevice          int
	PollWindow              time.Duration
	RegistersPerDevice      int
	RegisterWindow          time.Duration
	MaxGroups               int    // enrollment groups that may exist, -1 = unlimited
	TPMRoots                string // directory of TPM manufacturer roots for EK certificates, "" = none

	Issuer        string // IssuerBuiltin or IssuerNone
	IssuerCert    string // "" = the built-in CA generated in the data directory
	IssuerKey     string // with IssuerCert
	IssuerKeyType string // key of a generated built-in CA (issuer.KeyType)

	// Outbound HTTPS: custom allocation webhooks, hub registries, hand-off webhooks.
	OutboundCAFile      string // extra CAs trusted besides the system's, "" = none
	OutboundClientCert  string // client certificate for servers that ask, "" = none
	OutboundClientKey   string
	OutboundClientCerts string        // directory of named client certificates (NAME.pem, NAME.key) for webhooks, "" = none
	WebhookTimeout      time.Duration // one allocation webhook call, when the enrollment names none
	HubRequestTimeout   time.Duration // one request to a hub's registry or hand-off webhook
	HandoffWorkers      int           // registrations worked on at once (webhook and hub I/O)
	HandoffMaxPending   int           // registrations waiting for outside I/O, then 429
	HandoffTimeout      time.Duration // how long a registration may wait for its webhook and hub

	LogFormat string // text | json
	LogLevel  slog.Level

	// ConfigFile is the JSON file the settings were read from, if any.
	ConfigFile string
}

// Default returns the embedded defaults.
func Default() Config {
	c := Config{}
	for _, s := range settings() {
		if err := s.setValue(&c, s.def); err != nil {
			panic(fmt.Sprintf("config: bad default for %s: %v", s.name, err))
		}
	}
	return c
}

// setting is one configurable value.
type setting struct {
	name string // flag name and file key; env is DPSD_ + upper snake case
	def  string
	help string
	set  setter
}

// setter parses a setting's text into a Config field. quantity marks a
// duration or a number: such a value is never a secret, whatever the
// setting's name says (sas-max-lifetime is a duration, not a SAS token).
type setter struct {
	apply    func(c *Config, v string) error
	quantity bool
}

// setValue applies v to c.
func (s setting) setValue(c *Config, v string) error { return s.set.apply(c, v) }

// envName returns the environment variable name of a setting.
func envName(name string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

func str(p func(*Config) *string) setter {
	return setter{apply: func(c *Config, v string) error { *p(c) = strings.TrimSpace(v); return nil }}
}

// choice is a setter of a word from a fixed set (log format, log level).
func choice(apply func(c *Config, v string) error) setter { return setter{apply: apply} }

func list(p func(*Config) *[]string) setter {
	return setter{apply: func(c *Config, v string) error {
		var out []string
		for _, s := range strings.Split(v, ",") {
			if s = strings.TrimSpace(s); s != "" {
				out = append(out, s)
			}
		}
		*p(c) = out
		return nil
	}}
}

func dur(p func(*Config) *time.Duration) setter {
	return setter{quantity: true, apply: func(c *Config, v string) error {
		d, err := time.ParseDuration(strings.TrimSpace(v))
		if err != nil || d < 0 {
			return fmt.Errorf("%w: %q is not a non-negative duration (e.g. 10m, 30s)", ErrInvalid, v)
		}
		*p(c) = d
		return nil
	}}
}

func num(p func(*Config) *int) setter {
	return setter{quantity: true, apply: func(c *Config, v string) error {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil {
			return fmt.Errorf("%w: %q is not an integer", ErrInvalid, v)
		}
		*p(c) = n
		return nil
	}}
}

// settings returns the table of every setting, in help order.
func settings() []setting {
	return []setting{
		{"data-dir", "data", "data directory: bbolt file, generated secrets, development CA", str(func(c *Config) *string { return &c.DataDir })},
		{"store", "", "where state is kept: empty for the bbolt file in data-dir, bolt:PATH for another bbolt file, or etcd://host:2379[,host2:2379...][/prefix] for an etcd cluster shared by several dpsd nodes (needs secrets-dir)", str(func(c *Config) *string { return &c.Store })},
		{"secrets-dir", "", "directory of a cluster's shared secrets, written once by dpsd cluster init and mounted read-only on every node (ID scope, TPM challenge secret, service policy keys, store key, TLS session ticket secret, tls.crt/tls.key); empty: the secrets are generated in data-dir", str(func(c *Config) *string { return &c.SecretsDir })},
		{"etcd-ca", "", "PEM file of the CA that signed the etcd servers' certificates: connects to etcd over TLS (empty: plain HTTP)", str(func(c *Config) *string { return &c.EtcdCA })},
		{"etcd-cert", "", "PEM client certificate for etcd (with etcd-key; etcd's --client-cert-auth)", str(func(c *Config) *string { return &c.EtcdCert })},
		{"etcd-key", "", "PEM private key of etcd-cert", str(func(c *Config) *string { return &c.EtcdKey })},
		{"id-scope", "", "ID scope devices must use (default: generated on first start and kept in the data directory)", str(func(c *Config) *string { return &c.IDScope })},
		{"mqtt-addr", "127.0.0.1:1883", "plain MQTT listen address (empty: off)", str(func(c *Config) *string { return &c.MQTTAddr })},
		{"mqtts-addr", ":8883", "MQTT over TLS listen address (empty: off)", str(func(c *Config) *string { return &c.MQTTSAddr })},
		{"wss-addr", "", "a separate MQTT over secure WebSocket listen address, any path (empty: off; api-addr carries WebSocket too)", str(func(c *Config) *string { return &c.WSSAddr })},
		{"api-addr", ":8443", "HTTPS listen address of the service API (enrollments, groups, registrations, /backup), /metrics (unless metrics-addr is set), /healthz, /readyz and MQTT over WebSocket on any path, as the cloud's port 443 (empty: off)", str(func(c *Config) *string { return &c.APIAddr })},
		{"metrics-addr", "", "a separate plain-HTTP listen address for /metrics alone, e.g. 127.0.0.1:9090; when set, /metrics is no longer served on api-addr (empty: /metrics is on api-addr, unauthenticated)", str(func(c *Config) *string { return &c.MetricsAddr })},
		{"api-host-name", "localhost", "host name of the service API: the sr of service SAS tokens and the HostName of the connection string written to the data directory", str(func(c *Config) *string { return &c.APIHostName })},
		{"api-read-timeout", "1m", "time to read one request on the API listener, headers and body (a slower body gets 408 and the connection is closed; 0s: none)", dur(func(c *Config) *time.Duration { return &c.APIReadTimeout })},
		{"api-write-timeout", "2m", "time from a request's headers to the end of its answer on the API listener (keep it above api-read-timeout; /backup and WebSocket are not bound by it; 0s: none)", dur(func(c *Config) *time.Duration { return &c.APIWriteTimeout })},
		{"tls-cert", "", "server certificate PEM file (default: issued by the development CA in the data directory)", str(func(c *Config) *string { return &c.TLSCert })},
		{"tls-key", "", "server private key PEM file (with tls-cert)", str(func(c *Config) *string { return &c.TLSKey })},
		{"tls-names", "localhost,127.0.0.1", "comma-separated DNS names and IPs of the development server certificate", list(func(c *Config) *[]string { return &c.TLSNames })},
		{"hubs", PlaceholderHub, "comma-separated IoT hub host names for hashed allocation of enrollments that name none (the default is a placeholder, warned about at start: set your hubs)", list(func(c *Config) *[]string { return &c.Hubs })},
		{"challenge-lifetime", "10m", "how long a TPM challenge can be answered (and only until dpsd restarts)", dur(func(c *Config) *time.Duration { return &c.ChallengeLifetime })},
		{"retry-after", "1s", "retry-after of 202 answers (0s: ask again now)", dur(func(c *Config) *time.Duration { return &c.RetryAfter })},
		{"sas-max-lifetime", "0s", "longest SAS token lifetime accepted (0s: the service default)", dur(func(c *Config) *time.Duration { return &c.SASMaxLifetime })},
		{"connect-timeout", "10s", "time a new connection has to send CONNECT (TLS handshake included)", dur(func(c *Config) *time.Duration { return &c.ConnectTimeout })},
		{"shutdown-timeout", "30s", "on SIGTERM/SIGINT, how long to wait for requests in flight", dur(func(c *Config) *time.Duration { return &c.ShutdownTimeout })},
		{"conns-per-address", "1000", "concurrent connections per client IP (-1: unlimited)", num(func(c *Config) *int { return &c.ConnsPerAddress })},
		{"conn-rate-per-address", "1200", "new connections per minute per client IP (-1: unlimited)", num(func(c *Config) *int { return &c.ConnRatePerAddress })},
		{"api-conns-per-address", "1000", "concurrent connections per client address on api-addr, checked before the TLS handshake; WebSocket devices count here and in conns-per-address (-1: unlimited)", num(func(c *Config) *int { return &c.APIConnsPerAddress })},
		{"api-conn-rate-per-address", "1200", "new connections per minute per client address on api-addr (burst 200), checked before the TLS handshake (-1: unlimited)", num(func(c *Config) *int { return &c.APIConnRatePerAddress })},
		{"ipv6-prefix-len", "64", "IPv6 prefix length that counts as one client address for every per-address limit (1-128; IPv4 addresses count one by one)", num(func(c *Config) *int { return &c.IPv6PrefixLen })},
		{"restricted-sessions", "1000", "concurrent restricted (TPM challenge) sessions in total (-1: unlimited)", num(func(c *Config) *int { return &c.RestrictedSessions })},
		{"restricted-sessions-per-address", "32", "concurrent restricted (TPM challenge) sessions per client address, well below restricted-sessions so that one address cannot take them all (-1: unlimited)", num(func(c *Config) *int { return &c.RestrictedPerAddress })},
		{"restricted-lifetime", "60s", "closes a restricted (TPM challenge) session this long after it connected, whatever it does", dur(func(c *Config) *time.Duration { return &c.RestrictedLifetime })},
		{"auth-failure-rate-per-address", "60", "refused CONNECTs (bad or unknown credentials) per minute per client address after the burst; beyond, CONNECTs from the address get CONNACK 3 before any key work (-1: unlimited)", num(func(c *Config) *int { return &c.AuthFailureRate })},
		{"auth-failure-burst-per-address", "20", "refused CONNECTs per client address allowed at once before auth-failure-rate-per-address applies", num(func(c *Config) *int { return &c.AuthFailureBurst })},
		{"challenges-per-connection", "3", "TPM challenge requests per restricted connection before it is closed (-1: unlimited)", num(func(c *Config) *int { return &c.ChallengesPerConnection })},
		{"challenge-rate-per-address", "60", "TPM challenge requests per minute per client IP, then 429 (-1: unlimited)", num(func(c *Config) *int { return &c.ChallengeRatePerAddress })},
		{"challenge-rate-total", "6000", "TPM challenge requests per minute in total, then 429 (-1: unlimited)", num(func(c *Config) *int { return &c.ChallengeRateTotal })},
		{"restricted-idle-timeout", "30s", "closes a restricted session that has sent no TPM register for this long (any other request closes it at once)", dur(func(c *Config) *time.Duration { return &c.RestrictedIdleTimeout })},
		{"request-rate-per-connection", "120", "register and poll requests per minute per connection (burst 10), then 429 (-1: unlimited)", num(func(c *Config) *int { return &c.RequestRatePerConn })},
		{"polls-per-device", "5", "poll requests per poll-window per authenticated device, then 429 (-1: unlimited; the cloud allows 5 per 10 s)", num(func(c *Config) *int { return &c.PollsPerDevice })},
		{"poll-window", "10s", "window of polls-per-device", dur(func(c *Config) *time.Duration { return &c.PollWindow })},
		{"registers-per-device", "10", "register requests per register-window per authenticated device, then 429 (-1: unlimited; never applied to TPM challenge requests)", num(func(c *Config) *int { return &c.RegistersPerDevice })},
		{"register-window", "1m", "window of registers-per-device", dur(func(c *Config) *time.Duration { return &c.RegisterWindow })},
		{"max-groups", "1000", "enrollment groups that may exist, of every attestation type together; creating one more is refused with 403 (-1: unlimited; the cloud allows 100 of each type). Each symmetric-key CONNECT without an individual enrollment tries every symmetric-key group", num(func(c *Config) *int { return &c.MaxGroups })},
		{"outbound-ca-file", "", "PEM file of extra CA certificates trusted (besides the system's) when dpsd calls out: custom allocation webhooks, IoT hub registries, hand-off webhooks", str(func(c *Config) *string { return &c.OutboundCAFile })},
		{"outbound-client-cert", "", "client certificate PEM file dpsd presents to an allocation or hand-off webhook (or hub) that asks for one (mutual TLS; with outbound-client-key)", str(func(c *Config) *string { return &c.OutboundClientCert })},
		{"outbound-client-key", "", "private key PEM file of outbound-client-cert", str(func(c *Config) *string { return &c.OutboundClientKey })},
		{"outbound-client-certs", "", "directory of named client certificates for custom allocation webhooks, NAME.pem with NAME.key (0600) each: an enrollment's customAllocationDefinition.dpsdClientCertificate picks one by NAME, read at start", str(func(c *Config) *string { return &c.OutboundClientCerts })},
		{"webhook-timeout", "10s", "time one custom allocation webhook call may take, for enrollments whose customAllocationDefinition sets no dpsdTimeoutSeconds", dur(func(c *Config) *time.Duration { return &c.WebhookTimeout })},
		{"hub-request-timeout", "10s", "time one request to a linked hub's registry (or its hand-off webhook) may take", dur(func(c *Config) *time.Duration { return &c.HubRequestTimeout })},
		{"handoff-workers", "8", "registrations whose webhook or hub I/O this server works on at once; the others wait in the outbox", num(func(c *Config) *int { return &c.HandoffWorkers })},
		{"handoff-max-pending", "10000", "registrations that may wait in the outbox for a webhook or a hub; beyond, registers are answered 429 with retry-after", num(func(c *Config) *int { return &c.HandoffMaxPending })},
		{"handoff-timeout", "5m", "how long a registration may keep retrying its webhook (then the fallback policy applies) or its hub (then it fails with errorCode 503211)", dur(func(c *Config) *time.Duration { return &c.HandoffTimeout })},
		{"issuer", IssuerBuiltin, "who signs the operational certificates devices ask for with a CSR, when their enrollment or group has a credentialPolicyName: builtin (dpsd's own CA: issuer-cert and issuer-key, or one generated in the data directory) or none", choice(func(c *Config, v string) error {
			v = strings.ToLower(strings.TrimSpace(v))
			if v != IssuerBuiltin && v != IssuerNone {
				return fmt.Errorf("%w: issuer %q (want %s or %s)", ErrInvalid, v, IssuerBuiltin, IssuerNone)
			}
			c.Issuer = v
			return nil
		})},
		{"issuer-cert", "", "PEM file of the CA that issues device certificates, optionally followed by the root that issued it (default: the CA generated in the data directory, issuing-ca.pem)", str(func(c *Config) *string { return &c.IssuerCert })},
		{"issuer-key", "", "PEM file of issuer-cert's private key (PKCS #8, PKCS #1 or SEC 1; must not be readable by group or others)", str(func(c *Config) *string { return &c.IssuerKey })},
		{"issuer-key-type", "ecdsa-p256", "key of the issuing CA generated in the data directory on first start: ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072 or rsa-4096 (an existing CA keeps its key)", choice(func(c *Config, v string) error {
			v = strings.ToLower(strings.TrimSpace(v))
			switch v {
			case "ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-3072", "rsa-4096":
				c.IssuerKeyType = v
				return nil
			}
			return fmt.Errorf("%w: issuer-key-type %q (want ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072 or rsa-4096)", ErrInvalid, v)
		})},
		{"tpm-roots", "", "directory of TPM manufacturer CA certificates (and CRLs) that EK certificates chain to: *.pem, *.crt, *.cer, *.der, *.crl, PEM or DER; self-signed ones are roots, the others intermediates. Individual TPM enrollments with requireEkCertificate need a certificate chaining to these roots; TPM groups have roots of their own and may use these intermediates. Read at start (empty: none)", str(func(c *Config) *string { return &c.TPMRoots })},
		{"log-format", "text", "log format: text or json", choice(func(c *Config, v string) error {
			v = strings.ToLower(strings.TrimSpace(v))
			if v != "text" && v != "json" {
				return fmt.Errorf("%w: log format %q (want text or json)", ErrInvalid, v)
			}
			c.LogFormat = v
			return nil
		})},
		{"log-level", "info", "log level: debug, info, warn or error", choice(func(c *Config, v string) error {
			if err := c.LogLevel.UnmarshalText([]byte(strings.TrimSpace(v))); err != nil {
				return fmt.Errorf("%w: log level %q (want debug, info, warn or error)", ErrInvalid, v)
			}
			return nil
		})},
	}
}

// configFlag names the config file flag (and DPSD_CONFIG).
const configFlag = "config"

// Load parses args and builds the configuration: defaults, then the JSON
// config file (--config or DPSD_CONFIG), then DPSD_* environment variables,
// then flags. lookupEnv is os.LookupEnv in production (a variable set to ""
// counts: DPSD_MQTT_ADDR= turns the plain listener off). usageHead is printed before
// the settings by --help; flag.ErrHelp is returned for --help.
func Load(name, usageHead string, args []string, lookupEnv func(string) (string, bool), out io.Writer) (Config, error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(out)
	set := make(map[string]string)
	var cfgFile string
	fs.StringVar(&cfgFile, configFlag, "", "JSON config file whose keys are the setting names below (env "+envName(configFlag)+")")
	table := settings()
	for _, s := range table {
		fs.Func(s.name, fmt.Sprintf("%s (env %s, default %q)", s.help, envName(s.name), s.def), func(v string) error {
			var probe Config
			if err := s.setValue(&probe, v); err != nil {
				return err
			}
			set[s.name] = v
			return nil
		})
	}
	fs.Usage = func() {
		fmt.Fprint(out, usageHead)
		fmt.Fprintf(out, "\nSettings (precedence: flags > environment > config file > defaults):\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("%w: unexpected arguments %q", ErrInvalid, fs.Args())
	}
	c := Default()
	if cfgFile == "" {
		cfgFile, _ = lookupEnv(envName(configFlag))
	}
	if cfgFile != "" {
		if err := c.loadFile(cfgFile); err != nil {
			return Config{}, err
		}
		c.ConfigFile = cfgFile
	}
	for _, s := range table {
		if v, ok := lookupEnv(envName(s.name)); ok {
			if err := s.setValue(&c, v); err != nil {
				return Config{}, fmt.Errorf("%s: %w", envName(s.name), err)
			}
		}
	}
	for _, s := range table {
		if v, ok := set[s.name]; ok {
			if err := s.setValue(&c, v); err != nil {
				return Config{}, fmt.Errorf("-%s: %w", s.name, err)
			}
		}
	}
	return c, c.Validate()
}

// loadFile applies a JSON object whose keys are setting names; values may be
// strings, numbers, or (for list settings) arrays of strings.
func (c *Config) loadFile(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	var raw map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&raw); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrInvalid, path, err)
	}
	byName := make(map[string]setting)
	for _, s := range settings() {
		byName[s.name] = s
	}
	for k, v := range raw {
		s, ok := byName[k]
		if !ok {
			return fmt.Errorf("%w: %s: unknown key %q", ErrInvalid, path, k)
		}
		val, err := jsonValue(v)
		if err != nil {
			return fmt.Errorf("%w: %s: key %q: %w", ErrInvalid, path, k, err)
		}
		if err := s.setValue(c, val); err != nil {
			return fmt.Errorf("%s: key %q: %w", path, k, err)
		}
	}
	return nil
}

// jsonValue turns a JSON string, number, bool or array of strings into the
// text a setting parses.
func jsonValue(v json.RawMessage) (string, error) {
	var s string
	if err := json.Unmarshal(v, &s); err == nil {
		return s, nil
	}
	var n json.Number
	if err := json.Unmarshal(v, &n); err == nil {
		return n.String(), nil
	}
	var l []string
	if err := json.Unmarshal(v, &l); err == nil {
		return strings.Join(l, ","), nil
	}
	return "", errors.New("want a string, a number or an array of strings")
}

// Validate checks the combination of settings.
func (c Config) Validate() error {
	if c.DataDir == "" {
		return fmt.Errorf("%w: data-dir is empty", ErrInvalid)
	}
	switch {
	case c.Store == "" || strings.HasPrefix(c.Store, "bolt:") && len(c.Store) > len("bolt:"):
	case strings.HasPrefix(c.Store, "etcd://"):
		if c.SecretsDir == "" {
			return fmt.Errorf("%w: store %s needs secrets-dir (the cluster's shared secrets: dpsd cluster init DIR)", ErrInvalid, c.Store)
		}
	default:
		return fmt.Errorf("%w: store %q (want bolt:PATH or etcd://host:2379[,...][/prefix])", ErrInvalid, c.Store)
	}
	if (c.EtcdCert == "") != (c.EtcdKey == "") {
		return fmt.Errorf("%w: etcd-cert and etcd-key go together", ErrInvalid)
	}
	if c.MQTTAddr == "" && c.MQTTSAddr == "" && c.WSSAddr == "" {
		return fmt.Errorf("%w: every MQTT listener is off", ErrInvalid)
	}
	if c.APIAddr != "" && c.APIHostName == "" {
		return fmt.Errorf("%w: api-host-name is empty", ErrInvalid)
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return fmt.Errorf("%w: tls-cert and tls-key go together", ErrInvalid)
	}
	if c.TLSCert == "" && len(c.TLSNames) == 0 && c.NeedsTLS() {
		return fmt.Errorf("%w: tls-names is empty", ErrInvalid)
	}
	if c.ChallengeLifetime == 0 {
		return fmt.Errorf("%w: challenge-lifetime is 0", ErrInvalid)
	}
	if c.IPv6PrefixLen < 1 || c.IPv6PrefixLen > 128 {
		return fmt.Errorf("%w: ipv6-prefix-len %d is not between 1 and 128", ErrInvalid, c.IPv6PrefixLen)
	}
	if (c.OutboundClientCert == "") != (c.OutboundClientKey == "") {
		return fmt.Errorf("%w: outbound-client-cert and outbound-client-key go together", ErrInvalid)
	}
	if c.HandoffWorkers < 1 || c.HandoffMaxPending < 1 {
		return fmt.Errorf("%w: handoff-workers and handoff-max-pending must be at least 1", ErrInvalid)
	}
	if c.HandoffTimeout < time.Second || c.WebhookTimeout < 100*time.Millisecond || c.HubRequestTimeout < 100*time.Millisecond {
		return fmt.Errorf("%w: handoff-timeout must be at least 1s, webhook-timeout and hub-request-timeout at least 100ms", ErrInvalid)
	}
	if (c.IssuerCert == "") != (c.IssuerKey == "") {
		return fmt.Errorf("%w: issuer-cert and issuer-key go together", ErrInvalid)
	}
	if c.Issuer == IssuerNone && c.IssuerCert != "" {
		return fmt.Errorf("%w: issuer-cert is set but issuer is %s", ErrInvalid, IssuerNone)
	}
	if c.MaxGroups == 0 || c.MaxGroups < -1 {
		return fmt.Errorf("%w: max-groups is %d (want a positive number, or -1 for no limit)", ErrInvalid, c.MaxGroups)
	}
	return nil
}

// Logger builds the slog logger the configuration asks for, writing to w.
// JSON logs write durations as text ("1.5s", as the text format and the
// settings do), not as slog's default integer nanoseconds.
func (c Config) Logger(w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: c.LogLevel}
	if c.LogFormat == "json" {
		return slog.New(durationHandler{slog.NewJSONHandler(w, opts)})
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// durationHandler writes duration attributes as text ("1.5s") through the
// handler it wraps. It is not a HandlerOptions.ReplaceAttr: that takes
// slog's slow path for every attribute of every record (measured: a
// request's log line from 0.7 to 1.3-2.5 µs), while records without a
// duration, most of them, pass through here after one look at their
// attributes.
type durationHandler struct{ slog.Handler }

// Handle rewrites the record's durations, if it has any.
func (h durationHandler) Handle(ctx context.Context, r slog.Record) error {
	has := false
	r.Attrs(func(a slog.Attr) bool {
		has = hasDuration(a)
		return !has
	})
	if !has {
		return h.Handler.Handle(ctx, r)
	}
	var buf [16]slog.Attr
	attrs := buf[:0]
	r.Attrs(func(a slog.Attr) bool {
		attrs = append(attrs, durationText(a))
		return true
	})
	out := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	out.AddAttrs(attrs...)
	return h.Handler.Handle(ctx, out)
}

// WithAttrs rewrites the durations of attributes added with Logger.With.
func (h durationHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	for i, a := range attrs {
		if hasDuration(a) {
			out := append([]slog.Attr(nil), attrs...)
			for j := i; j < len(out); j++ {
				out[j] = durationText(out[j])
			}
			return durationHandler{h.Handler.WithAttrs(out)}
		}
	}
	return durationHandler{h.Handler.WithAttrs(attrs)}
}

// WithGroup keeps the rewriting for the group's attributes.
func (h durationHandler) WithGroup(name string) slog.Handler {
	return durationHandler{h.Handler.WithGroup(name)}
}

// hasDuration reports whether a, or an attribute of a group a is, holds a
// duration.
func hasDuration(a slog.Attr) bool {
	switch a.Value.Kind() {
	case slog.KindDuration:
		return true
	case slog.KindGroup:
		for _, g := range a.Value.Group() {
			if hasDuration(g) {
				return true
			}
		}
	case slog.KindLogValuer:
		return hasDuration(slog.Attr{Key: a.Key, Value: a.Value.Resolve()})
	}
	return false
}

// durationText returns a with every duration in it, groups included,
// written as its String.
func durationText(a slog.Attr) slog.Attr {
	a.Value = a.Value.Resolve()
	switch a.Value.Kind() {
	case slog.KindDuration:
		return slog.String(a.Key, a.Value.Duration().String())
	case slog.KindGroup:
		g := a.Value.Group()
		out := make([]slog.Attr, len(g))
		for i, x := range g {
			out[i] = durationText(x)
		}
		return slog.Attr{Key: a.Key, Value: slog.GroupValue(out...)}
	}
	return a
}

// NeedsTLS reports whether a TLS listener (MQTT, WebSocket or API) is on.
func (c Config) NeedsTLS() bool { return c.MQTTSAddr != "" || c.WSSAddr != "" || c.APIAddr != "" }
