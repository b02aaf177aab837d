package datadir

// The secrets directory of a cluster: written once by `dpsd cluster init`,
// mounted read-only by every node (a Kubernetes Secret, a Docker secret or
// a directory), never written by a node.

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/tpmdps/dpsd/internal/devca"
	"github.com/tpmdps/dpsd/issuer"
)

// Files of a cluster secrets directory besides SecretsFile, CACertFile and
// CAKeyFile (the development CA) and IssuingCACertFile and
// IssuingCAKeyFile (the built-in issuer's CA of device certificates).
const (
	// ClusterTLSCertFile and ClusterTLSKeyFile are the server certificate
	// and key every node presents (Kubernetes TLS Secret names).
	ClusterTLSCertFile = "tls.crt"
	ClusterTLSKeyFile  = "tls.key"
)

// ErrExists: InitCluster found secrets already in the directory.
var ErrExists = errors.New("datadir: cluster secrets already exist")

// InitCluster writes a new cluster secrets directory at dir (created
// 0700; files 0600): SecretsFile with a new ID scope, TPM challenge
// secret, both service policy keys, the store key and the TLS session
// ticket secret; a development CA (CACertFile, CAKeyFile) with a
// server certificate for tlsNames (ClusterTLSCertFile, ClusterTLSKeyFile),
// to be replaced by a certificate of your own; and the built-in issuer's
// CA of device certificates (IssuingCACertFile, IssuingCAKeyFile, a key of
// type issuerKey), which every node signs with. It refuses a directory that
// already holds SecretsFile: the secrets are written once.
func InitCluster(dir string, tlsNames []string, issuerKey issuer.KeyType, now time.Time) (Secrets, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Secrets{}, fmt.Errorf("datadir: creating %s: %w", dir, err)
	}
	if _, err := os.Stat(filepath.Join(dir, SecretsFile)); err == nil {
		return Secrets{}, fmt.Errorf("%w: %s", ErrExists, filepath.Join(dir, SecretsFile))
	}
	d := &Dir{Path: dir, Secrets: Secrets{
		IDScope:              NewIDScope(),
		ChallengeSecret:      randomBytes(SecretSize),
		ServicePolicyKey:     randomBytes(SecretSize),
		ServiceReadPolicyKey: randomBytes(SecretSize),
		StoreKey:             randomBytes(SecretSize),
		TicketSecret:         randomBytes(SecretSize),
	}, Created: true}
	ca, err := devca.NewCA("dpsd cluster development CA", now, CAValidity)
	if err != nil {
		return Secrets{}, err
	}
	caKey, err := ca.KeyPEM()
	if err != nil {
		return Secrets{}, err
	}
	certPEM, keyPEM, err := ca.Issue(tlsNames, now, ServerValidity)
	if err != nil {
		return Secrets{}, err
	}
	for name, data := range map[string][]byte{
		CACertFile: ca.CertPEM(), CAKeyFile: caKey, ClusterTLSCertFile: certPEM, ClusterTLSKeyFile: keyPEM,
	} {
		if err := writeFile(d.File(name), data); err != nil {
			return Secrets{}, err
		}
	}
	if _, _, err := d.IssuingCA(issuerKey, d.Secrets.IDScope, now); err != nil {
		return Secrets{}, err
	}
	// The secrets last: their presence says the directory is complete.
	if err := d.writeSecrets(); err != nil {
		return Secrets{}, err
	}
	return d.Secrets, nil
}

// ReadClusterSecrets reads the secrets of a cluster secrets directory
// without writing anything (it is mounted read-only): every value a
// cluster node needs must be there.
func ReadClusterSecrets(dir string) (Secrets, error) {
	s, err := ReadSecrets(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return Secrets{}, fmt.Errorf("%w (write the cluster secrets once with dpsd cluster init %s)", err, dir)
		}
		return Secrets{}, err
	}
	file := filepath.Join(dir, SecretsFile)
	switch {
	case len(s.ServiceReadPolicyKey) < SecretSize:
		return Secrets{}, fmt.Errorf("%w: %s: no read-only policy key", ErrBadSecrets, file)
	case len(s.StoreKey) != SecretSize:
		return Secrets{}, fmt.Errorf("%w: %s: the store key must be %d bytes (dpsd cluster init writes one)", ErrBadSecrets, file, SecretSize)
	case len(s.TicketSecret) < SecretSize:
		return Secrets{}, fmt.Errorf("%w: %s: no TLS session ticket secret", ErrBadSecrets, file)
	}
	return s, nil
}

// OpenWithSecrets opens the data directory at path (created 0700) for a
// node whose secrets come from elsewhere (a cluster secrets directory):
// nothing secret is generated or written there.
func OpenWithSecrets(path string, s Secrets) (*Dir, error) {
	if path == "" {
		return nil, errors.New("datadir: empty path")
	}
	if err := os.MkdirAll(path, 0o700); err != nil {
		return nil, fmt.Errorf("datadir: creating %s: %w", path, err)
	}
	return &Dir{Path: path, Secrets: s}, nil
}
