package attest

import (
	"errors"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

func TestParseUsernameAPIVersions(t *testing.T) {
	for _, v := range []string{"2017-11-15", "2018-09-01-preview", "2019-03-31", "2021-06-01",
		"2021-10-01", "2021-11-01-preview", "2025-07-01-preview"} {
		t.Run(v, func(t *testing.T) {
			if !IsKnownAPIVersion(v) {
				t.Errorf("IsKnownAPIVersion(%q) = false", v)
			}
			u, err := ParseUsername("0ne00000A0A/registrations/my-device/api-version=" + v)
			if err != nil {
				t.Fatalf("ParseUsername: %v", err)
			}
			want := Username{IDScope: "0ne00000A0A", RegistrationID: "my-device", APIVersion: v}
			if !reflect.DeepEqual(u, want) {
				t.Errorf("got %#v, want %#v", u, want)
			}
		})
	}
}

func TestParseUsernameClientForms(t *testing.T) {
	tests := []struct {
		name, in string
		want     Username
	}{
		{"C SDK", "0ne00000A0A/registrations/dev1/api-version=2019-03-31&ClientVersion=iothubclient%2f1.13.0%20(native%3b%20Linux%3b%20x86_64)",
			Username{IDScope: "0ne00000A0A", RegistrationID: "dev1", APIVersion: "2019-03-31",
				ClientVersion: "iothubclient/1.13.0 (native; Linux; x86_64)"}},
		{"C# SDK", "0ne00000A0A/registrations/Dev:01/api-version=2021-10-01&ClientVersion=Microsoft.Azure.Devices.Provisioning.Client%2F1.19.0%20%28.NET%206.0%29",
			Username{IDScope: "0ne00000A0A", RegistrationID: "Dev:01", APIVersion: "2021-10-01",
				ClientVersion: "Microsoft.Azure.Devices.Provisioning.Client/1.19.0 (.NET 6.0)"}},
		{"Python, '+' for spaces", "0ne00000A0A/registrations/dev1/api-version=2019-03-31&ClientVersion=azure-iot-device%2F2.12.0+(Linux)",
			Username{IDScope: "0ne00000A0A", RegistrationID: "dev1", APIVersion: "2019-03-31",
				ClientVersion: "azure-iot-device/2.12.0 (Linux)"}},
		{"unencoded '/' in the query", "s/registrations/d/api-version=2019-03-31&ClientVersion=node/1.0",
			Username{IDScope: "s", RegistrationID: "d", APIVersion: "2019-03-31", ClientVersion: "node/1.0"}},
		{"extra params in order", "s/registrations/d/api-version=2021-06-01&ClientVersion=x&model-id=dtmi%3Acom%3Aexample%3Bl&Z=",
			Username{IDScope: "s", RegistrationID: "d", APIVersion: "2021-06-01", ClientVersion: "x",
				Params: []UsernameParam{{"model-id", "dtmi:com:example;l"}, {"Z", ""}}}},
		{"api-version not first", "s/registrations/d/ClientVersion=c&api-version=2019-03-31",
			Username{IDScope: "s", RegistrationID: "d", APIVersion: "2019-03-31", ClientVersion: "c"}},
		{"key case ignored", "s/registrations/d/API-VERSION=2019-03-31&clientversion=c",
			Username{IDScope: "s", RegistrationID: "d", APIVersion: "2019-03-31", ClientVersion: "c"}},
		{"empty ClientVersion", "s/registrations/d/api-version=2019-03-31&ClientVersion=",
			Username{IDScope: "s", RegistrationID: "d", APIVersion: "2019-03-31"}},
		{"future version", "s/registrations/d/api-version=2031-02-28",
			Username{IDScope: "s", RegistrationID: "d", APIVersion: "2031-02-28"}},
		{"future preview", "s/registrations/d/api-version=2030-01-31-preview",
			Username{IDScope: "s", RegistrationID: "d", APIVersion: "2030-01-31-preview"}},
		{"128-char id", "s/registrations/" + strings.Repeat("a", 128) + "/api-version=2019-03-31",
			Username{IDScope: "s", RegistrationID: strings.Repeat("a", 128), APIVersion: "2019-03-31"}},
		{"UTF-8 in ClientVersion", "s/registrations/d/api-version=2019-03-31&ClientVersion=caf%C3%A9",
			Username{IDScope: "s", RegistrationID: "d", APIVersion: "2019-03-31", ClientVersion: "caf\u00e9"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			u, err := ParseUsername(tc.in)
			if err != nil {
				t.Fatalf("ParseUsername: %v", err)
			}
			if !reflect.DeepEqual(u, tc.want) {
				t.Fatalf("got  %#v\nwant %#v", u, tc.want)
			}
			again, err := ParseUsername(u.String())
			if err != nil || !reflect.DeepEqual(again, u) {
				t.Errorf("String() %q re-parses to %#v, %v", u.String(), again, err)
			}
		})
	}
}

func TestUsernameString(t *testing.T) {
	u := Username{IDScope: "0ne00000A0A", RegistrationID: "dev1", APIVersion: "2019-03-31",
		ClientVersion: "agent/1.0 (x; y)", Params: []UsernameParam{{"k", "a&b=c"}}}
	want := "0ne00000A0A/registrations/dev1/api-version=2019-03-31&ClientVersion=agent%2F1.0%20%28x%3B%20y%29&k=a%26b%3Dc"
	if got := u.String(); got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}

func TestParseUsernameRejects(t *testing.T) {
	const ok = "0ne00000A0A/registrations/dev1/api-version=2019-03-31"
	tests := []struct {
		name, in string
		want     error
	}{
		{"empty", "", ErrUsernameMalformed},
		{"no slash", "0ne00000A0A", ErrUsernameMalformed},
		{"one slash", "0ne00000A0A/registrations", ErrUsernameMalformed},
		{"two slashes", "0ne00000A0A/registrations/dev1", ErrUsernameMalformed},
		{"api-version as third segment", "0ne00000A0A/registrations/api-version=2019-03-31", ErrUsernameMalformed},
		{"wrong literal", "0ne00000A0A/registration/dev1/api-version=2019-03-31", ErrUsernameMalformed},
		{"literal case", "0ne00000A0A/Registrations/dev1/api-version=2019-03-31", ErrUsernameMalformed},
		{"devices instead", "0ne00000A0A/devices/dev1/api-version=2019-03-31", ErrUsernameMalformed},
		{"space", ok + "&ClientVersion=a b", ErrUsernameMalformed},
		{"control byte", ok + "\n", ErrUsernameMalformed},
		{"non-ASCII byte", ok + "&ClientVersion=caf\u00e9", ErrUsernameMalformed},
		{"too long", ok + "&ClientVersion=" + strings.Repeat("a", MaxUsernameLen), ErrUsernameMalformed},
		{"empty param", ok + "&&ClientVersion=x", ErrUsernameMalformed},
		{"trailing &", ok + "&", ErrUsernameMalformed},
		{"param without =", ok + "&flag", ErrUsernameMalformed},
		{"empty key", ok + "&=v", ErrUsernameMalformed},
		{"bad key char", ok + "&a%20b=v", ErrUsernameMalformed},
		{"long key", ok + "&" + strings.Repeat("k", 65) + "=v", ErrUsernameMalformed},
		{"bad escape", ok + "&ClientVersion=%zz", ErrUsernameMalformed},
		{"truncated escape", ok + "&ClientVersion=ab%2", ErrUsernameMalformed},
		{"escaped control char", ok + "&ClientVersion=a%0Ab", ErrUsernameMalformed},
		{"escaped NUL", ok + "&ClientVersion=a%00b", ErrUsernameMalformed},
		{"escaped C1 control", ok + "&ClientVersion=a%C2%85b", ErrUsernameMalformed},
		{"invalid UTF-8", ok + "&ClientVersion=%FF", ErrUsernameMalformed},
		{"duplicate api-version", ok + "&api-version=2019-03-31", ErrUsernameMalformed},
		{"duplicate api-version, other case", ok + "&API-Version=2019-03-31", ErrUsernameMalformed},
		{"duplicate ClientVersion", ok + "&ClientVersion=a&ClientVersion=b", ErrUsernameMalformed},
		{"duplicate extra", ok + "&k=a&K=b", ErrUsernameMalformed},
		{"too many params", ok + strings.Repeat("&k=v", 1) + "&a1=1&a2=2&a3=3&a4=4&a5=5&a6=6&a7=7&a8=8&a9=9&b1=1&b2=2&b3=3&b4=4&b5=5&b6=6", ErrUsernameMalformed},
		{"empty scope", "/registrations/dev1/api-version=2019-03-31", ErrInvalidIDScope},
		{"scope with %", "0ne%41/registrations/dev1/api-version=2019-03-31", ErrInvalidIDScope},
		{"scope with ':'", "0ne:1/registrations/dev1/api-version=2019-03-31", ErrInvalidIDScope},
		{"scope too long", strings.Repeat("s", 65) + "/registrations/dev1/api-version=2019-03-31", ErrInvalidIDScope},
		{"empty id", "0ne00000A0A/registrations//api-version=2019-03-31", ErrInvalidRegistrationID},
		{"id 129 chars", "s/registrations/" + strings.Repeat("a", 129) + "/api-version=2019-03-31", ErrInvalidRegistrationID},
		{"id leading -", "s/registrations/-dev/api-version=2019-03-31", ErrInvalidRegistrationID},
		{"id percent-encoded", "s/registrations/dev%3A1/api-version=2019-03-31", ErrInvalidRegistrationID},
		{"id with +", "s/registrations/dev+1/api-version=2019-03-31", ErrInvalidRegistrationID},
		{"nothing after id", "s/registrations/dev1/", ErrInvalidAPIVersion},
		{"missing api-version", "s/registrations/dev1/ClientVersion=x", ErrInvalidAPIVersion},
		{"empty api-version", "s/registrations/dev1/api-version=", ErrInvalidAPIVersion},
		{"api-version not a date", "s/registrations/dev1/api-version=latest", ErrInvalidAPIVersion},
		{"api-version bad month", "s/registrations/dev1/api-version=2019-13-01", ErrInvalidAPIVersion},
		{"api-version bad day", "s/registrations/dev1/api-version=2021-02-29", ErrInvalidAPIVersion},
		{"api-version short", "s/registrations/dev1/api-version=2019-3-31", ErrInvalidAPIVersion},
		{"api-version other suffix", "s/registrations/dev1/api-version=2019-03-31-beta", ErrInvalidAPIVersion},
		{"api-version double suffix", "s/registrations/dev1/api-version=2019-03-31-preview-preview", ErrInvalidAPIVersion},
		{"api-version before DPS", "s/registrations/dev1/api-version=2016-02-03", ErrInvalidAPIVersion},
		{"api-version with space", "s/registrations/dev1/api-version=2019-03-31+", ErrInvalidAPIVersion},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			u, err := ParseUsername(tc.in)
			if !errors.Is(err, tc.want) {
				t.Fatalf("ParseUsername = %#v, %v; want %v", u, err, tc.want)
			}
			if !reflect.DeepEqual(u, Username{}) {
				t.Errorf("non-zero Username returned with an error: %#v", u)
			}
		})
	}
}

