package hubconn

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// ServiceSAS returns the Authorization header value of a service SAS
// token for host (IoT Hub's "SharedAccessSignature sr=...&sig=...&se=...
// &skn=..."): the resource is the host name, lowercased and URL-encoded
// as the signature covers it, valid until expires.
func ServiceSAS(host, keyName string, key []byte, expires time.Time) string {
	sr := url.QueryEscape(strings.ToLower(host))
	se := strconv.FormatInt(expires.Unix(), 10)
	m := hmac.New(sha256.New, key)
	m.Write([]byte(sr + "\n" + se))
	sig := base64.StdEncoding.EncodeToString(m.Sum(nil))
	return "SharedAccessSignature sr=" + sr + "&sig=" + url.QueryEscape(sig) + "&se=" + se + "&skn=" + url.QueryEscape(keyName)
}
