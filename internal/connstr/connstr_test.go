package connstr

import (
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	f, err := Parse(" hostname=h.example.net ; SharedAccessKeyName=owner;sharedaccesskey=AAECAw==;Other=x")
	if err != nil || f.HostName != "h.example.net" || f.KeyName != "owner" || string(f.Key) != "\x00\x01\x02\x03" {
		t.Fatalf("Parse = %+v, %v", f, err)
	}
}

func TestParseRefusesWithoutTheKey(t *testing.T) {
	const secret = "c2VjcmV0LWtleS1tYXRlcmlhbC0xMjM0NTY3ODkw"
	for _, s := range []string{
		"SharedAccessKeyName=a;SharedAccessKey=" + secret,
		"HostName=h/x;SharedAccessKeyName=a;SharedAccessKey=" + secret,
		"HostName=h;SharedAccessKey=" + secret,
		"HostName=h;SharedAccessKeyName=a",
		"HostName=h;SharedAccessKeyName=a;SharedAccessKey=not*base64",
		"HostName=h;SharedAccessKeyName=a;" + secret,
	} {
		_, err := Parse(s)
		if err == nil {
			t.Errorf("Parse(%q) accepted", s)
			continue
		}
		if strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), secret[:12]) {
			t.Errorf("Parse(%q): error %q shows the key", s, err)
		}
	}
}