func TestValidateRegistrationID(t *testing.T) {
	good := []string{
		"a", "Z", "7", "ab", "my-device", "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6",
		"a:b", "a.b", "a_b", "a-b", "a:.-_b", "Dev:01", "MAC:00:11:22:33:44:55",
		strings.Repeat("a", 128), "a" + strings.Repeat("-", 126) + "b",
		"ugmvvytdyd3sp3srrvkulzrllw5xb4mleh4cgjubjqr2xlcohwxa", // base32 of a SHA-256
	}
	for _, id := range good {
		if err := ValidateRegistrationID(id); err != nil {
			t.Errorf("ValidateRegistrationID(%q) = %v, want nil", id, err)
		}
	}
	bad := []string{
		"", strings.Repeat("a", 129), "-a", "a-", ":a", "a:", ".a", "a.", "_a", "a_", "-", ":", ".", "_",
		"a b", "a/b", "a+b", "a%3Ab", "a@b", "a\x00b", "caf\u00e9", "a\nb", "a,b", "a;b", "a#b", "a~b",
		strings.Repeat("a", 127) + "-",
	}
	for _, id := range bad {
		err := ValidateRegistrationID(id)
		if !errors.Is(err, ErrInvalidRegistrationID) {
			t.Errorf("ValidateRegistrationID(%q) = %v, want ErrInvalidRegistrationID", id, err)
		}
	}
}

