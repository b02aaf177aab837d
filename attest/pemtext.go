package attest

import (
	"bytes"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
)

// decodePEMOrBase64 returns the DER bytes of text that is either exactly one
// PEM block of the given type or base64 DER: the two forms the DPS service
// API accepts for certificates and CRLs. The error says what was wrong with
// the text; callers wrap it with their own sentinel.
func decodePEMOrBase64(s, blockType string, maxLen int) ([]byte, error) {
	s = strings.TrimSpace(s)
	if len(s) > maxLen {
		return nil, fmt.Errorf("larger than %d bytes", maxLen)
	}
	if !strings.HasPrefix(s, "-----BEGIN") {
		der, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			return nil, fmt.Errorf("neither PEM nor base64 DER: %w", err)
		}
		return der, nil
	}
	blk, rest := pem.Decode([]byte(s))
	if blk == nil || blk.Type != blockType {
		return nil, fmt.Errorf("no PEM %s block", blockType)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("more than one PEM block")
	}
	return blk.Bytes, nil
}
