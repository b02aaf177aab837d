package main

import (
	"fmt"
	"log/slog"
	"strings"

	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/cmd/dpsd/internal/trustdir"
)

// loadTPMRoots reads the tpm-roots directory (nil when the setting is
// empty) and logs what it holds. A directory that cannot be read, a file
// that does not parse or a directory without certificates stops the start:
// a server that silently trusted nothing would refuse every device that
// requires an EK certificate.
func loadTPMRoots(dir string, log *slog.Logger) (*attest.CertBundle, error) {
	if dir == "" {
		return nil, nil
	}
	b, rep, err := trustdir.Load(dir)
	if err != nil {
		return nil, fmt.Errorf("tpm-roots: %w", err)
	}
	log.Info("TPM roots loaded", "dir", dir, "roots", rep.Roots, "intermediates", rep.Intermediates,
		"crls", rep.CRLs, "files", len(rep.Files), "skipped", strings.Join(rep.Skipped, ","))
	if len(rep.Orphans) > 0 {
		log.Warn("TPM roots: intermediates whose issuer is not in the directory (no chain through them ends at these roots)",
			"dir", dir, "intermediates", strings.Join(rep.Orphans, "; "))
	}
	if rep.Roots == 0 {
		log.Warn("TPM roots: the directory holds intermediates only; no EK certificate can chain to a service-wide root", "dir", dir)
	}
	return b, nil
}