func TestNormalizeRegistrationID(t *testing.T) {
	for in, want := range map[string]string{
		"dev-01": "dev-01", "Dev-01": "dev-01", "ABC:DEF.G_H": "abc:def.g_h", "a1Z": "a1z",
	} {
		got, err := NormalizeRegistrationID(in)
		if err != nil || got != want {
			t.Errorf("NormalizeRegistrationID(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := NormalizeRegistrationID("-Dev"); !errors.Is(err, ErrInvalidRegistrationID) {
		t.Errorf("NormalizeRegistrationID(-Dev) = %v, want ErrInvalidRegistrationID", err)
	}
}

func TestValidateIDScope(t *testing.T) {
	for _, s := range []string{"0ne00000A0A", "a", "scope-1.local_x", strings.Repeat("s", 64)} {
		if err := ValidateIDScope(s); err != nil {
			t.Errorf("ValidateIDScope(%q) = %v", s, err)
		}
	}
	for _, s := range []string{"", strings.Repeat("s", 65), "a b", "a/b", "a:b", "a%b", "\u00e9"} {
		if err := ValidateIDScope(s); !errors.Is(err, ErrInvalidIDScope) {
			t.Errorf("ValidateIDScope(%q) = %v, want ErrInvalidIDScope", s, err)
		}
	}
}

// FuzzParseUsername checks that parsing never panics, that every error is
// one of the documented kinds, and that an accepted username satisfies the
// rules and round-trips through String.
func FuzzParseUsername(f *testing.F) {
	f.Add("0ne00000A0A/registrations/dev1/api-version=2019-03-31&ClientVersion=iothubclient%2f1.13.0")
	f.Add("s/registrations/Dev:01/api-version=2021-11-01-preview&ClientVersion=a+b&model-id=dtmi%3Ax%3By")
	f.Add("s/registrations/d/ClientVersion=c&api-version=2025-07-01-preview")
	f.Fuzz(func(t *testing.T, s string) {
		u, err := ParseUsername(s)
		if err != nil {
			if !errors.Is(err, ErrUsernameMalformed) && !errors.Is(err, ErrInvalidIDScope) &&
				!errors.Is(err, ErrInvalidRegistrationID) && !errors.Is(err, ErrInvalidAPIVersion) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		if len(s) > MaxUsernameLen {
			t.Fatalf("accepted %d bytes", len(s))
		}
		if ValidateIDScope(u.IDScope) != nil || ValidateRegistrationID(u.RegistrationID) != nil ||
			ValidateAPIVersion(u.APIVersion) != nil {
			t.Fatalf("accepted username breaks the rules: %#v", u)
		}
		if !strings.HasPrefix(s, u.IDScope+"/registrations/"+u.RegistrationID+"/") {
			t.Fatalf("scope or id not taken from the first segments: %#v", u)
		}
		again, err := ParseUsername(u.String())
		if err != nil {
			t.Fatalf("String() %q does not parse: %v", u.String(), err)
		}
		if !reflect.DeepEqual(again, u) {
			t.Fatalf("round trip changed the username:\n%#v\n%#v", u, again)
		}
	})
}

// FuzzValidateRegistrationID checks ValidateRegistrationID against an
// independent regular expression of the rules, and NormalizeRegistrationID
// against strings.ToLower.
func FuzzValidateRegistrationID(f *testing.F) {
	for _, s := range []string{"a", "my-device", "Dev:01", "-a", "a-", "a b", strings.Repeat("x", 128), strings.Repeat("x", 129)} {
		f.Add(s)
	}
	rule := regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9:._-]{0,126}[A-Za-z0-9])?$`)
	f.Fuzz(func(t *testing.T, id string) {
		err := ValidateRegistrationID(id)
		if want := rule.MatchString(id); (err == nil) != want {
			t.Fatalf("ValidateRegistrationID(%q) = %v, rule says valid=%v", id, err, want)
		}
		if err != nil && !errors.Is(err, ErrInvalidRegistrationID) {
			t.Fatalf("untyped error %v", err)
		}
		norm, nerr := NormalizeRegistrationID(id)
		if (nerr == nil) != (err == nil) {
			t.Fatalf("Normalize and Validate disagree on %q: %v / %v", id, nerr, err)
		}
		if nerr == nil {
			if norm != strings.ToLower(id) || ValidateRegistrationID(norm) != nil {
				t.Fatalf("NormalizeRegistrationID(%q) = %q", id, norm)
			}
		}
	})
}
